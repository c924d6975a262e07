"""Math primitives of the chart mixture, shared by the models (patchreg.charts) and the reference
of the fused chart op (patchreg.reference.charts): SiLU derivative, Gram log-determinant and the
compact radial latent prior's energy and normaliser. Depends on torch (and scipy) only.

Compact latent prior (after Alberti et al., JMLR 2024); energy U(r) of the latent radius r = |z|:
  U = 0                               for r <= 0.8   (flat)
  U = log(20) ((r - 0.8) / 0.2)^2     for 0.8 < r <= 1 (density falls to 0.05 of the flat value at r = 1)
  U = log(20) + a (r - 1)             for r > 1      (steep exponential decay, a = 10 log 20 keeps U C^1)
so each chart lives on about the unit ball of R^d. p_Z(z) = exp(-U(|z|)) / Z_d, with Z_d by 1-D
quadrature in the radius (`log_normalizer`). The prior object is patchreg.charts.CompactLatentPrior.
"""

from __future__ import annotations

import math

import torch

FLAT_RADIUS = 0.8
BORDER_LOG_DENSITY = math.log(0.05)
_BORDER_ENERGY = -BORDER_LOG_DENSITY
_OUTER_SLOPE = 2 * _BORDER_ENERGY / (1 - FLAT_RADIUS)


def _silu_grad(h: torch.Tensor) -> torch.Tensor:
    """d silu(h) / dh elementwise."""
    s = torch.sigmoid(h)
    return s * (1 + h * (1 - s))


def gram_logdet(jac: torch.Tensor) -> torch.Tensor:
    """log det(J^T J) for J (..., n, d) by Cholesky (J has full column rank on a chart)."""
    gram = jac.transpose(-1, -2) @ jac
    chol = torch.linalg.cholesky(gram)
    return 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)


def radial_energy(r: torch.Tensor) -> torch.Tensor:
    """U(r) elementwise (r >= 0)."""
    ramp = _BORDER_ENERGY * ((r - FLAT_RADIUS).clamp(0, 1 - FLAT_RADIUS) / (1 - FLAT_RADIUS)) ** 2
    return ramp + _OUTER_SLOPE * (r - 1).clamp_min(0)


def _radial_energy_np(r):
    return radial_energy(torch.as_tensor(r, dtype=torch.float64)).numpy()


def log_normalizer(dim: int) -> float:
    """log Z_d = log of the integral of exp(-U(|z|)) over R^d."""
    from scipy import integrate, special  # imported here: `import patchreg` does not need them

    sphere_area = 2 * math.pi ** (dim / 2) / special.gamma(dim / 2)
    f = lambda r: math.exp(-float(_radial_energy_np(r))) * r ** (dim - 1)
    pieces = [(0, FLAT_RADIUS), (FLAT_RADIUS, 1.0), (1.0, 1.0 + 40 / _OUTER_SLOPE)]
    total = sum(integrate.quad(f, a, b, epsabs=0, epsrel=1e-11)[0] for a, b in pieces)
    return math.log(sphere_area * total)
