"""pytest-benchmark suite for the patch operators (cases shared with tests/test_patches.py).

    pytest bench/bench_patches.py --benchmark-only --benchmark-group-by=param:case,param:op

Each case is run by the extension, the reference and torch's F.unfold / F.fold; for the ratios
side by side in one run see bench/patch_speed_table.py.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import patchreg  # noqa: E402
from bench.patch_speed_table import contenders  # noqa: E402
from tests.patch_cases import BENCH_CASES  # noqa: E402

pytestmark = pytest.mark.skipif(not patchreg.extension_available(), reason="compiled extension not available")


@pytest.mark.parametrize("impl", ["extension", "reference", "torch"])
@pytest.mark.parametrize("op", ["extract", "aggregate", "extract backward"])
@pytest.mark.parametrize("case", BENCH_CASES, ids=[c.id for c in BENCH_CASES])
def test_patch_op_speed(benchmark, case, op, impl):
    torch.manual_seed(0)
    fn = contenders(case)[op][impl]
    benchmark.group = f"{op} {case.id}"
    benchmark(fn)
