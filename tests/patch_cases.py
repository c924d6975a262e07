"""Shape cases shared by tests/test_patches.py and bench/bench_patches.py."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Case:
    B: int
    C: int
    H: int
    W: int
    p: int
    s: int
    layout: str = "contiguous"  # or "channels_last", "transposed"

    @property
    def id(self) -> str:
        return f"B{self.B}C{self.C}_{self.H}x{self.W}_p{self.p}s{self.s}_{self.layout}"


SHAPE_CASES = [
    Case(1, 1, 7, 7, 3, 1),           # odd size
    Case(1, 1, 9, 13, 1, 1),          # p = 1
    Case(2, 1, 6, 11, 6, 1),          # p = H
    Case(1, 2, 16, 16, 3, 5),         # stride > p: gaps between patches
    Case(2, 3, 15, 12, 4, 3),         # stride with a remainder
    Case(3, 2, 12, 10, 5, 2, "channels_last"),
    Case(2, 2, 11, 14, 3, 2, "transposed"),  # non-contiguous
    Case(1, 1, 33, 40, 8, 1),
]

# Benchmark sizes of issue 2: B = C = 1, 256/512, p in {3, 6, 8}, stride in {1, 2}.
BENCH_CASES = [Case(1, 1, n, n, p, s) for n in (256, 512) for p in (3, 6, 8) for s in (1, 2)]


def make_image(case: Case, dtype=torch.float64, device="cpu", seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if case.layout == "transposed":
        x = torch.randn(case.B, case.C, case.W, case.H, dtype=dtype, generator=g).transpose(2, 3)
    else:
        x = torch.randn(case.B, case.C, case.H, case.W, dtype=dtype, generator=g)
    x = x.to(device)
    if case.layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x
