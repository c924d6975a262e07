"""Patch operators: kernels (csrc/patches_*.cpp|cu) against the reference (patchreg/reference/patches.py).

The shape cases are shared with bench/bench_patches.py through tests/patch_cases.py.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import patchreg
from patchreg import reference

from .patch_cases import SHAPE_CASES, make_image

needs_ext = pytest.mark.skipif(
    not patchreg.extension_available(), reason="compiled extension not available"
)
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


def both_backends(fn, *args, **kwargs):
    with patchreg.use_backend("extension"):
        ext = fn(*args, **kwargs)
    with patchreg.use_backend("reference"):
        ref = fn(*args, **kwargs)
    return ext, ref


def assert_close(a, b, dtype):
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    if isinstance(a, tuple):
        for u, v in zip(a, b):
            assert_close(u, v, dtype)
        return
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# --- forward agreement -----------------------------------------------------------------------


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", SHAPE_CASES, ids=[c.id for c in SHAPE_CASES])
def test_extract_matches_reference_and_unfold(case, dtype, device):
    x = make_image(case, dtype, device)
    ext, ref = both_backends(patchreg.extract_patches, x, case.p, case.s)
    assert_close(ext, ref, dtype)
    unfold = F.unfold(x.contiguous(), case.p, stride=case.s).transpose(1, 2)
    assert torch.equal(ext, unfold)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", SHAPE_CASES, ids=[c.id for c in SHAPE_CASES])
def test_extract_remove_mean_matches_reference(case, dtype, device):
    x = make_image(case, dtype, device)
    (pe, me), (pr, mr) = both_backends(patchreg.extract_patches, x, case.p, case.s, remove_mean=True)
    assert_close((pe, me), (pr, mr), dtype)
    torch.testing.assert_close(pe.mean(-1), torch.zeros_like(me), atol=1e-5, rtol=0)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("remove_mean", [False, True])
@pytest.mark.parametrize("case", SHAPE_CASES, ids=[c.id for c in SHAPE_CASES])
def test_aggregate_matches_reference(case, normalize, remove_mean, device):
    x = make_image(case, torch.float64, device)
    patches = torch.randn_like(reference.extract_patches(x, case.p, case.s, False)[0])
    ext, ref = both_backends(
        patchreg.aggregate_patches, patches, (case.H, case.W), case.p, case.s,
        normalize=normalize, remove_mean=remove_mean,
    )
    assert_close(ext, ref, torch.float64)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_aggregate_float32_close_to_fold(device):
    x = torch.rand(2, 3, 37, 29, device=device)
    patches = patchreg.extract_patches(x, 5, 2)
    out = patchreg.aggregate_patches(patches, (37, 29), 5, 2)
    torch.testing.assert_close(out, F.fold(patches.transpose(1, 2), (37, 29), 5, stride=2))


@needs_ext
def test_normalized_aggregation_inverts_extraction():
    x = torch.rand(1, 2, 23, 31, dtype=torch.float64)
    back = patchreg.aggregate_patches(patchreg.extract_patches(x, 4), (23, 31), 4, normalize=True)
    torch.testing.assert_close(back, x)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_positions_ops_match_reference(dtype, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 19, 24, dtype=dtype, generator=g).to(device)
    p = 5
    pos = torch.stack(
        [torch.randint(0, 19 - p + 1, (3, 40), generator=g), torch.randint(0, 24 - p + 1, (3, 40), generator=g)], -1
    ).to(device)
    ext, ref = both_backends(patchreg.extract_patches_at, x, pos, p)
    assert_close(ext, ref, dtype)
    v = torch.randn(ext.shape, dtype=dtype, generator=g).to(device)
    ext, ref = both_backends(patchreg.aggregate_patches_at, v, pos, (19, 24), p)
    assert_close(ext, ref, dtype)


@needs_ext
def test_aggregate_at_is_deterministic_on_cpu():
    g = torch.Generator().manual_seed(1)
    pos = torch.randint(0, 60, (1, 5000, 2), generator=g)
    v = torch.randn(1, 5000, 36, generator=g)
    first = patchreg.aggregate_patches_at(v, pos, (65, 65), 6)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert torch.equal(patchreg.aggregate_patches_at(v, pos, (65, 65), 6), first)
    finally:
        torch.set_num_threads(before)


@needs_ext
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 2), C=st.integers(1, 3), H=st.integers(1, 17), W=st.integers(1, 17),
    p=st.integers(1, 6), s=st.integers(1, 7), remove_mean=st.booleans(), normalize=st.booleans(),
)
def test_hypothesis_shapes(B, C, H, W, p, s, remove_mean, normalize):
    p = min(p, H, W)
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    ext, ref = both_backends(patchreg.extract_patches, x, p, s, remove_mean=remove_mean)
    assert_close(ext, ref, torch.float64)
    patches = ext[0] if remove_mean else ext
    ext, ref = both_backends(
        patchreg.aggregate_patches, patches, (H, W), p, s, normalize=normalize, remove_mean=remove_mean
    )
    assert_close(ext, ref, torch.float64)


# --- adjoint identities (<E x, y> = <x, E* y>) -------------------------------------------------


@pytest.mark.parametrize("backend", ["extension", "reference"])
@pytest.mark.parametrize("remove_mean", [False, True])
@pytest.mark.parametrize("p,s", [(1, 1), (3, 1), (4, 3), (3, 5)])
def test_adjoint_identity(backend, remove_mean, p, s):
    if backend == "extension" and not patchreg.extension_available():
        pytest.skip("compiled extension not available")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 17, 14, dtype=torch.float64, generator=g)
    with patchreg.use_backend(backend):
        ex = patchreg.extract_patches(x, p, s, remove_mean=remove_mean)
        ex = ex[0] if remove_mean else ex
        y = torch.randn(ex.shape, dtype=torch.float64, generator=g)
        ey = patchreg.aggregate_patches(y, (17, 14), p, s, remove_mean=remove_mean)
    lhs, rhs = (ex * y).sum(), (x * ey).sum()
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


@pytest.mark.parametrize("backend", ["extension", "reference"])
def test_adjoint_identity_positions(backend):
    if backend == "extension" and not patchreg.extension_available():
        pytest.skip("compiled extension not available")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 16, 13, dtype=torch.float64, generator=g)
    pos = torch.stack([torch.randint(0, 12, (2, 30), generator=g), torch.randint(0, 9, (2, 30), generator=g)], -1)
    with patchreg.use_backend(backend):
        ex = patchreg.extract_patches_at(x, pos, 5)
        y = torch.randn(ex.shape, dtype=torch.float64, generator=g)
        ey = patchreg.aggregate_patches_at(y, pos, (16, 13), 5)
    lhs, rhs = (ex * y).sum(), (x * ey).sum()
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


# --- autograd, opcheck, torch.compile -----------------------------------------------------------


def _image(requires_grad=True):
    g = torch.Generator().manual_seed(4)
    return torch.randn(1, 2, 7, 6, dtype=torch.float64, generator=g).requires_grad_(requires_grad)


@needs_ext
@pytest.mark.parametrize("remove_mean", [False, True])
def test_gradcheck_extract(remove_mean):
    def fn(x):
        out = patchreg.extract_patches(x, 3, 2, remove_mean=remove_mean)
        return out if not remove_mean else (out[0], out[1])

    x = _image()
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@needs_ext
@pytest.mark.parametrize("normalize,remove_mean", [(False, False), (True, False), (False, True), (True, True)])
def test_gradcheck_aggregate(normalize, remove_mean):
    patches = torch.randn(1, 6, 18, dtype=torch.float64, requires_grad=True)

    def fn(v):
        return patchreg.aggregate_patches(v, (7, 6), 3, 2, normalize=normalize, remove_mean=remove_mean)

    assert torch.autograd.gradcheck(fn, (patches,))
    assert torch.autograd.gradgradcheck(fn, (patches,))


@needs_ext
def test_gradcheck_positions_ops():
    x = _image()
    pos = torch.tensor([[[0, 0], [2, 3], [4, 3], [2, 3]]])  # a repeated position too
    assert torch.autograd.gradcheck(lambda t: patchreg.extract_patches_at(t, pos, 3), (x,))
    assert torch.autograd.gradgradcheck(lambda t: patchreg.extract_patches_at(t, pos, 3), (x,))
    v = torch.randn(1, 4, 18, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: patchreg.aggregate_patches_at(t, pos, (7, 6), 3), (v,))
    assert torch.autograd.gradgradcheck(lambda t: patchreg.aggregate_patches_at(t, pos, (7, 6), 3), (v,))


@needs_ext
def test_opcheck_every_op():
    from torch.library import opcheck

    ops = torch.ops.patchreg
    x = torch.randn(2, 2, 9, 8, dtype=torch.float64, requires_grad=True)
    patches = torch.randn(2, 12, 18, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([[[0, 0], [2, 3], [5, 4]], [[6, 5], [1, 1], [0, 4]]])
    v = torch.randn(2, 3, 18, dtype=torch.float64, requires_grad=True)
    for remove_mean in (False, True):
        opcheck(ops.extract_patches, (x, 3, 2, remove_mean))
        for normalize in (False, True):
            opcheck(ops.aggregate_patches, (patches, 9, 8, 3, 2, normalize, remove_mean))
    opcheck(ops.extract_patches_at, (x, pos, 3))
    opcheck(ops.aggregate_patches_at, (v, pos, 9, 8, 3))


@needs_ext
def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def roundtrip(x, pos):
        patches, means = patchreg.extract_patches(x, 4, 2, remove_mean=True)
        img = patchreg.aggregate_patches(patches * 2, (x.shape[2], x.shape[3]), 4, 2, normalize=True)
        at = patchreg.extract_patches_at(x, pos, 4)
        return img + patchreg.aggregate_patches_at(at, pos, (x.shape[2], x.shape[3]), 4), means

    x = torch.randn(1, 1, 12, 12, requires_grad=True)
    pos = torch.tensor([[[0, 0], [8, 8], [3, 5]]])
    out, means = roundtrip(x, pos)
    with patchreg.use_backend("reference"):
        p, m = patchreg.extract_patches(x, 4, 2, remove_mean=True)
        ref = patchreg.aggregate_patches(p * 2, (12, 12), 4, 2, normalize=True)
        at = patchreg.extract_patches_at(x, pos, 4)
        ref = ref + patchreg.aggregate_patches_at(at, pos, (12, 12), 4)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(means, m)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# --- layouts -----------------------------------------------------------------------------------


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_and_noncontiguous(device):
    base = torch.randn(2, 3, 20, 22, dtype=torch.float64, device=device)
    views = {
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "transposed": base.transpose(2, 3),
        "sliced": base[:, :, ::2, 1::2],
        "channel_slice": base[:, 1:],
    }
    for name, x in views.items():
        ext, ref = both_backends(patchreg.extract_patches, x, 3, 2, remove_mean=True)
        assert_close(ext, ref, torch.float64), name
        pos = torch.tensor([[[0, 0], [1, 2]], [[3, 1], [0, 0]]], device=device)
        ext, ref = both_backends(patchreg.extract_patches_at, x, pos, 3)
        assert_close(ext, ref, torch.float64)
    patches = torch.randn(2, 3 * 9, 81, dtype=torch.float64, device=device).transpose(1, 2)  # non-contiguous
    ext, ref = both_backends(patchreg.aggregate_patches, patches, (11, 11), 3)
    assert_close(ext, ref, torch.float64)


# --- bad input -----------------------------------------------------------------------------------

BACKENDS = ["extension", "reference"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "extension" and not patchreg.extension_available():
        pytest.skip("compiled extension not available")
    with patchreg.use_backend(request.param):
        yield request.param


def test_bad_ndim(backend):
    with pytest.raises(ValueError, match="x must be 4-D"):
        patchreg.extract_patches(torch.rand(8, 8), 3)
    with pytest.raises(ValueError, match="patches must be 3-D"):
        patchreg.aggregate_patches(torch.rand(4, 9), (4, 4), 3)


def test_patch_larger_than_image(backend):
    with pytest.raises(ValueError, match="patch_size=9 is larger"):
        patchreg.extract_patches(torch.rand(1, 1, 8, 20), 9)
    with pytest.raises(ValueError, match="patch_size=9 is larger"):
        patchreg.extract_patches_at(torch.rand(1, 1, 20, 8), torch.zeros(1, 1, 2, dtype=torch.long), 9)


def test_bad_stride_and_patch_size(backend):
    x = torch.rand(1, 1, 8, 8)
    for stride in (0, -1):
        with pytest.raises(ValueError, match="stride must be >= 1"):
            patchreg.extract_patches(x, 3, stride)
    with pytest.raises(ValueError, match="patch_size must be >= 1"):
        patchreg.extract_patches(x, 0)
    with pytest.raises(TypeError, match="stride must be an int"):
        patchreg.extract_patches(x, 3, 1.5)


def test_unsupported_dtype(backend):
    for dtype in (torch.float16, torch.int32):
        with pytest.raises(TypeError, match="x.dtype must be"):
            patchreg.extract_patches(torch.zeros(1, 1, 8, 8, dtype=dtype), 3)
    with pytest.raises(TypeError, match="patches.dtype must be"):
        patchreg.aggregate_patches(torch.zeros(1, 36, 9, dtype=torch.int64), (8, 8), 3)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        patchreg.extract_patches([[1.0]], 1)


def test_wrong_image_size_for_aggregation(backend):
    patches = patchreg.extract_patches(torch.rand(1, 1, 10, 10), 3)
    with pytest.raises(ValueError, match="image_size=\\(11, 10\\)"):
        patchreg.aggregate_patches(patches, (11, 10), 3)
    with pytest.raises(ValueError, match="not C\\*patch_size"):
        patchreg.aggregate_patches(patches[..., :8], (10, 10), 3)
    with pytest.raises(TypeError, match="image_size must be a pair"):
        patchreg.aggregate_patches(patches, 10, 3)


def test_positions_errors(backend):
    x = torch.rand(2, 1, 10, 12)
    good = torch.zeros(2, 3, 2, dtype=torch.long)
    with pytest.raises(TypeError, match="positions.dtype must be torch.int64"):
        patchreg.extract_patches_at(x, good.int(), 3)
    with pytest.raises(ValueError, match="positions must have shape \\(2, N, 2\\)"):
        patchreg.extract_patches_at(x, good[:1], 3)
    for bad in ([[8, 0]], [[0, 10]], [[-1, 0]]):
        pos = good.clone()
        pos[1, :1] = torch.tensor(bad)
        with pytest.raises(ValueError, match="positions out of bounds"):
            patchreg.extract_patches_at(x, pos, 3)
        with pytest.raises(ValueError, match="positions out of bounds"):
            patchreg.aggregate_patches_at(torch.rand(2, 3, 9), pos, (10, 12), 3)
    with pytest.raises(ValueError, match="positions has 3 patches"):
        patchreg.aggregate_patches_at(torch.rand(2, 4, 9), good, (10, 12), 3)


@needs_ext
def test_kernel_checks_out_of_bounds_directly():
    """Direct torch.ops calls (no Python checks) still raise ValueError, never read out of bounds."""
    x = torch.rand(1, 1, 10, 10)
    with pytest.raises(ValueError, match="positions out of bounds"):
        torch.ops.patchreg.extract_patches_at(x, torch.tensor([[[9, 0]]]), 3)
    with pytest.raises(ValueError, match="larger than the image"):
        torch.ops.patchreg.extract_patches(x, 11, 1, False)
    with pytest.raises(TypeError, match="float32 or float64"):
        torch.ops.patchreg.extract_patches(x.half(), 3, 1, False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_mismatched_devices(backend):
    x = torch.rand(1, 1, 10, 10, device="cuda")
    with pytest.raises(ValueError, match="positions is on cpu"):
        patchreg.extract_patches_at(x, torch.zeros(1, 1, 2, dtype=torch.long), 3)


def test_mismatched_devices_message():
    """Device mismatch is checked before any kernel runs (meta stands in for a second device)."""
    x = torch.rand(1, 1, 10, 10)
    with pytest.raises(ValueError, match="positions is on meta but x is on cpu"):
        patchreg.extract_patches_at(x, torch.zeros(1, 1, 2, dtype=torch.long, device="meta"), 3)


# --- backend switch --------------------------------------------------------------------------------


def test_backend_switch_restores_and_validates():
    before = patchreg.get_backend()
    with patchreg.use_backend("reference"):
        assert patchreg.get_backend() == "reference"
    assert patchreg.get_backend() == before
    with pytest.raises(ValueError, match="backend must be one of"):
        patchreg.set_backend("fast")


def test_large_outputs_reuse_pooled_memory_without_aliasing():
    """Outputs >= 32 MB come from a pool of reused blocks (csrc/patches_cpu.cpp): a block must never be
    handed out while a tensor still holds it, and a reused block must be fully overwritten."""
    if patchreg.get_backend() != "extension":
        pytest.skip("the pool lives in the compiled kernels")
    x1, x2, x3 = (torch.rand(1, 1, 1024, 1024, generator=torch.Generator().manual_seed(s)) for s in range(3))
    a = patchreg.extract_patches(x1, 3)  # 37 MB: pooled size class
    assert a.numel() * 4 >= 32 << 20
    b = patchreg.extract_patches(x2, 3)  # a is alive: must get another block
    assert a.data_ptr() != b.data_ptr()
    expected_a, expected_b = reference.extract_patches(x1, 3, 1, False)[0], reference.extract_patches(x2, 3, 1, False)[0]
    torch.testing.assert_close(a, expected_a, rtol=0, atol=0)
    ptr = a.data_ptr()
    del a
    c = patchreg.extract_patches(x3, 3)  # may reuse a's block: every value must be x3's
    torch.testing.assert_close(c, reference.extract_patches(x3, 3, 1, False)[0], rtol=0, atol=0)
    torch.testing.assert_close(b, expected_b, rtol=0, atol=0)
    assert c.data_ptr() == ptr  # the freed block was reused (no fresh page faults)
