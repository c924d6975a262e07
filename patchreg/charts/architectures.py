"""Built-in encoder/decoder architectures: a residual MLP (points, patches) and a small
convolutional ResNet for 8x8 images. Any nn.Module pair mapping (B, n) -> (B, d) and
(B, d) -> (B, n) can be used instead.

Activations are SiLU: smooth, so decoder Jacobians and the FIF loss's second derivatives are
well defined. No batch normalisation: charts are evaluated point by point (Jacobians via
forward-mode AD), so the output for one point must not depend on the rest of the batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..reference.chart_math import _silu_grad


class ResidualMLP(nn.Module):
    """x -> W_out silu(h_L) + b_out with h_0 = W_in x + b_in, h_{l+1} = h_l + L2(silu(L1(silu(h_l)))).

    The layout is fixed (patchreg.reference.charts evaluates K such networks with stacked weights).
    """

    def __init__(self, dim_in: int, dim_out: int, width: int = 64, n_blocks: int = 2):
        super().__init__()
        self.dim_in, self.dim_out, self.width, self.n_blocks = dim_in, dim_out, width, n_blocks
        self.input = nn.Linear(dim_in, width)
        self.blocks = nn.ModuleList(nn.ModuleList([nn.Linear(width, width), nn.Linear(width, width)]) for _ in range(n_blocks))
        self.output = nn.Linear(width, dim_out)
        self._init_residuals()

    def _init_residuals(self) -> None:
        for first, second in self.blocks:  # residual branches start small: the net starts near affine
            nn.init.zeros_(second.bias)
            second.weight.data.mul_(0.1)

    def reset_parameters(self) -> None:
        """A fresh initialisation, as the constructor's."""
        for layer in (self.input, self.output, *(layer for block in self.blocks for layer in block)):
            layer.reset_parameters()
        self._init_residuals()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input(x)
        for first, second in self.blocks:
            h = h + second(F.silu(first(F.silu(h))))
        return self.output(F.silu(h))

    def jvp(self, x: torch.Tensor, tangents: torch.Tensor):
        """(f(x), f'(x) @ tangents) for tangents (B, dim_in, m), by hand-written forward mode.

        Same numbers as torch.func.jvp, without its per-call overhead (which dominates for the
        small networks of toy manifolds); differentiable by ordinary autograd.
        """
        h = self.input(x)
        t = self.input.weight @ tangents
        for first, second in self.blocks:
            a = F.silu(h)
            ta = _silu_grad(h).unsqueeze(-1) * t
            b = first(a)
            tb = first.weight @ ta
            h = h + second(F.silu(b))
            t = t + second.weight @ (_silu_grad(b).unsqueeze(-1) * tb)
        return self.output(F.silu(h)), self.output.weight @ (_silu_grad(h).unsqueeze(-1) * t)


# -- convolutional ResNet -------------------------------------------------------------------
# Forward mode by hand: `linearize(x)` returns the primal output and `push`, the tangent map
# t -> f'(x) t; m tangents per point go through each (transposed) convolution, without its bias,
# as one batch of B*m images, multiplied by silu' of the primal's pre-activations (kept from the
# primal pass). Feature maps are kept channels-last: oneDNN's convolutions on these small maps
# are faster in that layout (measured 1.5x for 16 channels on 8x8); the values are the same.

_CHANNELS_LAST = torch.channels_last


def _silu_factor(h: torch.Tensor) -> torch.Tensor:
    return _silu_grad(h).unsqueeze(1)  # (B, 1, C, H, W): broadcasts over the m tangents


def _conv_tangent(layer: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """The linear part of a conv layer (no bias) applied to tangents t (B, m, C, H, W): one pass of batch B*m."""
    b, m = t.shape[:2]
    flat = t.reshape(b * m, *t.shape[2:]).contiguous(memory_format=_CHANNELS_LAST)
    if isinstance(layer, nn.ConvTranspose2d):
        out = F.conv_transpose2d(flat, layer.weight, None, layer.stride, layer.padding, layer.output_padding,
                                 layer.groups, layer.dilation)
    else:
        out = F.conv2d(flat, layer.weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    return out.reshape(b, m, *out.shape[1:])


class _ConvBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self._init_residual()

    def _init_residual(self) -> None:
        nn.init.zeros_(self.conv2.bias)
        self.conv2.weight.data.mul_(0.1)

    def reset_parameters(self) -> None:
        """A fresh initialisation, as the constructor's."""
        self.conv1.reset_parameters()
        self.conv2.reset_parameters()
        self._init_residual()

    def forward(self, x):
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))

    def linearize(self, x):
        """(block(x), factors): the silu' factors that `push` needs."""
        b = self.conv1(F.silu(x))
        return x + self.conv2(F.silu(b)), (_silu_factor(x), _silu_factor(b))

    def push(self, factors, t):
        """block'(x) t for tangents t (B, m, C, H, W)."""
        before, inner = factors
        return t + _conv_tangent(self.conv2, inner * _conv_tangent(self.conv1, before * t))


def _linearize_blocks(blocks, h):
    factors = []
    for block in blocks:
        h, f = block.linearize(h)
        factors.append(f)
    return h, factors


def _push_blocks(blocks, factors, t):
    for block, f in zip(blocks, factors):
        t = block.push(f, t)
    return t


