"""Shape cases of the bfloat16 flow-path op, shared by tests/test_flow_lowp_ops.py and bench/bench_flow_lowp.py:
a subnet output carried as n_parts bfloat16 parts of `width` columns each (PatchNR: 3 parts of d_out)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SumCase:
    rows: int
    width: int
    n_parts: int

    @property
    def id(self) -> str:
        return f"{self.rows}x{self.n_parts}x{self.width}"


SUM_CASES = [SumCase(0, 4, 3), SumCase(41, 36, 3), SumCase(7, 1, 1), SumCase(700, 18, 2)]
BENCH_SUM = SumCase(8192, 36, 3)  # the shipped flow at PatchNR's default block of rows


def make_parts(case: SumCase, seed: int) -> torch.Tensor:
    """(rows, n_parts * width) bfloat16 at decreasing scales, like a value and its rounding corrections."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([8.0 ** -q for q in range(case.n_parts)]).repeat_interleave(case.width)
    return (torch.randn(case.rows, case.n_parts * case.width, generator=g) * scales).to(torch.bfloat16)
