"""Pure-PyTorch reference of the GMM log-likelihood ops (csrc/gmm_cpu.cpp and gmm_cuda.cu match it).

A Gaussian mixture is passed in the form the kernels use:
  prec_chol (K, d, d): U_k with precision P_k = U_k U_k^T (for the GMM class, U_k = L_k^-T with
                       Sigma_k = L_k L_k^T, so U_k is upper triangular; any square factor works),
  log_const (K,):      log w_k - d/2 log(2 pi) + log det U_k (everything that does not depend on x),
  means (K, d).
Component log-likelihood: l_nk = log_const_k - 1/2 ||U_k^T (x_n - mu_k)||^2.

No argument checks here (patchreg.ops.gmm does them). Everything is differentiable through
ordinary torch ops, so autograd of these functions is the reference for the kernels' gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Components evaluated together; bounds the (chunk, N, d) intermediate of the reference path.
_COMPONENT_CHUNK = 8
_PATCH_CHUNK = 65536  # bounds the (chunk, K) matrix of gmm_best_component


def log_normalizer(weights: torch.Tensor, prec_chol: torch.Tensor) -> torch.Tensor:
    """log_const_k = log w_k - d/2 log 2pi + sum_j log |U_k[j, j]| for triangular U_k.

    For a non-triangular factor use slogdet instead; the GMM class always passes triangular U.
    """
    d = prec_chol.shape[-1]
    logdet = torch.diagonal(prec_chol, dim1=-2, dim2=-1).abs().log().sum(-1)
    return weights.log() - 0.5 * d * math.log(2 * math.pi) + logdet


def gmm_component_log_prob(
    patches: torch.Tensor, prec_chol: torch.Tensor, log_const: torch.Tensor, means: torch.Tensor
) -> torch.Tensor:
    """Log-likelihood of every patch under every component: (N, d) -> (N, K).

    Components are processed in small chunks so the (chunk, N, d) intermediate stays bounded.
    """
    K = means.shape[0]
    cols = []
    for start in range(0, K, _COMPONENT_CHUNK):
        stop = min(start + _COMPONENT_CHUNK, K)
        # y[k, n] = U_k^T (x_n - mu_k) computed as x U_k - mu_k U_k.
        y = torch.matmul(patches, prec_chol[start:stop]) - torch.matmul(
            means[start:stop].unsqueeze(1), prec_chol[start:stop]
        )
        cols.append(log_const[start:stop] - 0.5 * y.square().sum(-1).transpose(0, 1))
    if not cols:
        return patches.new_empty(patches.shape[0], 0)
    return torch.cat(cols, dim=1)


def gmm_best_component(
    patches: torch.Tensor, prec_chol: torch.Tensor, log_const: torch.Tensor, means: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(max_k l_nk, argmax_k l_nk) per patch, from the component log-likelihoods in chunks of patches."""
    values, indices = [], []
    for part in patches.split(_PATCH_CHUNK):
        best = gmm_component_log_prob(part, prec_chol, log_const, means).max(dim=1)
        values.append(best.values)
        indices.append(best.indices)
    if not values:
        return patches.new_empty(0), torch.empty(0, dtype=torch.int64, device=patches.device)
    return torch.cat(values), torch.cat(indices)


def gmm_mixture_log_prob(
    patches: torch.Tensor,
    prec_chol: torch.Tensor,
    log_const: torch.Tensor,
    means: torch.Tensor,
    compute_grad: bool = True,
):
    """Mixture log-likelihood (N,), most likely component (N,) int64 and d loglik / d x (N, d).

    The gradient is -sum_k r_nk P_k (x_n - mu_k) with responsibilities r = softmax_k(l_nk); it is
    returned as an empty (N, 0) tensor when compute_grad is False. Ties in the best component go
    to the lowest index (as torch.argmax and the kernels).
    """
    comp = gmm_component_log_prob(patches, prec_chol, log_const, means)
    loglik = torch.logsumexp(comp, dim=1)
    best = comp.argmax(dim=1)
    if not compute_grad:
        return loglik, best, patches.new_empty(patches.shape[0], 0)
    resp = torch.softmax(comp, dim=1)
    grad = torch.zeros_like(patches)
    for k in range(means.shape[0]):
        u = prec_chol[k]
        grad = grad - resp[:, k : k + 1] * (((patches - means[k]) @ u) @ u.T)
    return loglik, best, grad


def gmm_component_log_prob_backward(
    grad_out: torch.Tensor,
    patches: torch.Tensor,
    prec_chol: torch.Tensor,
    means: torch.Tensor,
) -> torch.Tensor:
    """Vector-Jacobian product of gmm_component_log_prob w.r.t. patches: -sum_k g_nk P_k (x_n - mu_k)."""
    grad = torch.zeros_like(patches)
    for k in range(means.shape[0]):
        u = prec_chol[k]
        grad = grad - grad_out[:, k : k + 1] * (((patches - means[k]) @ u) @ u.T)
    return grad


def gmm_image_component_log_prob(
    x: torch.Tensor,
    patch_size: int,
    prec_chol: torch.Tensor,
    log_const: torch.Tensor,
    means: torch.Tensor,
    remove_mean: bool = False,
    component_chunk: int = 16,
) -> torch.Tensor:
    """Per-component log-likelihood of all overlapping patches of x (B, C, H, W) -> (B, L, K).

    The convolution form: U_k^T x_patch for every patch is conv2d(x, W_k) with W_k = U_k^T
    reshaped to (d, C, p, p) (F.unfold element order), so the patch matrix is never built.
    Mean removal subtracts (patch mean) * U_k^T 1, the patch mean being an average pool.
    Components go through conv2d `component_chunk` at a time, bounding the (B, chunk*d, L)
    intermediate (all K at once would be K*d*L values: 1.8 GB for K=200, d=36, 256x256).
    """
    B, C, H, W = x.shape
    p = patch_size
    K, d = means.shape
    mean_map = None
    if remove_mean:
        mean_map = F.avg_pool2d(x.mean(dim=1, keepdim=True), p, stride=1).flatten(2)  # (B, 1, L)
    outs = []
    for start in range(0, K, component_chunk):
        stop = min(start + component_chunk, K)
        u = prec_chol[start:stop]  # (k, d, d)
        weight = u.transpose(1, 2).reshape(-1, C, p, p)  # row (k, j) = U_k[:, j]
        y = F.conv2d(x, weight).flatten(2).reshape(B, stop - start, d, -1)  # (B, k, d, L)
        offset = torch.einsum("kd,kde->ke", means[start:stop], u)  # U_k^T mu_k, (k, d)
        y = y - offset[None, :, :, None]
        if remove_mean:
            ones_proj = u.sum(dim=1)  # U_k^T 1, (k, d)
            y = y - mean_map.unsqueeze(1) * ones_proj[None, :, :, None]
        quad = y.square().sum(dim=2)  # (B, k, L)
        outs.append(log_const[start:stop, None] - 0.5 * quad)
    return torch.cat(outs, dim=1).transpose(1, 2)
