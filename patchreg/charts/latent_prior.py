"""The compact radial latent prior of the chart mixture (after Alberti et al., JMLR 2024).

Energy U(r) of the latent radius r = |z|:
  U = 0                               for r <= 0.8   (flat)
  U = log(20) ((r - 0.8) / 0.2)^2     for 0.8 < r <= 1 (density falls to 0.05 of the flat value at r = 1)
  U = log(20) + a (r - 1)             for r > 1      (steep exponential decay, a = 10 log 20 keeps U C^1)
so each chart lives on about the unit ball of R^d. p_Z(z) = exp(-U(|z|)) / Z_d, with Z_d
computed once by 1-D quadrature in the radius. `overlap_scale` s evaluates U(s |z|): the
overlap phase uses s = 1.5 so that points near a chart's border are handed to its neighbours
(see mixture training).

U (`radial_energy`), log Z_d (`log_normalizer`) and their constants are defined in
patchreg.reference.chart_math (the reference of the fused chart op uses them too) and
re-exported here.
"""

from __future__ import annotations

import numpy as np
import torch

from ..reference.chart_math import (  # noqa: F401  (re-exported)
    _BORDER_ENERGY,
    _OUTER_SLOPE,
    BORDER_LOG_DENSITY,
    FLAT_RADIUS,
    _radial_energy_np,
    log_normalizer,
    radial_energy,
)


class CompactLatentPrior:
    """p_Z on R^dim: log_prob, energy and exact sampling (inverse CDF of the radius, uniform direction)."""

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"latent dim must be >= 1, got {dim}")
        self.dim = dim
        self.log_z = log_normalizer(dim)
        # radius CDF tabulated on a fine grid for inverse-CDF sampling
        r = np.linspace(0.0, 1.0 + 30 / _OUTER_SLOPE, 20001)
        dens = np.exp(-_radial_energy_np(r)) * r ** (dim - 1)
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(r))])
        self._radius_grid, self._cdf = r, cdf / cdf[-1]

    def energy(self, z: torch.Tensor, overlap_scale: float = 1.0) -> torch.Tensor:
        return radial_energy(overlap_scale * _safe_norm(z))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -self.energy(z) - self.log_z

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
        u = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
        radius = torch.as_tensor(np.interp(u, self._cdf, self._radius_grid))
        direction = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (radius[:, None] * direction).to(dtype)


def _safe_norm(z: torch.Tensor) -> torch.Tensor:
    # differentiable at 0 (the flat region makes the value there irrelevant)
    return torch.sqrt((z * z).sum(-1) + 1e-12)