class ConvResNetEncoder(nn.Module):
    """(B, side*side) image vector -> (B, d): conv stem, residual blocks, stride-2 down, blocks, linear."""

    def __init__(self, latent_dim: int, side: int = 8, channels: int = 32, n_blocks: int = 1):
        super().__init__()
        if side % 2:
            raise ValueError(f"side must be even, got {side}")
        self.side = side
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.high = nn.Sequential(*[_ConvBlock(channels) for _ in range(n_blocks)])
        self.down = nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1)
        self.low = nn.Sequential(*[_ConvBlock(2 * channels) for _ in range(n_blocks)])
        self.head = nn.Linear(2 * channels * (side // 2) ** 2, latent_dim)

    def _image(self, x):
        return x.reshape(-1, 1, self.side, self.side).contiguous(memory_format=_CHANNELS_LAST)

    def forward(self, x):
        h = self.stem(self._image(x))
        h = self.low(self.down(F.silu(self.high(h))))
        return self.head(F.silu(h).flatten(1))

    def linearize(self, x: torch.Tensor):
        """(f(x), push) with push(tangents (B, side*side, m)) = f'(x) @ tangents (B, d, m), by hand-written forward mode."""
        h, high = _linearize_blocks(self.high, self.stem(self._image(x)))
        mid = _silu_factor(h)
        h, low = _linearize_blocks(self.low, self.down(F.silu(h)))
        out = _silu_factor(h)
        z = self.head(F.silu(h).flatten(1))

        def push(tangents):
            b, m = tangents.shape[0], tangents.shape[-1]
            t = _conv_tangent(self.stem, tangents.transpose(1, 2).reshape(b, m, 1, self.side, self.side))
            t = _conv_tangent(self.down, mid * _push_blocks(self.high, high, t))
            t = (out * _push_blocks(self.low, low, t)).flatten(2)  # (B, m, features)
            return (t @ self.head.weight.T).transpose(1, 2)

        return z, push

    def jvp(self, x: torch.Tensor, tangents: torch.Tensor):
        """(f(x), f'(x) @ tangents) for tangents (B, side*side, m): same numbers as torch.func.jvp,
        one batched pass instead of m, differentiable by ordinary autograd."""
        z, push = self.linearize(x)
        return z, push(tangents)


class ConvResNetDecoder(nn.Module):
    """(B, d) -> (B, side*side): linear to a 2C x side/2 x side/2 map, blocks, transposed-conv up, blocks, conv."""

    def __init__(self, latent_dim: int, side: int = 8, channels: int = 32, n_blocks: int = 1):
        super().__init__()
        if side % 2:
            raise ValueError(f"side must be even, got {side}")
        self.side, self.channels = side, channels
        self.head = nn.Linear(latent_dim, 2 * channels * (side // 2) ** 2)
        self.low = nn.Sequential(*[_ConvBlock(2 * channels) for _ in range(n_blocks)])
        self.up = nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1)
        self.high = nn.Sequential(*[_ConvBlock(channels) for _ in range(n_blocks)])
        self.out = nn.Conv2d(channels, 1, 3, padding=1)

    def _low_map(self, h):
        half = self.side // 2
        return h.reshape(*h.shape[:-1], 2 * self.channels, half, half)

    def forward(self, z):
        h = self._low_map(self.head(z)).contiguous(memory_format=_CHANNELS_LAST)
        h = self.high(self.up(F.silu(self.low(h))))
        return self.out(F.silu(h)).flatten(1)

    def linearize(self, z: torch.Tensor):
        """(g(z), push) with push(tangents (B, d, m)) = g'(z) @ tangents (B, side*side, m), by hand-written forward mode."""
        h, low = _linearize_blocks(self.low, self._low_map(self.head(z)).contiguous(memory_format=_CHANNELS_LAST))
        mid = _silu_factor(h)
        h, high = _linearize_blocks(self.high, self.up(F.silu(h)))
        out = _silu_factor(h)
        x = self.out(F.silu(h)).flatten(1)

        def push(tangents):
            t = self._low_map(tangents.transpose(1, 2) @ self.head.weight.T)  # (B, m, 2C, side/2, side/2)
            t = _conv_tangent(self.up, mid * _push_blocks(self.low, low, t))
            t = _conv_tangent(self.out, out * _push_blocks(self.high, high, t))
            return t.flatten(2).transpose(1, 2)

        return x, push

    def jvp(self, z: torch.Tensor, tangents: torch.Tensor):
        """(g(z), g'(z) @ tangents) for tangents (B, d, m): same numbers as torch.func.jvp, one
        batched pass instead of m, differentiable by ordinary autograd."""
        x, push = self.linearize(z)
        return x, push(tangents)


ARCHITECTURES = ("mlp", "conv")


def build_encoder_decoder(architecture: str, ambient_dim: int, latent_dim: int, width: int, n_blocks: int):
    """The built-in (encoder, decoder) pair called `architecture` ("mlp" or "conv")."""
    if architecture == "mlp":
        return ResidualMLP(ambient_dim, latent_dim, width, n_blocks), ResidualMLP(latent_dim, ambient_dim, width, n_blocks)
    if architecture == "conv":
        side = int(round(ambient_dim**0.5))
        if side * side != ambient_dim:
            raise ValueError(f"the conv architecture needs square images: ambient_dim={ambient_dim} is not a square")
        return ConvResNetEncoder(latent_dim, side, width, n_blocks), ConvResNetDecoder(latent_dim, side, width, n_blocks)
    raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
