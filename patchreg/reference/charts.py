"""Pure-PyTorch reference of the fused chart op (csrc/charts_cpu.cpp and charts_cuda.cu match it):
the log-density of a chart mixture whose K charts are built-in ResidualMLP charts, over their
weights stacked along a leading K axis.

params is the dict of `patchreg.charts.stack_mlp_charts(model)`: "center" (K, n), "basis" (K, n, n),
"scale" (K,), and "encoder.*" / "decoder.*" (K, ...) named like the ResidualMLP's parameters.
`charts_log_prob` evaluates, for a batch x (B, n): frame, encoder, decoder, decoder Jacobian
(hand-written forward mode), log det of the d x d Gram matrix, residual, latent prior and the
logsumexp over charts with the weights. Gradients with respect to x come from autograd.

No argument checks here (patchreg.ops.charts does them); nothing from the model packages is
imported (the math primitives are in patchreg.reference.chart_math). Tests compare it with
ChartMixture (tests/test_charts.py) and with the kernels (tests/test_charts_op.py).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from .chart_math import _silu_grad, gram_logdet, log_normalizer, radial_energy

__all__ = ["charts_image_points", "charts_log_prob", "charts_log_prob_image", "patch_offset_index"]


def _n_blocks(params, prefix):
    return len({k.split(".")[2] for k in params if k.startswith(f"{prefix}.blocks.")})


def _linear(params, name, h):
    return torch.einsum("bki,koi->bko", h, params[f"{name}.weight"]) + params[f"{name}.bias"]


def _linear_tangent(params, name, t):
    return torch.einsum("koi,bkim->bkom", params[f"{name}.weight"], t)


def _stacked_mlp(params, prefix, h, tangents=None):
    """The stacked ResidualMLP on h (B, K, in); with tangents (B, K, in, m) also their pushforward."""
    pre = _linear(params, f"{prefix}.input", h)
    t = None if tangents is None else _linear_tangent(params, f"{prefix}.input", tangents)
    for i in range(_n_blocks(params, prefix)):
        a = _linear(params, f"{prefix}.blocks.{i}.0", F.silu(pre))
        if t is not None:
            ta = _linear_tangent(params, f"{prefix}.blocks.{i}.0", _silu_grad(pre).unsqueeze(-1) * t)
            t = t + _linear_tangent(params, f"{prefix}.blocks.{i}.1", _silu_grad(a).unsqueeze(-1) * ta)
        pre = pre + _linear(params, f"{prefix}.blocks.{i}.1", F.silu(a))
    out = _linear(params, f"{prefix}.output", F.silu(pre))
    if t is None:
        return out, None
    return out, _linear_tangent(params, f"{prefix}.output", _silu_grad(pre).unsqueeze(-1) * t)


def charts_log_prob(x: torch.Tensor, params: dict, log_alpha: torch.Tensor, sigma, return_chart_log_probs: bool = False):
    """log p(x) (B,) of the chart mixture with stacked ResidualMLP charts; optionally also log p_k(x) (B, K)."""
    n = x.shape[-1]
    basis, center, scale = params["basis"], params["center"], params["scale"]
    y = torch.einsum("bkn,knm->bkm", x[:, None, :] - center, basis) / scale[:, None]
    z, _ = _stacked_mlp(params, "encoder", y)
    d = z.shape[-1]
    eye = torch.eye(d, dtype=x.dtype, device=x.device).expand(*z.shape[:2], d, d)
    y_hat, t_hat = _stacked_mlp(params, "decoder", z, eye)
    x_hat = torch.einsum("bkm,knm->bkn", y_hat, basis) * scale[:, None] + center
    jac = torch.einsum("knm,bkmj->bknj", basis, t_hat) * scale[:, None, None]
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    residual = ((x[:, None, :] - x_hat) ** 2).sum(-1)
    log_p_z = -radial_energy(torch.sqrt((z * z).sum(-1) + 1e-12)) - log_normalizer(d)
    chart_lp = (log_p_z - 0.5 * gram_logdet(jac) - residual / (2 * sigma**2)
                - 0.5 * (n - d) * torch.log(2 * math.pi * sigma**2))
    total = torch.logsumexp(log_alpha + chart_lp, dim=-1)
    return (total, chart_lp) if return_chart_log_probs else total


def patch_offset_index(image_shape, offsets: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C p^2) flat indices into image.flatten() of the patches whose top-left pixels are at `offsets` (B,),
    in extract_patches' order (channel, row, column)."""
    _, C, H, W = image_shape
    p = patch_size
    dev = offsets.device
    rel = (torch.arange(C, device=dev)[:, None, None] * (H * W) + torch.arange(p, device=dev)[None, :, None] * W
           + torch.arange(p, device=dev)[None, None, :]).reshape(-1)
    return offsets[:, None] + rel


def charts_image_points(image: torch.Tensor, offsets: torch.Tensor, patch_basis: torch.Tensor,
                        point_scale: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The points (B, n) of charts_log_prob_image: point_scale[b] * patch_basis^T (patch at offsets[b])."""
    index = patch_offset_index(image.shape, offsets, patch_size)
    patches = image.reshape(-1)[index]
    return (patches @ patch_basis) * point_scale[:, None]


def charts_log_prob_image(image, offsets, patch_basis, point_scale, patch_size, params, log_alpha, sigma,
                          return_chart_log_probs: bool = False):
    """charts_log_prob at the points read from image (charts_image_points); differentiable in image."""
    x = charts_image_points(image, offsets, patch_basis, point_scale, patch_size)
    return charts_log_prob(x, params, log_alpha, sigma, return_chart_log_probs)
