"""Public GMM log-likelihood operators: argument checks, backend dispatch, fake and autograd registration.

Kernels: csrc/gmm_cpu.cpp, csrc/gmm_cuda.cu. Reference: patchreg/reference/gmm.py.
Tests: tests/test_gmm.py. Benchmarks: bench/bench_gmm.py.

The mixture is given as (prec_chol U (K, d, d), log_const (K,), means (K, d)) with precision
P_k = U_k U_k^T and l_nk = log_const_k - 1/2 ||U_k^T (x_n - mu_k)||^2 (see patchreg.reference.gmm).
The kernels loop over components with cache-resident blocks of patches and never build an
(N, K, d) tensor; gradients reach the patches through a fused backward kernel. When a mixture
parameter itself requires grad, the differentiable reference path is used instead.
"""

from __future__ import annotations

import torch

from .. import _extension
from .._checks import check_int, check_same_device, check_tensor
from ..backend import use_extension
from ..reference import gmm as ref

__all__ = ["gmm_log_prob", "gmm_best_component", "gmm_log_prob_image"]

_OPS = (
    "gmm_component_log_prob",
    "gmm_component_log_prob_backward",
    "gmm_mixture_log_prob",
    "gmm_best_component",
)


def _kernels_loaded() -> bool:
    """True when the extension is in use and was built with the GMM kernels."""
    return use_extension() and kernels_compiled()


def _check_mixture(patches, prec_chol, log_const, means) -> None:
    check_tensor("patches", patches, ndim=2)
    check_tensor("prec_chol", prec_chol, ndim=3)
    check_tensor("log_const", log_const, ndim=1)
    check_tensor("means", means, ndim=2)
    K, d = means.shape
    if K == 0 or d == 0:
        raise ValueError(f"means must have shape (K, d) with K, d >= 1, got {tuple(means.shape)}")
    if patches.shape[1] != d:
        raise ValueError(f"patches has dimension {patches.shape[1]} (dim 1) but means has d={d}")
    if tuple(prec_chol.shape) != (K, d, d):
        raise ValueError(f"prec_chol must have shape ({K}, {d}, {d}), got {tuple(prec_chol.shape)}")
    if log_const.shape[0] != K:
        raise ValueError(f"log_const must have shape ({K},), got {tuple(log_const.shape)}")
    for name, t in (("prec_chol", prec_chol), ("log_const", log_const), ("means", means)):
        if t.dtype != patches.dtype:
            raise TypeError(f"{name}.dtype is {t.dtype} but patches.dtype is {patches.dtype}")
        check_same_device("patches", patches, name, t)


def _params_need_grad(*params) -> bool:
    return torch.is_grad_enabled() and any(p.requires_grad for p in params)


def gmm_log_prob(
    patches: torch.Tensor,
    prec_chol: torch.Tensor,
    log_const: torch.Tensor,
    means: torch.Tensor,
    mixture: bool = False,
    compute_grad: bool = True,
):
    """Log-likelihood of patches (N, d) under a Gaussian mixture, without (N, K, d) intermediates.

    mixture=False: per-component log-likelihoods (N, K), differentiable w.r.t. patches.
    mixture=True:  (loglik (N,), best (N,) int64, grad (N, d)) with loglik = log sum_k exp l_nk,
                   best = argmax_k l_nk and grad = d loglik / d patches; with compute_grad=False
                   grad is an empty (N, 0) tensor (saves half the work). loglik is differentiable
                   w.r.t. patches (its backward reuses grad, so compute_grad is forced on then).
    """
    _check_mixture(patches, prec_chol, log_const, means)
    if not mixture:
        if _kernels_loaded() and not _params_need_grad(prec_chol, log_const, means):
            return torch.ops.patchreg.gmm_component_log_prob(patches, prec_chol, log_const, means)
        return ref.gmm_component_log_prob(patches, prec_chol, log_const, means)
    if torch.is_grad_enabled() and patches.requires_grad:
        compute_grad = True
    if _kernels_loaded() and not _params_need_grad(prec_chol, log_const, means):
        return torch.ops.patchreg.gmm_mixture_log_prob(patches, prec_chol, log_const, means, compute_grad)
    return ref.gmm_mixture_log_prob(patches, prec_chol, log_const, means, compute_grad)


