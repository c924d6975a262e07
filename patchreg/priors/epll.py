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
from .._checks import check_tensor
from ..ops.gmm import gmm_best_component
from .gmm import GMM
from .hqs import BETA_SCHEDULE, check_hqs_settings, default_betas, half_quadratic_splitting  # noqa: F401 (re-exported)

__all__ = ["epll_restore", "default_betas", "wiener_denoise_patches"]

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
    betas, lam = check_hqs_settings(sigma, betas, lam, gmm.dim, inner_iters, stride, prior_weight)

    def denoise_patches(patches, beta):
        return wiener_denoise_patches(patches, gmm, 1.0 / beta)

    return half_quadratic_splitting(y, physics, denoise_patches, gmm.patch_size, gmm.channels, betas, lam, x0=x0,
                                    inner_iters=inner_iters, stride=stride, prior_weight=prior_weight,
                                    cg_iters=cg_iters, cg_tol=cg_tol, progress=progress, desc="EPLL", what="GMM")
