"""Invertible coupling networks on R^n (GLOW-style), with exact log-determinants.

Building blocks shared by the PatchNR flow (patchreg.priors.flow) and any other model that
needs an invertible map of vectors (e.g. injective chart decoders):

- `soft_clamp`: bounds the log-scale of an affine coupling, s -> c * (2/pi) * atan(s / c).
- `mlp`: the 3-layer ReLU subnet of the PatchNR code (in -> hidden -> hidden -> out).
- `AffineCoupling`: GLOW coupling (both halves are transformed, as FrEIA's GLOWCouplingBlock).
- `Permutation`: a fixed seeded permutation (log-det 0).
- `InvertibleLinearLU`: GLOW's invertible 1x1 convolution for vectors, LU-parametrised.
- `CouplingFlow`: blocks of (coupling, mixing); `forward(x) -> (z, logdet)` and
  `inverse(z) -> (x, logdet)`, logdet = log|det dz/dx| (resp. dx/dz) per row.

Every module maps (N, n) to (N, n) and returns the per-row log-determinant (N,).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_int

__all__ = [
    "AffineCoupling",
    "CouplingFlow",
    "InvertibleLinearLU",
    "Permutation",
    "mlp",
    "soft_clamp",
]

MIXINGS = ("permutation", "lu")


def soft_clamp(s: torch.Tensor, clamp: float) -> torch.Tensor:
    """Smoothly bound s to (-clamp, clamp): clamp * 2/pi * atan(s / clamp); slope 2/pi at 0.

    The FrEIA "ATAN" activation used by the PatchNR code bounds the log-scale the same way
    (its current version writes clamp * 0.636 * atan(s), i.e. without the inner 1/clamp).
    """
    return clamp * (2.0 / math.pi) * torch.atan(s / clamp)


def mlp(n_in: int, n_out: int, hidden: int, zero_last: bool = True) -> nn.Sequential:
    """Linear-ReLU-Linear-ReLU-Linear. zero_last starts the coupling at the identity map."""
    net = nn.Sequential(
        nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_out)
    )
    if zero_last:
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
    return net


def _check_rows(x: torch.Tensor, n: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != n:
        raise ValueError(f"x must have shape (N, {n}), got {tuple(x.shape)}")


class AffineCoupling(nn.Module):
    """GLOW affine coupling: x = (x1, x2) with len(x1) = n // 2;

    y1 = x1 * exp(s2(x2)) + t2(x2),   y2 = x2 * exp(s1(y1)) + t1(y1),
    log-scales soft-clamped to (-clamp, clamp); log|det| = sum s2 + sum s1.
    """

    def __init__(self, n: int, hidden: int = 512, clamp: float = 1.6):
        super().__init__()
        check_int("n", n, 2)
        check_int("hidden", hidden, 1)
        if not clamp > 0:
            raise ValueError(f"clamp must be > 0, got {clamp}")
        self.n, self.clamp = n, float(clamp)
        self.n1, self.n2 = n // 2, n - n // 2
        self.net1 = mlp(self.n1, 2 * self.n2, hidden)  # conditions the update of x2 on y1
        self.net2 = mlp(self.n2, 2 * self.n1, hidden)  # conditions the update of x1 on x2

    def _scale_shift(self, net: nn.Module, cond: torch.Tensor, k: int):
        out = net(cond)
        return soft_clamp(out[:, :k], self.clamp), out[:, k:]

    def forward(self, x: torch.Tensor):
        x1, x2 = x[:, : self.n1], x[:, self.n1 :]
        s2, t2 = self._scale_shift(self.net2, x2, self.n1)
        y1 = x1 * torch.exp(s2) + t2
        s1, t1 = self._scale_shift(self.net1, y1, self.n2)
        y2 = x2 * torch.exp(s1) + t1
        return torch.cat([y1, y2], dim=1), s2.sum(1) + s1.sum(1)

    def inverse(self, y: torch.Tensor):
        y1, y2 = y[:, : self.n1], y[:, self.n1 :]
        s1, t1 = self._scale_shift(self.net1, y1, self.n2)
        x2 = (y2 - t1) * torch.exp(-s1)
        s2, t2 = self._scale_shift(self.net2, x2, self.n1)
        x1 = (y1 - t2) * torch.exp(-s2)
        return torch.cat([x1, x2], dim=1), -(s1.sum(1) + s2.sum(1))


class Permutation(nn.Module):
    """A fixed random permutation of the n coordinates, drawn from `seed` (a buffer, so saved)."""

    def __init__(self, n: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(n, generator=g)
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward(self, x: torch.Tensor):
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor):
        return y[:, self.inv_perm], y.new_zeros(y.shape[0])


class InvertibleLinearLU(nn.Module):
    """y = x W^T with W = P L (U + diag(sign * exp(log_abs_s))) (GLOW's LU-decomposed 1x1 conv).

    P is a fixed permutation, L unit lower-triangular, U strictly upper-triangular; initialised
    from a random rotation (seeded), so it starts orthogonal. log|det W| = sum(log_abs_s).
    """

    def __init__(self, n: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        P, L, U = torch.linalg.lu(q)
        s = torch.diagonal(U)
        self.register_buffer("P", P.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(n, n), -1))
        self.lower = nn.Parameter(L.float())
        self.upper = nn.Parameter(torch.triu(U, 1).float())
        self.log_abs_s = nn.Parameter(torch.log(torch.abs(s)).float())

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """L (unit lower-triangular) and U (upper-triangular) from the free parameters."""
        eye = torch.eye(self.P.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        L = self.lower * self.lower_mask + eye
        U = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_abs_s))
        return L, U

    def weight(self) -> torch.Tensor:
        L, U = self._factors()
        return self.P @ L @ U

    def forward(self, x: torch.Tensor):
        logdet = self.log_abs_s.sum().expand(x.shape[0])
        return x @ self.weight().T, logdet

    def inverse(self, y: torch.Tensor):
        # Triangular solves instead of a general inverse: W^-1 = U^-1 L^-1 P^T.
        L, U = self._factors()
        rhs = self.P.T @ y.T
        v = torch.linalg.solve_triangular(L, rhs, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(U, v, upper=True)
        return x.T, (-self.log_abs_s.sum()).expand(y.shape[0])


class CouplingFlow(nn.Module):
    """n_blocks x (AffineCoupling, mixing) on R^n, as the PatchNR network (coupling then mixing).

    mixing: "permutation" (fixed random, seeds 1..n_blocks as the PatchNR code) or "lu"
    (learned invertible linear map, seeded likewise). forward: data -> latent.
    """

    def __init__(
        self, n: int, n_blocks: int = 5, hidden: int = 512, clamp: float = 1.6, mixing: str = "permutation"
    ):
        super().__init__()
        check_int("n", n, 2)
        check_int("n_blocks", n_blocks, 1)
        if mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {MIXINGS}, got {mixing!r}")
        self.n = n
        layers: list[nn.Module] = []
        for k in range(n_blocks):
            layers.append(AffineCoupling(n, hidden, clamp))
            layers.append(Permutation(n, seed=k + 1) if mixing == "permutation" else InvertibleLinearLU(n, seed=k + 1))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor):
        """z = T(x) and log|det dT/dx| per row."""
        _check_rows(x, self.n)
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor):
        """x = T^-1(z) and log|det dT^-1/dz| per row."""
        _check_rows(z, self.n)
        logdet = z.new_zeros(z.shape[0])
        for layer in reversed(self.layers):
            z, ld = layer.inverse(z)
            logdet = logdet + ld
        return z, logdet
