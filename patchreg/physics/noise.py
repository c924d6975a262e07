"""Noise models: sampling noisy measurements and the matching data fidelity `nll(Ax, y)`.

Each model is called as `model(y, generator)` to corrupt clean measurements y = A x, and
`model.nll(Ax, y)` returns the negative log-likelihood of the observation y given the
prediction Ax, one value per image (shape (B,)), up to terms constant in Ax. That is the
data term `patchreg.reconstruct` minimises, so lambda is on the scale of a MAP estimate:
objective = -log p(y | x) + lam * R(x).
"""

from __future__ import annotations

import math

import torch

from .._checks import check_tensor


def _check_real(name: str, value, minimum_exclusive: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= minimum_exclusive:
        raise ValueError(f"{name} must be a finite number > {minimum_exclusive}, got {value}")
    return float(value)


def _check_pair(Ax, y) -> None:
    check_tensor("Ax", Ax)
    check_tensor("y", y)
    if Ax.shape != y.shape:
        raise ValueError(f"Ax has shape {tuple(Ax.shape)} but y has shape {tuple(y.shape)}")
    if Ax.dim() < 1:
        raise ValueError("Ax and y need a leading batch dimension")


def _per_image_sum(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1)


def squared_error(Ax: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """0.5 ||Ax - y||^2 per image: the data term when no noise model is given."""
    _check_pair(Ax, y)
    return 0.5 * _per_image_sum((Ax - y) ** 2)


class GaussianNoise:
    """Additive white Gaussian noise y = Ax + sigma * n, sigma on the [0, 1] intensity scale.

    nll(Ax, y) = ||Ax - y||^2 / (2 sigma^2) per image (the exact negative log-likelihood up
    to a constant). A lambda tuned for the plain squared error ||Ax - y||^2 (PatchNR's code)
    corresponds to lam / (2 sigma^2) here.
    """

    def __init__(self, sigma: float):
        self.sigma = _check_real("sigma", sigma, 0.0)

    def __call__(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_tensor("y", y)
        noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        return y + self.sigma * noise

    def nll(self, Ax: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(Ax, y)
        return _per_image_sum((Ax - y) ** 2) / (2.0 * self.sigma**2)

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma})"


class PoissonNoise:
    """Photon-count (transmission CT) noise, as in LoDoPaB-CT and PatchNR's low-dose CT.

    A detector pixel with line integral a = (Ax) of the image counts
    N ~ Poisson(photons * exp(-attenuation * a)) photons; the observation is the
    log-transformed count y = -log(max(N, 0.1) / photons) / attenuation, on the scale of Ax
    (zero counts are replaced by 0.1 photons so that y stays finite, as LoDoPaB does).
    `attenuation` converts image values times pixel lengths to optical depth; its default
    suits images in [0, 1] with up to a few hundred pixels per side.

    nll(Ax, y) = sum photons * exp(-attenuation * Ax) + N * attenuation * Ax per image, the
    Poisson negative log-likelihood of the counts N = photons * exp(-attenuation * y) up to
    terms constant in Ax.
    """

    ZERO_COUNT = 0.1

    def __init__(self, photons: float, attenuation: float = 0.02):
        self.photons = _check_real("photons", photons, 0.0)
        self.attenuation = _check_real("attenuation", attenuation, 0.0)

    def counts(self, y: torch.Tensor) -> torch.Tensor:
        """The photon counts behind a log-transformed observation y."""
        return self.photons * torch.exp(-self.attenuation * y)

    def __call__(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_tensor("y", y)
        counts = torch.poisson(self.counts(y), generator=generator)
        counts = counts.clamp_min(self.ZERO_COUNT)
        return -torch.log(counts / self.photons) / self.attenuation

    def nll(self, Ax: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(Ax, y)
        optical_depth = self.attenuation * Ax
        expected = self.photons * torch.exp(-optical_depth)
        return _per_image_sum(expected + self.counts(y) * optical_depth)

    def __repr__(self) -> str:
        return f"PoissonNoise(photons={self.photons}, attenuation={self.attenuation})"
