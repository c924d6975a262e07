"""Fused log-density of a chart mixture with built-in ResidualMLP charts: checks, dispatch, fake and autograd.

Kernels: csrc/charts_cpu.cpp (CPU, blocks of points as small GEMMs) and csrc/charts_cuda.cu (CUDA,
one thread per point and chart running csrc/charts_thread.h; the same thread program runs on the
CPU as the test-only op patchreg::charts_log_prob_simt). Reference:
patchreg.reference.charts.charts_log_prob (re-exported as patchreg.charts.charts_log_prob).
Tests: tests/test_charts_op.py. Benchmark: bench/charts_op_speed.py.

The K charts' weights are the dict of `patchreg.charts.stack_mlp_charts`. The op takes each
network as a list in this order (every tensor with a leading K axis):
    input.weight, input.bias, blocks.0.0.weight, blocks.0.0.bias, blocks.0.1.weight,
    blocks.0.1.bias, ..., blocks.{L-1}.1.bias, output.weight, output.bias
The kernel returns log p(x), every chart's log p_k(x) and d log p / dx in one pass; only the
gradient with respect to x is computed, so when a chart parameter (or log_alpha, or sigma)
requires grad the differentiable reference is used instead.
"""

from __future__ import annotations

import numbers

import torch

from .. import _extension
from .._checks import check_same_device, check_tensor
from ..backend import use_extension
from ..reference.charts import _n_blocks, charts_log_prob

__all__ = ["PRECISIONS", "charts_bf16_supported", "charts_log_prob_fused", "mlp_weight_list"]

_OP = "charts_log_prob"
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


def _kernel_for(x: torch.Tensor) -> bool:
    """True when the extension is in use and registered the op for x's device."""
    if not (use_extension() and kernels_compiled()):
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(x.device.type)  # a build without CUDA: CUDA -> reference
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("patchreg::" + _OP, key)


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
    if hasattr(torch.ops.patchreg, _OP_BF16):
        torch.library.register_autograd("patchreg::" + _OP_BF16, backward, setup_context=setup_context)


_extension.on_load(_register)
