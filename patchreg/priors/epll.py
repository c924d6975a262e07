"""EPLL restoration (Zoran & Weiss, ICCV 2011): half-quadratic splitting with a GMM patch prior.

Energy: lam/2 ||A x - y||^2 - sum_i log p(P_i x), P_i the extraction of patch i. Splitting with
auxiliary patches z_i and a growing penalty beta/2 sum_i ||P_i x - z_i||^2 alternates
- z-step, per patch: the component k maximising N(P_i x; mu_k, Sigma_k + I/beta), then the
  Wiener estimate z_i = mu_k + Sigma_k (Sigma_k + I/beta)^-1 (P_i x - mu_k) (mean included;
  with a mean-removed GMM the patch mean is taken out first and added back after);
- x-step: (lam A^T A + beta D) x = lam A^T y + beta D zbar, zbar the average of the patch
  estimates covering each pixel and D a diagonal pixel weight: D = d everywhere by default
  (prior_weight="uniform", as DeepInverse), or D = the number of patches covering the pixel
  (prior_weight="coverage", Zoran & Weiss's code, where D = sum_i P_i^T P_i). They agree away
  from the border; "coverage" trusts the noisy data near the border (a corner pixel is covered by
  one patch), which costs 0.66 dB on a 256x256 denoising test (bench/results/epll.md).
  For denoising (A = I) and inpainting (A = mask) D and A^T A are diagonal and the solution is
  pixel-wise; any other operator is solved by conjugate gradients.
Every image of the batch is processed at once; the only Python loop is over GMM components
(grouping the patches that picked the same component).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .._checks import check_int, check_tensor
from ..ops.gmm import gmm_best_component
from ..ops.patches import aggregate_patches, extract_patches
from ..physics.solvers import conjugate_gradient
from ..reference.patches import coverage_count
from .gmm import GMM

__all__ = ["epll_restore", "default_betas", "wiener_denoise_patches"]

BETA_SCHEDULE = (1.0, 4.0, 8.0, 16.0, 32.0)


def default_betas(sigma: float) -> list[float]:
    """Zoran & Weiss's schedule: (1 / sigma^2) * [1, 4, 8, 16, 32]."""
    return [b / sigma**2 for b in BETA_SCHEDULE]


def wiener_denoise_patches(patches: torch.Tensor, gmm: GMM, noise_var: float) -> torch.Tensor:
    """EPLL's z-step on patches (N, d): best component under Sigma_k + noise_var I, then its Wiener filter.

    With gmm.remove_mean each patch's mean is removed before and restored after. Returns (N, d).
    """
    dtype, device = patches.dtype, patches.device
    means = None
    if gmm.remove_mean:
        means = patches.mean(dim=1, keepdim=True)
        patches = patches - means
    prec_chol, log_const, mu = gmm.component_params(extra_variance=noise_var)  # float64
    params = tuple(t.to(dtype=dtype, device=device) for t in (prec_chol, log_const, mu))
    best = _best_components(patches.contiguous(), params)
    # Wiener filters, transposed: (Sigma + s I)^-1 Sigma = I - s (Sigma + s I)^-1 = I - s U U^T.
    eye = torch.eye(gmm.dim, dtype=prec_chol.dtype, device=prec_chol.device)
    filters = (eye - noise_var * prec_chol @ prec_chol.mT).to(dtype=dtype, device=device)  # (K, d, d)
    mu = gmm.means.to(dtype=dtype, device=device)
    out = torch.empty_like(patches)
    order = torch.argsort(best)
    counts = torch.bincount(best, minlength=gmm.n_components).tolist()
    start = 0
    for k, n in enumerate(counts):
        if n == 0:
            continue
        idx = order[start : start + n]
        start += n
        centered = patches.index_select(0, idx) - mu[k]
        out.index_copy_(0, idx, torch.addmm(mu[k].expand(n, -1), centered, filters[k]))
    return out if means is None else out + means


def _best_components(patches: torch.Tensor, params) -> torch.Tensor:
    """argmax_k of the component log-likelihoods, (N,) int64 (no (N, K) matrix on the CPU kernel)."""
    return gmm_best_component(patches, *params)[1]


def _is_denoising(physics) -> bool:
    if physics is None:
        return True
    from ..physics.denoising import Denoising

    return isinstance(physics, Denoising) or type(physics).__name__ == "Denoising"


def _inpainting_mask(physics):
    """The pixel mask of an inpainting operator (ours or one with the same shape), else None."""
    from ..physics.inpainting import Inpainting

    if isinstance(physics, Inpainting) or (
        type(physics).__name__ == "Inpainting" and isinstance(getattr(physics, "mask", None), torch.Tensor)
    ):
        return physics.mask
    return None


