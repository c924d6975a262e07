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


class ResidualMLP(nn.Module):
    """x -> W_out silu(h_L) + b_out with h_0 = W_in x + b_in, h_{l+1} = h_l + L2(silu(L1(silu(h_l)))).

    The layout is fixed (patchreg.charts.stacked evaluates K such networks with stacked weights).
    """

    def __init__(self, dim_in: int, dim_out: int, width: int = 64, n_blocks: int = 2):
        super().__init__()
        self.dim_in, self.dim_out, self.width, self.n_blocks = dim_in, dim_out, width, n_blocks
        self.input = nn.Linear(dim_in, width)
        self.blocks = nn.ModuleList(nn.ModuleList([nn.Linear(width, width), nn.Linear(width, width)]) for _ in range(n_blocks))
        self.output = nn.Linear(width, dim_out)
        for first, second in self.blocks:  # residual branches start small: the net starts near affine
            nn.init.zeros_(second.bias)
            second.weight.data.mul_(0.1)

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


def _silu_grad(h: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(h)
    return s * (1 + h * (1 - s))


class _ConvBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.bias)
        self.conv2.weight.data.mul_(0.1)

    def forward(self, x):
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


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

    def forward(self, x):
        h = self.stem(x.reshape(-1, 1, self.side, self.side))
        h = self.low(self.down(F.silu(self.high(h))))
        return self.head(F.silu(h).flatten(1))


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

    def forward(self, z):
        h = self.head(z).reshape(-1, 2 * self.channels, self.side // 2, self.side // 2)
        h = self.high(self.up(F.silu(self.low(h))))
        return self.out(F.silu(h)).flatten(1)


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
