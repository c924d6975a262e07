"""Whitened operators: the weighted least squares of a noise model that is not Gaussian with one std.

Transmission CT counts photons: a detector with line integral a counts N ~ Poisson(I0 exp(-mu a)) and
observes y = -log(N / I0) / mu. To second order around y the Poisson log-likelihood is
-1/2 sum_j w_j (a_j - y_j)^2 with w_j = N_j mu^2 (the inverse variance of y_j), the penalised weighted
least squares (PWLS) data term of low-dose CT. `Whitened(A, w)` is the operator x -> sqrt(w) * A x, so that
a solver written for 1/2 ||A' x - y'||^2 (EPLL's and the chart prior's splitting, conjugate gradients)
minimises the weighted term when given A' = Whitened(A, w) and y' = sqrt(w) * y (`whiten`).
"""

from __future__ import annotations

import torch

from .._checks import check_tensor
from ._base import LinearPhysics

__all__ = ["Whitened", "poisson_weights"]


def poisson_weights(noise, y: torch.Tensor) -> torch.Tensor:
    """w_j = N_j * attenuation^2 for the log-transformed counts y of a PoissonNoise: the inverse variance of y_j."""
    for name in ("counts", "attenuation", "ZERO_COUNT"):
        if not hasattr(noise, name):
            raise TypeError(f"noise must be a PoissonNoise (counts, attenuation), got {type(noise).__name__}")
    check_tensor("y", y)
    return noise.counts(y).clamp_min(noise.ZERO_COUNT) * noise.attenuation**2


class Whitened(LinearPhysics):
    """x -> sqrt(weights) * physics.A(x): a data term 1/2 ||Whitened(A, w) x - whiten(y)||^2 is
    1/2 sum w (A x - y)^2. weights: finite, >= 0, the shape of the measurements (batch included)."""

    def __init__(self, physics, weights: torch.Tensor):
        super().__init__(None)
        check_tensor("weights", weights)
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise ValueError("weights must be finite and >= 0")
        self.physics = physics
        self.sqrt_weights = weights.sqrt()

    def _scale(self, y: torch.Tensor) -> torch.Tensor:
        if tuple(y.shape) != tuple(self.sqrt_weights.shape):
            raise ValueError(f"the measurements have shape {tuple(y.shape)} but the weights "
                             f"{tuple(self.sqrt_weights.shape)}")
        return y * self.sqrt_weights.to(device=y.device, dtype=y.dtype)

    def whiten(self, y: torch.Tensor) -> torch.Tensor:
        """sqrt(w) * y: the measurements the whitened operator is compared with."""
        return self._scale(y)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return self._scale(self.physics.A(x))

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.physics.A_adjoint(self._scale(y))

    def measurement_shape(self, image_shape) -> tuple[int, ...]:
        return self.physics.measurement_shape(image_shape)

    def initial_guess(self, y: torch.Tensor) -> torch.Tensor:
        raise TypeError("Whitened has no initial guess of its own: use the unweighted operator's on the "
                        "unwhitened measurements")