def epll_restore(
    y: torch.Tensor,
    physics,
    gmm: GMM,
    sigma: float,
    betas=None,
    lam: float | None = None,
    x0: torch.Tensor | None = None,
    inner_iters: int = 1,
    stride: int = 1,
    prior_weight: str = "uniform",
    cg_iters: int = 50,
    cg_tol: float = 1e-6,
    progress: bool = False,
) -> torch.Tensor:
    """Restore images from measurements y with EPLL; returns x (B, C, H, W) in y's dtype.

    physics: None or a Denoising operator (closed-form x-step), an Inpainting operator (closed
        form), or any object with A / A_adjoint (x-step by `cg_iters` conjugate-gradient steps).
    sigma: noise standard deviation on the [0, 1] scale (> 0).
    betas: splitting penalties, default (1/sigma^2) [1, 4, 8, 16, 32]; `inner_iters` z/x
        alternations per beta.
    lam: data weight, default d / sigma^2 (Zoran & Weiss's patchSize^2 / sigma^2; the prior
        term counts every pixel about d times).
        For inpainting the default schedule (from the small noise sigma) starts too high to
        fill holes: pass one that starts from a large effective noise level, e.g.
        [2**i / 0.3**2 for i in range(6)].
    x0: start image, default y for denoising, y with its holes set to the mean observed value
        for inpainting, and A^T y otherwise.
    stride: patch stride (1 = all overlapping patches, as the paper).
    prior_weight: "uniform" (every pixel's prior term weighted beta * d) or "coverage" (beta
        times the number of patches covering the pixel); see the module docstring.
    """
    check_tensor("y", y)
    if not isinstance(gmm, GMM):
        raise TypeError(f"gmm must be a patchreg.priors.GMM, got {type(gmm).__name__}")
    if not (isinstance(sigma, (int, float)) and sigma > 0):
        raise ValueError(f"sigma must be a number > 0 (noise std on the [0, 1] scale), got {sigma!r}")
    betas = default_betas(sigma) if betas is None else [float(b) for b in betas]
    if not betas or any(not b > 0 for b in betas):
        raise ValueError(f"betas must be a non-empty list of positive numbers, got {betas}")
    lam = gmm.dim / sigma**2 if lam is None else lam
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    check_int("inner_iters", inner_iters, 1)
    check_int("stride", stride, 1)
    if prior_weight not in ("uniform", "coverage"):
        raise ValueError(f"prior_weight must be 'uniform' or 'coverage', got {prior_weight!r}")

    denoising = _is_denoising(physics)
    mask = None if denoising else _inpainting_mask(physics)
    if x0 is None:
        x0 = _default_start(y, physics, denoising, mask)
    check_tensor("x0", x0, ndim=4)
    _check_image_against_gmm(x0, gmm, stride)
    if (denoising or mask is not None) and y.shape != x0.shape:
        raise ValueError(f"y has shape {tuple(y.shape)} but the image has shape {tuple(x0.shape)}")

    x = x0.to(y.dtype).clone()
    H, W = x.shape[-2:]
    count = coverage_count(H, W, gmm.patch_size, stride, x)  # patches covering each pixel
    if prior_weight == "uniform":
        count = torch.where(count > 0, count.max(), count)  # the interior coverage; uncovered stay 0
    data_term = lam * (y if denoising else physics.A_adjoint(y))
    mask_f = None if mask is None else mask.to(device=x.device, dtype=x.dtype)
    with torch.no_grad():
        for beta in tqdm(betas, desc="EPLL", disable=not progress):
            for _ in range(inner_iters):
                patches = extract_patches(x, gmm.patch_size, stride)
                B, L, d = patches.shape
                z = wiener_denoise_patches(patches.reshape(B * L, d), gmm, 1.0 / beta).reshape(B, L, d)
                # D zbar, zbar the average of the overlapping patch estimates at each pixel
                prior_term = beta * count * aggregate_patches(z, (H, W), gmm.patch_size, stride, normalize=True)
                if denoising:
                    x = (data_term + prior_term) / (lam + beta * count)
                elif mask_f is not None:
                    x = (data_term + prior_term) / (lam * mask_f + beta * count).clamp(min=1e-30)
                else:
                    def normal_op(v, beta=beta):
                        return lam * physics.A_adjoint(physics.A(v)) + beta * count * v

                    x = conjugate_gradient(normal_op, data_term + prior_term, x, cg_iters, cg_tol)
    return x


def _default_start(y, physics, denoising: bool, mask):
    if denoising:
        return y
    if mask is None:
        return physics.A_adjoint(y)
    mask = mask.to(device=y.device).expand_as(y)
    observed_mean = (y * mask).sum(dim=(2, 3), keepdim=True) / mask.sum(dim=(2, 3), keepdim=True).clamp(min=1)
    return torch.where(mask, y, observed_mean)


def _check_image_against_gmm(x: torch.Tensor, gmm: GMM, stride: int) -> None:
    if x.shape[1] != gmm.channels:
        raise ValueError(f"the image has {x.shape[1]} channels (dim 1) but the GMM models {gmm.channels}")
    H, W = x.shape[-2:]
    if gmm.patch_size > H or gmm.patch_size > W:
        raise ValueError(f"the GMM's patch_size={gmm.patch_size} is larger than the image ({H}x{W})")
