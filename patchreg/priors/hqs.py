"""Half-quadratic splitting with a patch prior (the solver of EPLL, shared by the chart prior).

Energy lam/2 ||A x - y||^2 - sum_i log p(P_i x), split with auxiliary patches z_i and a growing
penalty beta/2 sum_i ||P_i x - z_i||^2; for each beta (`inner_iters` times):
- z-step, per patch: a denoiser of the patch at noise variance 1/beta (`denoise_patches(patches,
  beta)`: EPLL's Wiener filter of the best component, or the chart prior's projection onto its
  learned manifold);
- x-step: (lam A^T A + beta D) x = lam A^T y + beta D zbar, zbar the average of the patch
  estimates covering each pixel and D a diagonal pixel weight: beta * d everywhere
  (prior_weight="uniform", as DeepInverse) or beta * the number of patches covering the pixel
  ("coverage", Zoran & Weiss's code). Denoising (A = I) and inpainting (A = mask) are solved
  pixel-wise, any other operator by conjugate gradients.
Every image of the batch is processed at once.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .._checks import check_int, check_tensor
from ..ops.patches import aggregate_patches, extract_patches
from ..physics.solvers import conjugate_gradient
from ..reference.patches import coverage_count

__all__ = ["check_hqs_settings", "default_betas", "default_start", "half_quadratic_splitting",
           "weighted_problem"]

BETA_SCHEDULE = (1.0, 4.0, 8.0, 16.0, 32.0)
PRIOR_WEIGHTS = ("uniform", "coverage")


def default_betas(sigma: float) -> list[float]:
    """Zoran & Weiss's schedule: (1 / sigma^2) * [1, 4, 8, 16, 32]."""
    return [b / sigma**2 for b in BETA_SCHEDULE]


def check_hqs_settings(sigma, betas, lam, dim: int, inner_iters: int, stride: int, prior_weight: str):
    """Validate the splitting's settings; returns (betas, lam) with the defaults filled in
    (betas = default_betas(sigma), lam = dim / sigma^2: the prior term counts every pixel ~dim times)."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a number > 0 (noise std on the [0, 1] scale), got {sigma!r}")
    betas = default_betas(sigma) if betas is None else [float(b) for b in betas]
    if not betas or any(not b > 0 for b in betas):
        raise ValueError(f"betas must be a non-empty list of positive numbers, got {betas}")
    lam = dim / sigma**2 if lam is None else lam
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    check_int("inner_iters", inner_iters, 1)
    check_int("stride", stride, 1)
    if prior_weight not in PRIOR_WEIGHTS:
        raise ValueError(f"prior_weight must be one of {PRIOR_WEIGHTS}, got {prior_weight!r}")
    return betas, float(lam)


def weighted_problem(physics, y):
    """(operator, measurements) for the splitting: with Poisson counts (physics.noise_model a PoissonNoise) the
    whitened pair of the weighted least squares data term (patchreg.physics.whitened), so that the data weight
    lam carries no 1/sigma^2; otherwise (physics, y) unchanged."""
    from ..physics import PoissonNoise, Whitened, poisson_weights

    noise = getattr(physics, "noise_model", None)
    if not isinstance(noise, PoissonNoise):
        return physics, y
    whitened = Whitened(physics, poisson_weights(noise, y))
    return whitened, whitened.whiten(y)


def is_denoising(physics) -> bool:
    if physics is None:
        return True
    from ..physics.denoising import Denoising

    return isinstance(physics, Denoising) or type(physics).__name__ == "Denoising"


def inpainting_mask(physics):
    """The pixel mask of an inpainting operator (ours or one with the same shape), else None."""
    from ..physics.inpainting import Inpainting

    if isinstance(physics, Inpainting) or (
        type(physics).__name__ == "Inpainting" and isinstance(getattr(physics, "mask", None), torch.Tensor)
    ):
        return physics.mask
    return None


def default_start(y, physics, denoising: bool, mask):
    """y for denoising, y with its holes set to the mean observed value for inpainting, else A^T y."""
    if denoising:
        return y
    if mask is None:
        return physics.A_adjoint(y)
    mask = mask.to(device=y.device).expand_as(y)
    observed_mean = (y * mask).sum(dim=(2, 3), keepdim=True) / mask.sum(dim=(2, 3), keepdim=True).clamp(min=1)
    return torch.where(mask, y, observed_mean)


def check_image_for_patches(x: torch.Tensor, patch_size: int, channels: int, what: str) -> None:
    if x.shape[1] != channels:
        raise ValueError(f"the image has {x.shape[1]} channels (dim 1) but the {what} models {channels}")
    H, W = x.shape[-2:]
    if patch_size > H or patch_size > W:
        raise ValueError(f"the {what}'s patch_size={patch_size} is larger than the image ({H}x{W})")


def half_quadratic_splitting(y, physics, denoise_patches, patch_size: int, channels: int, betas, lam: float,
                             x0=None, inner_iters: int = 1, stride: int = 1, prior_weight: str = "uniform",
                             cg_iters: int = 50, cg_tol: float = 1e-6, progress: bool = False, desc: str = "HQS",
                             what: str = "prior"):
    """x (B, C, H, W) from measurements y; see the module docstring. denoise_patches((N, d), beta) -> (N, d)."""
    denoising = is_denoising(physics)
    mask = None if denoising else inpainting_mask(physics)
    if x0 is None:
        x0 = default_start(y, physics, denoising, mask)
    check_tensor("x0", x0, ndim=4)
    check_image_for_patches(x0, patch_size, channels, what)
    if (denoising or mask is not None) and y.shape != x0.shape:
        raise ValueError(f"y has shape {tuple(y.shape)} but the image has shape {tuple(x0.shape)}")

    x = x0.to(y.dtype).clone()
    H, W = x.shape[-2:]
    count = coverage_count(H, W, patch_size, stride, x)  # patches covering each pixel
    if prior_weight == "uniform":
        count = torch.where(count > 0, count.max(), count)  # the interior coverage; uncovered stay 0
    data_term = lam * (y if denoising else physics.A_adjoint(y))
    mask_f = None if mask is None else mask.to(device=x.device, dtype=x.dtype)
    with torch.no_grad():
        for beta in tqdm(betas, desc=desc, disable=not progress):
            for _ in range(inner_iters):
                patches = extract_patches(x, patch_size, stride)
                B, L, d = patches.shape
                z = denoise_patches(patches.reshape(B * L, d), beta).reshape(B, L, d)
                # D zbar, zbar the average of the overlapping patch estimates at each pixel
                prior_term = beta * count * aggregate_patches(z, (H, W), patch_size, stride, normalize=True)
                if denoising:
                    x = (data_term + prior_term) / (lam + beta * count)
                elif mask_f is not None:
                    x = (data_term + prior_term) / (lam * mask_f + beta * count).clamp(min=1e-30)
                else:
                    def normal_op(v, beta=beta):
                        return lam * physics.A_adjoint(physics.A(v)) + beta * count * v

                    x = conjugate_gradient(normal_op, data_term + prior_term, x, cg_iters, cg_tol)
    return x
