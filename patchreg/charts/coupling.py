"""A small invertible affine coupling network (RealNVP/GLOW style) for the VAE charts' injective decoders.

Blocks alternate which half is transformed, so that with zero-initialised output layers the
whole network starts as the identity; the chart then starts with D(z) = (z, 0) in its frame,
the tangent plane of its data cluster. Scales use GLOW's soft clamp
s = (2 c / pi) atan(s / c). The decoder needs only forward and inverse (the chart density uses the
decoder Jacobian directly); the latent flow of a VAE chart (Alberti et al.'s code: 3 blocks in front
of the decoder when d > 1) also needs its log-determinant (forward_and_logdet).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _Subnet(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2 * dim_out)
        )
        self._zero_last()

    def _zero_last(self) -> None:  # the coupling starts as the identity
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def reset_parameters(self) -> None:
        """A fresh initialisation, as the constructor's."""
        for layer in self.net:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        self._zero_last()

    def forward(self, x):
        return self.net(x).chunk(2, dim=-1)

    def jvp(self, x, tangents):
        """((s, t), (ds, dt)) for tangents (B, dim_in, m): hand-written forward mode through the MLP."""
        h, th = x, tangents
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                h, th = layer(h), layer.weight @ th
            else:
                sig = torch.sigmoid(h)
                th = (sig * (1 + h * (1 - sig))).unsqueeze(-1) * th
                h = layer(h)
        half = h.shape[-1] // 2
        return (h[..., :half], h[..., half:]), (th[..., :half, :], th[..., half:, :])


class CouplingFlow(nn.Module):
    """Invertible map R^dim -> R^dim (dim >= 2) from `n_blocks` affine coupling blocks."""

    def __init__(self, dim: int, hidden: int = 64, n_blocks: int = 5, clamp: float = 1.6):
        super().__init__()
        if dim < 2:
            raise ValueError(f"a coupling flow needs dim >= 2, got {dim}")
        self.dim, self.clamp = dim, clamp
        self.split = dim // 2
        sizes = [(self.split, dim - self.split), (dim - self.split, self.split)]
        self.subnets = nn.ModuleList(_Subnet(*sizes[i % 2], hidden) for i in range(n_blocks))

    def _scale(self, s):
        return (2 * self.clamp / math.pi) * torch.atan(s / self.clamp)

    def _halves(self, x, i):
        a, b = x[..., : self.split], x[..., self.split :]
        return (a, b) if i % 2 == 0 else (b, a)

    def _join(self, cond, moved, i):
        return torch.cat([cond, moved] if i % 2 == 0 else [moved, cond], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_and_logdet(x)[0]

    def forward_and_logdet(self, x: torch.Tensor):
        """(T(x), log|det T'(x)| (B,)): each block scales its moved half by exp(s), so the log-determinant is
        the sum of the clamped s."""
        logdet = x.new_zeros(x.shape[:-1])
        for i, net in enumerate(self.subnets):
            cond, moved = self._halves(x, i)
            s, t = net(cond)
            s = self._scale(s)
            x = self._join(cond, moved * torch.exp(s) + t, i)
            logdet = logdet + s.sum(-1)
        return x, logdet

    def jvp(self, x: torch.Tensor, tangents: torch.Tensor):
        """(T(x), T'(x) @ tangents) for tangents (B, dim, m), by hand-written forward mode."""
        for i, net in enumerate(self.subnets):
            cond, moved = self._halves(x, i)
            t_cond, t_moved = self._halves(tangents.transpose(-1, -2), i)
            t_cond, t_moved = t_cond.transpose(-1, -2), t_moved.transpose(-1, -2)
            (s, t), (ds, dt) = net.jvp(cond, t_cond)
            scale = torch.exp(self._scale(s))
            dscale = (scale * (2 / math.pi) / (1 + (s / self.clamp) ** 2)).unsqueeze(-1) * ds
            new_moved = moved * scale + t
            t_new = scale.unsqueeze(-1) * t_moved + moved.unsqueeze(-1) * dscale + dt
            x = self._join(cond, new_moved, i)
            tangents = torch.cat([t_cond, t_new] if i % 2 == 0 else [t_new, t_cond], dim=-2)
        return x, tangents

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for i in reversed(range(len(self.subnets))):
            cond, moved = self._halves(y, i)
            s, t = self.subnets[i](cond)
            y = self._join(cond, (moved - t) * torch.exp(-self._scale(s)), i)
        return y
