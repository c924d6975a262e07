"""pytest-benchmark suite for the bfloat16 flow-path op (cases shared with tests/test_flow_lowp_ops.py).

sum_parts at the shipped PatchNR flow's shape and default block (tests/flow_lowp_cases.py): (8192, 3 x 36)
bfloat16 parts to float32, the kernel against the reference (to(float32), then adds).

Run:  .venv/bin/python -m pytest bench/bench_flow_lowp.py --benchmark-only
Whole-iteration effect: bench/patchnr_block_rows.py and bench/patchnr_vs_deepinv.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import patchreg  # noqa: E402
from patchreg.ops import flow_lowp as ops  # noqa: E402
from patchreg.reference import flow_lowp as ref  # noqa: E402
from tests.flow_lowp_cases import BENCH_SUM, make_parts  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # PatchNR's CPU benchmarks run one thread
    yield
    torch.set_num_threads(before)


@pytest.fixture
def kernels():
    if not (patchreg.extension_available() and ops.kernels_compiled()):
        pytest.skip("bfloat16 flow op not compiled")
    return torch.ops.patchreg


def test_sum_parts_reference(benchmark):
    parts = make_parts(BENCH_SUM, seed=0)
    benchmark(ref.bf16_sum_parts, parts, BENCH_SUM.n_parts)


def test_sum_parts_kernel(benchmark, kernels):
    parts = make_parts(BENCH_SUM, seed=0)
    benchmark(kernels.bf16_sum_parts, parts, BENCH_SUM.n_parts)
