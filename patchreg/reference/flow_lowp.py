"""Reference for the bfloat16 flow path's elementwise op (kernel: csrc/flow_lowp_cpu.cpp)."""

from __future__ import annotations

import torch

__all__ = ["bf16_sum_parts"]


def bf16_sum_parts(parts: torch.Tensor, n_parts: int) -> torch.Tensor:
    """(rows, n_parts * w) bfloat16 -> (rows, w) float32: the column blocks summed in order, in float32."""
    blocks = parts.to(torch.float32).chunk(n_parts, dim=1)
    out = blocks[0].clone()
    for block in blocks[1:]:
        out += block
    return out
