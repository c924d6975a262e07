"""Elementwise op of PatchNR's bfloat16 flow path: argument checks, backend dispatch, fake registration.

Kernel: csrc/flow_lowp_cpu.cpp (CPU). Reference: patchreg/reference/flow_lowp.py, used on other devices
and without the extension. Tests: tests/test_flow_lowp_ops.py. Benchmark: bench/bench_flow_lowp.py.
Not differentiable: it is a step of a forward pass whose gradient is written out by hand
(patchreg.priors.flow_lowp).
"""

from __future__ import annotations

import torch

from .. import _extension
from .._checks import check_int, check_tensor
from ..backend import use_extension
from ..reference import flow_lowp as ref

__all__ = ["bf16_sum_parts", "kernels_compiled"]

_OPS = ("bf16_sum_parts",)


def kernels_compiled() -> bool:
    """True when torch.ops.patchreg holds the kernel (whichever library registered them)."""
    return all(hasattr(torch.ops.patchreg, name) for name in _OPS)


def _use_kernel(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and use_extension() and kernels_compiled()


def _check_bf16_matrix(name: str, t: torch.Tensor) -> None:
    check_tensor(name, t, ndim=2, float_dtype=False)
    if t.dtype != torch.bfloat16:
        raise TypeError(f"{name}.dtype must be torch.bfloat16, got {t.dtype}")
    if t.shape[1] > 1 and t.stride(1) != 1:
        raise ValueError(f"{name} must have unit column stride (rows may be strided), got strides {t.stride()}")


def bf16_sum_parts(parts: torch.Tensor, n_parts: int) -> torch.Tensor:
    """(rows, n_parts * w) bfloat16 -> (rows, w) float32, the n_parts column blocks summed in order in
    float32 (a subnet output carried as several bfloat16 numbers per value)."""
    _check_bf16_matrix("parts", parts)
    n_parts = check_int("n_parts", n_parts, 1)
    if parts.shape[1] % n_parts:
        raise ValueError(f"parts has {parts.shape[1]} columns, not a multiple of n_parts={n_parts}")
    if _use_kernel(parts):
        return torch.ops.patchreg.bf16_sum_parts(parts, n_parts)
    return ref.bf16_sum_parts(parts, n_parts)


_registered = {"done": False}


def _register() -> None:
    """Fake registration; idempotent, and a no-op without the kernel."""
    if _registered["done"] or not kernels_compiled():
        return
    _registered["done"] = True

    @torch.library.register_fake("patchreg::bf16_sum_parts")
    def _(parts, n_parts):
        return parts.new_empty(parts.shape[0], parts.shape[1] // n_parts, dtype=torch.float32)


_extension.on_load(_register)
