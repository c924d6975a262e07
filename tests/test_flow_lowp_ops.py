"""bfloat16 flow-path op: the kernel (csrc/flow_lowp_cpu.cpp) against the reference (patchreg/reference/flow_lowp.py).

The op is exact (bfloat16 -> float32 conversions and float32 sums in a fixed order), so the kernel must
equal the reference bit for bit. The shape cases are shared with bench/bench_flow_lowp.py.
"""

from __future__ import annotations

import pytest
import torch

import patchreg
from patchreg.ops import flow_lowp as ops

from .flow_lowp_cases import SUM_CASES, make_parts

needs_kernels = pytest.mark.skipif(not (patchreg.extension_available() and ops.kernels_compiled()),
                                   reason="compiled extension with the bfloat16 flow op not available")


def _both(fn, *args):
    with patchreg.use_backend("extension"):
        ext = fn(*args)
    with patchreg.use_backend("reference"):
        refd = fn(*args)
    return ext, refd


@needs_kernels
@pytest.mark.parametrize("case", SUM_CASES, ids=[c.id for c in SUM_CASES])
def test_sum_parts_kernel_equals_reference_and_float64(case):
    parts = make_parts(case, seed=1)
    ext, refd = _both(ops.bf16_sum_parts, parts, case.n_parts)
    assert ext.dtype == torch.float32 and ext.shape == (case.rows, case.width)
    assert torch.equal(ext, refd)
    exact = parts.double().view(case.rows, case.n_parts, case.width).sum(1)
    # n_parts float32 roundings of partial sums at most
    assert torch.allclose(ext.double(), exact, rtol=case.n_parts * 2.0**-23, atol=1e-30)


@needs_kernels
def test_opcheck():
    case = SUM_CASES[1]
    torch.library.opcheck(torch.ops.patchreg.bf16_sum_parts.default, (make_parts(case, seed=3), case.n_parts))


@needs_kernels
def test_strided_rows_are_read_in_place():
    case = SUM_CASES[1]
    wide = make_parts(case, seed=4)
    padded = torch.cat([wide, torch.ones(case.rows, 5, dtype=torch.bfloat16)], dim=1)[:, : wide.shape[1]]
    assert not padded.is_contiguous()
    ext, refd = _both(ops.bf16_sum_parts, padded, case.n_parts)
    assert torch.equal(ext, refd) and torch.equal(ext, ops.bf16_sum_parts(wide, case.n_parts))


@pytest.mark.parametrize("backend", ["extension", "reference"])
def test_bad_arguments_name_the_argument(backend):
    good = torch.zeros(4, 8, dtype=torch.bfloat16)
    with patchreg.use_backend(backend):
        with pytest.raises(ValueError, match=r"parts has 8 columns, not a multiple of n_parts=3"):
            ops.bf16_sum_parts(good, 3)
        with pytest.raises(ValueError, match=r"n_parts must be >= 1"):
            ops.bf16_sum_parts(good, 0)
        with pytest.raises(TypeError, match=r"parts.dtype must be torch.bfloat16"):
            ops.bf16_sum_parts(good.float(), 2)
        with pytest.raises(ValueError, match=r"parts must be 2-D"):
            ops.bf16_sum_parts(good[None], 2)
        with pytest.raises(ValueError, match=r"parts must have unit column stride"):
            ops.bf16_sum_parts(torch.zeros(8, 4, dtype=torch.bfloat16).t(), 2)
