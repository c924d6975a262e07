"""Fused log-density of a chart mixture with built-in ResidualMLP charts: checks, dispatch, fake and autograd.

Kernels: csrc/charts_cpu.cpp (CPU, blocks of points as small GEMMs) and csrc/charts_cuda.cu (CUDA,
one thread per point and chart running csrc/charts_thread.h; the same thread program runs on the
CPU as the test-only op patchreg::charts_log_prob_simt). Reference:
patchreg.reference.charts.charts_log_prob (re-exported as patchreg.charts.charts_log_prob).
Tests: tests/test_charts_op.py. Benchmark: bench/charts_op_speed.py.

`charts_log_prob_image` is the same op on points read straight from images (the chart prior's patches):
point b = point_scale[b] * patch_basis^T (the patch whose top-left pixel is image.flatten()[offsets[b]]).
The CPU kernel reads each block's patches itself, so no (B, n) point matrix is built; on CUDA the points
are gathered by ATen ops first. Reference: patchreg.reference.charts.charts_log_prob_image. Tests:
tests/test_charts_image_op.py.

The K charts' weights are the dict of `patchreg.charts.stack_mlp_charts`. The op takes each
network as a list in this order (every tensor with a leading K axis):
    input.weight, input.bias, blocks.0.0.weight, blocks.0.0.bias, blocks.0.1.weight,
    blocks.0.1.bias, ..., blocks.{L-1}.1.bias, output.weight, output.bias
The kernel returns log p(x), every chart's log p_k(x) and d log p / dx in one pass; only the
gradient with respect to x is computed, so when a chart parameter (or log_alpha, or sigma)
requires grad the differentiable reference is used instead.
"""

from __future__ import annotations

import math
import numbers

import torch

from .. import _extension
from .._checks import check_same_device, check_tensor
from ..backend import use_extension
from ..reference.charts import _n_blocks, charts_log_prob, charts_log_prob_image as _ref_image, patch_offset_index

__all__ = ["PRECISIONS", "charts_bf16_supported", "charts_log_prob_fused", "charts_log_prob_image", "mlp_weight_list"]

_OP = "charts_log_prob"
_OP_IMAGE = "charts_log_prob_image"  # the points read from images
_OP_BF16 = "charts_log_prob_bf16"  # the decoder's tangent GEMMs in bfloat16 on AMX tiles (CPU, float32)
PRECISIONS = ("float32", "bfloat16")


def mlp_weight_list(params: dict, prefix: str) -> list[torch.Tensor]:
    """The stacked weights of `prefix` ("encoder" or "decoder") in the op's order (module docstring)."""
    names = ["input.weight", "input.bias"]
    for i in range(_n_blocks(params, prefix)):
        names += [f"blocks.{i}.{j}.{w}" for j in range(2) for w in ("weight", "bias")]
    names += ["output.weight", "output.bias"]
    missing = [f"{prefix}.{n}" for n in names if f"{prefix}.{n}" not in params]
    if missing:
        raise ValueError(f"params is missing {missing}: pass the dict of patchreg.charts.stack_mlp_charts")
    return [params[f"{prefix}.{n}"] for n in names]