def gmm_best_component(
    patches: torch.Tensor, prec_chol: torch.Tensor, log_const: torch.Tensor, means: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(max_k l_nk (N,), argmax_k l_nk (N,) int64): the most likely component of every patch.

    EPLL's z-step needs only this; the CPU kernel skips writing the (N, K) matrix. Ties go to
    the lowest k. Not differentiable (computed without autograd).
    """
    _check_mixture(patches, prec_chol, log_const, means)
    with torch.no_grad():
        if _kernels_loaded():
            return torch.ops.patchreg.gmm_best_component(patches, prec_chol, log_const, means)
        return ref.gmm_best_component(patches, prec_chol, log_const, means)


def gmm_log_prob_image(
    x: torch.Tensor,
    patch_size: int,
    prec_chol: torch.Tensor,
    log_const: torch.Tensor,
    means: torch.Tensor,
    remove_mean: bool = False,
) -> torch.Tensor:
    """Per-component log-likelihood of every overlapping patch of x (B, C, H, W): (B, L, K).

    Patches are in `extract_patches` order (L = (H-p+1)(W-p+1)); remove_mean subtracts each
    patch's mean first. The reference path is the convolution form (no patch matrix); the
    extension path extracts the patches (L*d values, small next to K*d*L) and runs the fused
    kernel, which is faster than the convolution (bench/bench_gmm.py).
    """
    from .patches import extract_patches

    check_tensor("x", x, ndim=4)
    check_int("patch_size", patch_size, 1)
    B, C, H, W = x.shape
    if patch_size > H or patch_size > W:
        raise ValueError(f"patch_size={patch_size} is larger than the image (H={H}, W={W})")
    d = C * patch_size * patch_size
    check_tensor("means", means, ndim=2)
    if means.shape[1] != d:
        raise ValueError(
            f"means has d={means.shape[1]} but x with C={C} and patch_size={patch_size} "
            f"has patches of dimension C*p*p={d}"
        )
    if _kernels_loaded() and not _params_need_grad(prec_chol, log_const, means):
        patches = extract_patches(x, patch_size, 1, remove_mean)
        patches = patches[0] if remove_mean else patches
        comp = gmm_log_prob(patches.reshape(-1, d), prec_chol, log_const, means)
        return comp.reshape(B, -1, means.shape[0])
    _check_mixture(x.new_empty(0, d), prec_chol, log_const, means)
    return ref.gmm_image_component_log_prob(x, patch_size, prec_chol, log_const, means, remove_mean)


# --- registration of fake (shape) functions and autograd, once the library is loaded ----------


_registered = {"done": False}


def kernels_compiled() -> bool:
    """True when torch.ops.patchreg holds the GMM kernels (whichever library registered them)."""
    return all(hasattr(torch.ops.patchreg, name) for name in _OPS)


def _register() -> None:
    """Fake and autograd registration; idempotent, and a no-op without the GMM kernels."""
    if _registered["done"] or not kernels_compiled():
        return
    _registered["done"] = True
    lib = "patchreg::"

    @torch.library.register_fake(lib + "gmm_component_log_prob")
    def _(patches, prec_chol, log_const, means):
        return patches.new_empty(patches.shape[0], means.shape[0])

    @torch.library.register_fake(lib + "gmm_component_log_prob_backward")
    def _(grad, patches, prec_chol, means):
        return torch.empty_like(patches)

    @torch.library.register_fake(lib + "gmm_mixture_log_prob")
    def _(patches, prec_chol, log_const, means, compute_grad):
        N = patches.shape[0]
        return (
            patches.new_empty(N),
            patches.new_empty(N, dtype=torch.int64),
            patches.new_empty(N, patches.shape[1] if compute_grad else 0),
        )

    @torch.library.register_fake(lib + "gmm_best_component")
    def _(patches, prec_chol, log_const, means):
        N = patches.shape[0]
        return patches.new_empty(N), patches.new_empty(N, dtype=torch.int64)

    # Only the patches get gradients from the kernels; gmm_log_prob routes requests for
    # parameter gradients to the reference path.
    def component_setup(ctx, inputs, output):
        patches, prec_chol, _, means = inputs
        ctx.save_for_backward(patches, prec_chol, means)

    def component_backward(ctx, grad):
        patches, prec_chol, means = ctx.saved_tensors
        grad_patches = torch.ops.patchreg.gmm_component_log_prob_backward(
            grad.contiguous(), patches, prec_chol, means
        )
        return grad_patches, None, None, None

    torch.library.register_autograd(
        lib + "gmm_component_log_prob", component_backward, setup_context=component_setup
    )

    def mixture_setup(ctx, inputs, output):
        ctx.save_for_backward(output[2])

    def mixture_backward(ctx, grad_loglik, grad_best, grad_grad):
        (dloglik_dx,) = ctx.saved_tensors
        if dloglik_dx.shape[1] == 0:
            raise RuntimeError("gmm_mixture_log_prob was called with compute_grad=False; cannot backprop")
        return grad_loglik.unsqueeze(1) * dloglik_dx, None, None, None, None

    torch.library.register_autograd(
        lib + "gmm_mixture_log_prob", mixture_backward, setup_context=mixture_setup
    )


_extension.on_load(_register)