def _check(x, params, log_alpha, sigma):
    check_tensor("x", x, ndim=2)
    if not isinstance(params, dict):
        raise TypeError(f"params must be the dict of stack_mlp_charts, got {type(params).__name__}")
    for key in ("center", "basis", "scale"):
        if key not in params:
            raise ValueError(f"params is missing {key!r}: pass the dict of patchreg.charts.stack_mlp_charts")
    check_tensor("log_alpha", log_alpha, ndim=1)
    encoder, decoder = mlp_weight_list(params, "encoder"), mlp_weight_list(params, "decoder")
    named = [("params['center']", params["center"]), ("params['basis']", params["basis"]),
             ("params['scale']", params["scale"]), ("log_alpha", log_alpha)]
    for key in params:
        if key.startswith(("encoder.", "decoder.")):
            named.append((f"params[{key!r}]", params[key]))
    for name, t in named:
        check_tensor(name, t)
        if t.dtype != x.dtype:
            raise TypeError(f"{name}.dtype is {t.dtype} but x.dtype is {x.dtype}")
        check_same_device("x", x, name, t)
    B, n = x.shape
    K = params["center"].shape[0] if params["center"].dim() >= 1 else 0
    if K < 1:
        raise ValueError(f"params['center'] must have shape (K, n) with K >= 1, got {tuple(params['center'].shape)}")
    expected = {"params['center']": (K, n), "params['basis']": (K, n, n), "params['scale']": (K,), "log_alpha": (K,)}
    for name, t in named[:4]:
        if tuple(t.shape) != expected[name]:
            raise ValueError(f"{name} must have shape {expected[name]} (K={K} charts, n={n} from x), got {tuple(t.shape)}")
    d = encoder[-2].shape[1] if encoder[-2].dim() == 3 else 0
    if not 1 <= d < n:
        raise ValueError(f"the latent dimension d = params['encoder.output.weight'].shape[1] must satisfy 1 <= d < n = {n}, got {d}")
    if isinstance(sigma, torch.Tensor):
        if sigma.numel() != 1:
            raise ValueError(f"sigma must be a scalar, got shape {tuple(sigma.shape)}")
        value = float(sigma.detach())
    elif isinstance(sigma, numbers.Real) and not isinstance(sigma, bool):
        value = float(sigma)
    else:
        raise TypeError(f"sigma must be a float or a 1-element tensor, got {type(sigma).__name__}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"sigma must be > 0 and finite, got {value}")
    return encoder, decoder, value


def _kernel_for(x: torch.Tensor, op: str = _OP) -> bool:
    """True when the extension is in use and registered `op` for x's device."""
    if not (use_extension() and kernels_compiled() and hasattr(torch.ops.patchreg, op)):
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(x.device.type)  # a build without CUDA: CUDA -> reference
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("patchreg::" + op, key)


def _reference(x, params, log_alpha, sigma, compute_grad):
    B = x.shape[0]
    if not compute_grad:
        total, chart = charts_log_prob(x, params, log_alpha, sigma, return_chart_log_probs=True)
        return total, chart, x.new_empty(B, 0)
    differentiable = torch.is_grad_enabled() and x.requires_grad
    with torch.enable_grad():
        xr = x if differentiable else x.detach().requires_grad_(True)
        total, chart = charts_log_prob(xr, params, log_alpha, sigma, return_chart_log_probs=True)
        (grad,) = torch.autograd.grad(total.sum(), xr, retain_graph=torch.is_grad_enabled())
    if not torch.is_grad_enabled():
        total, chart = total.detach(), chart.detach()
    return total, chart, grad


def charts_bf16_supported() -> bool:
    """True when the CPU kernel's bfloat16 mode runs here: the extension is in use and built with it, the CPU
    has AMX-BF16 (and AVX512-BF16, AVX-512BW), the OS grants the tile state, PATCHREG_DISABLE_AMX is unset."""
    if not (use_extension() and kernels_compiled() and hasattr(torch.ops.patchreg, "charts_bf16_supported")):
        return False
    return bool(torch.ops.patchreg.charts_bf16_supported())


def check_precision(precision: str, dtype: torch.dtype | None = None) -> str:
    """precision validated: "float32" (or the input's dtype) or "bfloat16" (float32 inputs, a CPU with AMX)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bfloat16":
        if dtype is not None and dtype != torch.float32:
            raise TypeError(f"precision='bfloat16' takes float32 inputs, got {dtype}")
        if not charts_bf16_supported():
            raise ValueError("precision='bfloat16' needs the compiled extension on a CPU with AMX-BF16 "
                             "(patchreg.ops.charts_bf16_supported() is False here); use precision='float32'")
    return precision


def charts_log_prob_fused(x: torch.Tensor, params: dict, log_alpha: torch.Tensor, sigma, compute_grad: bool = True,
                          precision: str = "float32"):
    """(log p(x) (B,), log p_k(x) (B, K), d log p / dx (B, n)) of the chart mixture, in one fused pass.

    params: the dict of `patchreg.charts.stack_mlp_charts(model)`; log_alpha (K,) the log mixing
    weights; sigma > 0 the off-manifold noise. With compute_grad=False the gradient is an empty
    (B, 0) tensor (forward only, about half the work). Only log p(x) is differentiable, with
    respect to x (its backward reuses the gradient, so compute_grad is forced on when x requires
    grad); the other outputs carry no graph. Same numbers as patchreg.reference.charts.charts_log_prob, except
    that a non-positive-definite J^T J gives NaN in the kernel where the reference raises.
    precision="bfloat16" (float32 x on a CPU with AMX, `charts_bf16_supported()`): the decoder's residual-block
    layers on the d tangent columns run as bfloat16 products with float32 sums; x_hat, the residual, the encoder
    and everything elementwise stay float32, so only J (log det J^T J and its gradient) sees bfloat16 rounding.
    Where the CPU kernel does not run (the reference backend, CUDA, parameter gradients) it is float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    encoder, decoder, sigma_value = _check(x, params, log_alpha, sigma)
    if torch.is_grad_enabled() and x.requires_grad:
        compute_grad = True
    tensors = [params["center"], params["basis"], params["scale"], log_alpha, *encoder, *decoder]
    params_need_grad = torch.is_grad_enabled() and (
        any(t.requires_grad for t in tensors) or (isinstance(sigma, torch.Tensor) and sigma.requires_grad)
    )
    if _kernel_for(x) and not params_need_grad:
        if precision == "bfloat16" and x.device.type == "cpu":
            if x.dtype != torch.float32:  # the op itself refuses a CPU without AMX (per call, no Python check here)
                raise TypeError(f"precision='bfloat16' takes float32 inputs, got {x.dtype}")
            return torch.ops.patchreg.charts_log_prob_bf16(
                x, params["center"], params["basis"], params["scale"], encoder, decoder, log_alpha, sigma_value,
                compute_grad,
            )
        return torch.ops.patchreg.charts_log_prob(
            x, params["center"], params["basis"], params["scale"], encoder, decoder, log_alpha, sigma_value,
            compute_grad,
        )
    return _reference(x, params, log_alpha, sigma, compute_grad)


def _check_image_source(image, offsets, patch_basis, point_scale, patch_size) -> None:
    check_tensor("image", image, ndim=4)
    check_tensor("offsets", offsets, ndim=1, float_dtype=False)
    if offsets.dtype != torch.int64:
        raise TypeError(f"offsets must be int64, got {offsets.dtype}")
    I, C, H, W = image.shape
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or not 1 <= patch_size <= min(H, W):
        raise ValueError(f"patch_size must be an int in [1, min(H, W) = {min(H, W)}], got {patch_size!r}")
    check_tensor("patch_basis", patch_basis, ndim=2)
    if patch_basis.shape[0] != C * patch_size**2:
        raise ValueError(f"patch_basis must have shape (C*p*p = {C * patch_size**2}, n), got {tuple(patch_basis.shape)}")
    check_tensor("point_scale", point_scale, ndim=1)
    if point_scale.shape[0] != offsets.shape[0]:
        raise ValueError(f"point_scale must have shape ({offsets.shape[0]},) like offsets, got {tuple(point_scale.shape)}")
    for name, t in (("patch_basis", patch_basis), ("point_scale", point_scale)):
        if t.dtype != image.dtype:
            raise TypeError(f"{name}.dtype is {t.dtype} but image.dtype is {image.dtype}")
    for name, t in (("offsets", offsets), ("patch_basis", patch_basis), ("point_scale", point_scale)):
        check_same_device("image", image, name, t)
    if offsets.numel():  # every offset the top-left pixel of a whole patch in channel 0 of one image
        chw = C * H * W
        r = offsets % chw
        ok = (bool((offsets >= 0).all()) and bool((offsets < I * chw).all()) and bool((r < H * W).all())
              and bool((r // W <= H - patch_size).all()) and bool((r % W <= W - patch_size).all()))
        if not ok:
            raise ValueError(f"offsets must be top-left pixels b*C*H*W + i*W + j of {patch_size}x{patch_size} patches "
                             f"inside image (shape {tuple(image.shape)}): i <= {H - patch_size}, j <= {W - patch_size}")


def charts_log_prob_image(image: torch.Tensor, offsets: torch.Tensor, patch_basis: torch.Tensor,
                          point_scale: torch.Tensor, patch_size: int, params: dict, log_alpha: torch.Tensor, sigma,
                          compute_grad: bool = True, precision: str = "float32", check_offsets: bool = True):
    """charts_log_prob_fused at the points x_b = point_scale[b] * patch_basis^T q_b read from images.

    image (I, C, H, W); offsets (B,) int64: q_b is the C x p x p patch whose top-left pixel is
    image.flatten()[offsets[b]] (b_img C H W + i W + j), flattened in extract_patches' order; patch_basis
    (C p^2, n); point_scale (B,). Returns (log p (B,), log p_k (B, K), d log p / dx (B, n), the gradient with
    respect to the points x_b). Only log p is differentiable, with respect to image. The CPU kernel reads the
    patches itself (no (B, n) or (B, C p^2) matrix); precision as charts_log_prob_fused.
    check_offsets=False skips the Python-side bounds check of offsets (the kernel still checks them) for
    callers that built them from valid positions.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if check_offsets:
        _check_image_source(image, offsets, patch_basis, point_scale, patch_size)
    placeholder = image.new_empty(1).expand(offsets.shape[0], patch_basis.shape[1])
    encoder, decoder, sigma_value = _check(placeholder, params, log_alpha, sigma)
    if torch.is_grad_enabled() and image.requires_grad:
        compute_grad = True
    tensors = [params["center"], params["basis"], params["scale"], log_alpha, *encoder, *decoder, patch_basis,
               point_scale]
    params_need_grad = torch.is_grad_enabled() and (
        any(t.requires_grad for t in tensors) or (isinstance(sigma, torch.Tensor) and sigma.requires_grad)
    )
    if _kernel_for(image, _OP_IMAGE) and not params_need_grad:
        bf16 = precision == "bfloat16" and image.device.type == "cpu"
        if bf16 and image.dtype != torch.float32:
            raise TypeError(f"precision='bfloat16' takes float32 inputs, got {image.dtype}")
        return torch.ops.patchreg.charts_log_prob_image(
            image, offsets, patch_basis, point_scale, patch_size, params["center"], params["basis"], params["scale"],
            encoder, decoder, log_alpha, sigma_value, compute_grad, bf16,
        )
    if not compute_grad:
        total, chart = _ref_image(image, offsets, patch_basis, point_scale, patch_size, params, log_alpha, sigma, True)
        return total, chart, image.new_empty(offsets.shape[0], 0)
    from ..reference.charts import charts_image_points

    x = charts_image_points(image, offsets, patch_basis, point_scale, patch_size)
    differentiable = torch.is_grad_enabled() and (image.requires_grad or params_need_grad)
    with torch.enable_grad():
        xr = x if differentiable and x.requires_grad else x.detach().requires_grad_(True)
        total, chart = charts_log_prob(xr, params, log_alpha, sigma, return_chart_log_probs=True)
        (grad,) = torch.autograd.grad(total.sum(), xr, retain_graph=differentiable)
    if not differentiable:
        total, chart = total.detach(), chart.detach()
    return total, chart, grad


# --- registration of the fake (shape) function and autograd, once the library is loaded -------


_registered = {"done": False}


def kernels_compiled() -> bool:
    """True when torch.ops.patchreg holds the fused chart op (whichever library registered it)."""
    return hasattr(torch.ops.patchreg, _OP)


def _register() -> None:
    """Fake and autograd registration; idempotent, and a no-op without the op."""
    if _registered["done"] or not kernels_compiled():
        return
    _registered["done"] = True
    name = "patchreg::" + _OP

    def fake(x, center, basis, scale, encoder, decoder, log_alpha, sigma, compute_grad):
        B, n = x.shape
        return x.new_empty(B), x.new_empty(B, center.shape[0]), x.new_empty(B, n if compute_grad else 0)

    torch.library.register_fake(name, fake)
    if hasattr(torch.ops.patchreg, _OP_BF16):
        torch.library.register_fake("patchreg::" + _OP_BF16, fake)
    if hasattr(torch.ops.patchreg, "charts_log_prob_simt"):  # the CUDA thread program on the CPU (tests)
        torch.library.register_fake("patchreg::charts_log_prob_simt", fake)

    # Only x gets a gradient from the kernel; charts_log_prob_fused routes parameter gradients
    # to the reference. chart_log_prob and grad_x are marked non-differentiable.
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.save_for_backward(output[2])
        ctx.list_sizes = len(inputs[4]), len(inputs[5])

    def backward(ctx, grad_log_prob, grad_chart, grad_grad):
        (dlogp_dx,) = ctx.saved_tensors
        if dlogp_dx.shape[1] == 0:
            raise RuntimeError("charts_log_prob was called with compute_grad=False; cannot backprop")
        n_enc, n_dec = ctx.list_sizes  # the returned structure must match the inputs'
        return (grad_log_prob.unsqueeze(1) * dlogp_dx, None, None, None, [None] * n_enc, [None] * n_dec,
                None, None, None)

    torch.library.register_autograd(name, backward, setup_context=setup_context)
    _register_image_op()
    if hasattr(torch.ops.patchreg, _OP_BF16):
        torch.library.register_autograd("patchreg::" + _OP_BF16, backward, setup_context=setup_context)


_extension.on_load(_register)


def _register_image_op() -> None:
    """Fake and autograd of charts_log_prob_image: log p is differentiable with respect to image, by scattering
    point_scale * patch_basis (d log p / dx) back to the patches' pixels."""
    if not hasattr(torch.ops.patchreg, _OP_IMAGE):
        return
    name = "patchreg::" + _OP_IMAGE

    def fake(image, offsets, patch_basis, point_scale, patch_size, center, basis, scale, encoder, decoder, log_alpha,
             sigma, compute_grad, bfloat16):
        B, n = offsets.shape[0], patch_basis.shape[1]
        return image.new_empty(B), image.new_empty(B, center.shape[0]), image.new_empty(B, n if compute_grad else 0)

    torch.library.register_fake(name, fake)

    def setup_context(ctx, inputs, output):
        image, offsets, patch_basis, point_scale, patch_size = inputs[:5]
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.save_for_backward(offsets, patch_basis, point_scale, output[2])
        ctx.image_shape, ctx.patch_size = tuple(image.shape), patch_size
        ctx.list_sizes = len(inputs[8]), len(inputs[9])

    def backward(ctx, grad_log_prob, grad_chart, grad_grad):
        offsets, patch_basis, point_scale, dlogp_dx = ctx.saved_tensors
        if dlogp_dx.shape[1] == 0:
            raise RuntimeError("charts_log_prob_image was called with compute_grad=False; cannot backprop")
        g = (grad_log_prob * point_scale)[:, None] * dlogp_dx
        index = patch_offset_index(ctx.image_shape, offsets, ctx.patch_size)
        grad_image = g.new_zeros(math.prod(ctx.image_shape)).index_add_(0, index.reshape(-1),
                                                                        (g @ patch_basis.T).reshape(-1))
        n_enc, n_dec = ctx.list_sizes
        return (grad_image.view(ctx.image_shape), None, None, None, None, None, None, None, [None] * n_enc,
                [None] * n_dec, None, None, None, None)

    torch.library.register_autograd(name, backward, setup_context=setup_context)
