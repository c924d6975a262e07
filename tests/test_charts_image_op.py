"""The fused chart op reading its points straight from images (patchreg::charts_log_prob_image,
csrc/charts_kernel.h load_patches; patchreg.ops.charts.charts_log_prob_image) against the reference
(patchreg.reference.charts.charts_log_prob_image: gather, project, then charts_log_prob), and the chart
prior's all-patches path built on it."""

from __future__ import annotations

import re

import pytest
import torch

import patchreg
from patchreg.ops import charts as charts_ops
from patchreg.ops.charts import charts_bf16_supported, charts_log_prob_fused, charts_log_prob_image, mlp_weight_list
from patchreg.priors import ChartPrior
from patchreg.priors import chart_prior as cp
from patchreg.reference.charts import charts_image_points
from .test_chart_prior import _model
from .test_charts_op import F64, assert_close_rel, cpu_path, kernels, random_params  # noqa: F401 (fixtures)


def _source(I, C, H, W, p, n, B, seed=0, dtype=F64):
    """An image batch, B valid offsets (every image, row and column reached), an orthonormal patch basis
    (C p^2, n) and point scales."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(I, C, H, W, generator=g, dtype=F64).to(dtype)
    b = torch.randint(I, (B,), generator=g)
    i = torch.randint(H - p + 1, (B,), generator=g)
    j = torch.randint(W - p + 1, (B,), generator=g)
    i[:2], j[:2], b[:2] = torch.tensor([0, H - p]), torch.tensor([0, W - p]), torch.tensor([0, I - 1])
    offsets = b * (C * H * W) + i * W + j
    basis = torch.linalg.qr(torch.randn(C * p * p, n, generator=g, dtype=F64))[0].to(dtype)
    scale = (torch.rand(B, generator=g, dtype=F64) + 0.5).to(dtype)
    return image, offsets, basis, scale


def _run_image_op(ops, image, offsets, basis, scale, p, params, log_alpha, sigma, compute_grad=True, bf16=False):
    return ops.charts_log_prob_image(
        image, offsets, basis, scale, p, params["center"], params["basis"], params["scale"],
        mlp_weight_list(params, "encoder"), mlp_weight_list(params, "decoder"), log_alpha, sigma, compute_grad, bf16,
    )


CASES = [  # I, C, H, W, p, n, K, d, width, blocks, B (B not whole blocks of 32)
    (1, 1, 9, 11, 3, 8, 2, 2, 8, 1, 37),
    (2, 1, 20, 17, 6, 35, 3, 4, 16, 2, 70),
    (2, 3, 12, 10, 4, 47, 2, 3, 13, 1, 45),
    (3, 2, 8, 8, 8, 5, 1, 1, 4, 0, 3),
]


@pytest.mark.parametrize("I,C,H,W,p,n,K,d,width,blocks,B", CASES)
def test_image_op_matches_the_op_on_gathered_points_float64(kernels, cpu_path, I, C, H, W, p, n, K, d, width, blocks, B):
    image, offsets, basis, scale = _source(I, C, H, W, p, n, B, seed=B)
    params, log_alpha = random_params(K, n, d, width, blocks, seed=K)
    x = charts_image_points(image, offsets, basis, scale, p)
    expected = kernels.charts_log_prob(x, params["center"], params["basis"], params["scale"],
                                       mlp_weight_list(params, "encoder"), mlp_weight_list(params, "decoder"),
                                       log_alpha, 0.4, True)
    got = _run_image_op(kernels, image, offsets, basis, scale, p, params, log_alpha, 0.4)
    for a, e in zip(got, expected):
        assert a.shape == e.shape
        assert_close_rel(a, e, 1e-11)  # only the projection's sums are reordered
    value_only = _run_image_op(kernels, image, offsets, basis, scale, p, params, log_alpha, 0.4, compute_grad=False)
    assert torch.equal(value_only[0], got[0]) and value_only[2].shape == (B, 0)


def test_gather_helper_of_the_cuda_path_equals_the_reference(kernels):
    image, offsets, basis, scale = _source(2, 3, 10, 9, 4, 20, 50)
    got = kernels.charts_image_points(image, offsets, basis, scale, 4)
    torch.testing.assert_close(got, charts_image_points(image, offsets, basis, scale, 4), atol=1e-13, rtol=1e-13)
    # the reference's patch order is extract_patches' (channel, row, column)
    full = patchreg.extract_patches(image, 4).reshape(-1, 48)
    nW = 9 - 4 + 1
    b, r = offsets // (3 * 90), offsets % (3 * 90)
    rows = b * (7 * nW) + (r // 9) * nW + r % 9
    torch.testing.assert_close(charts_image_points(image, offsets, basis, torch.ones(50, dtype=F64), 4),
                               full[rows] @ basis, atol=1e-13, rtol=1e-13)


def test_public_function_reference_backend_and_image_gradient():
    image, offsets, basis, scale = _source(2, 1, 11, 12, 5, 24, 40, seed=3)
    params, log_alpha = random_params(3, 24, 3, 12, 1, seed=1)
    outs = []
    for backend in ("extension", "reference"):
        img = image.clone().requires_grad_(True)
        with patchreg.use_backend(backend):
            total, chart, grad = charts_log_prob_image(img, offsets, basis, scale, 5, params, log_alpha, 0.3)
            (total * torch.linspace(0.5, 1.5, 40, dtype=F64)).sum().backward()
        outs.append((total.detach(), chart, grad, img.grad))
    for a, e in zip(*outs):
        assert_close_rel(a, e, 1e-10)
    # the image gradient is the chain rule through the points: sum_b w_b s_b basis (d log p / dx_b) at the pixels
    x = charts_image_points(image, offsets, basis, scale, 5)
    _, _, gx = charts_log_prob_fused(x, params, log_alpha, 0.3)
    assert outs[0][3].abs().max() > 0 and gx.abs().max() > 0


def test_image_op_gradcheck_and_opcheck(kernels):
    image, offsets, basis, scale = _source(1, 1, 7, 8, 3, 6, 9, seed=5)
    params, log_alpha = random_params(2, 6, 2, 6, 1, seed=2)
    img = image.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v: charts_log_prob_image(v, offsets, basis, scale, 3, params, log_alpha, 0.5)[0], (img,),
        eps=1e-6, atol=1e-6)
    charts_ops._register()
    args = (img, offsets, basis, scale, 3, params["center"], params["basis"], params["scale"],
            mlp_weight_list(params, "encoder"), mlp_weight_list(params, "decoder"), log_alpha, 0.5, True, False)
    torch.library.opcheck(torch.ops.patchreg.charts_log_prob_image.default, args)


@pytest.mark.parametrize("change,error,message", [
    (dict(offsets=torch.tensor([0, 7 * 8 - 2])), ValueError, "offsets must be top-left pixels"),
    (dict(offsets=torch.tensor([-1, 0])), ValueError, "offsets must be top-left pixels"),
    (dict(offsets=torch.tensor([0.0])), TypeError, "offsets must be int64"),
    (dict(patch_size=9), ValueError, "patch_size must be an int in [1, min(H, W) = 7]"),
    (dict(basis=torch.zeros(8, 6, dtype=F64)), ValueError, "patch_basis must have shape (C*p*p = 9, n)"),
    (dict(scale=torch.ones(3, dtype=F64)), ValueError, "point_scale must have shape (2,) like offsets"),
    (dict(scale=torch.ones(2, dtype=torch.float32)), TypeError, "point_scale.dtype is torch.float32"),
    (dict(image=torch.zeros(7, 8, dtype=F64)), ValueError, "image must be 4-D"),
])
def test_bad_arguments_raise_clear_errors(change, error, message):
    params, log_alpha = random_params(2, 6, 2, 6, 1, seed=2)
    args = dict(image=torch.rand(1, 1, 7, 8, dtype=F64), offsets=torch.tensor([0, 9]),
                basis=torch.linalg.qr(torch.randn(9, 6, dtype=F64))[0], scale=torch.ones(2, dtype=F64), patch_size=3)
    args.update(change)
    with pytest.raises(error, match=re.escape(message)):
        charts_log_prob_image(args["image"], args["offsets"], args["basis"], args["scale"], args["patch_size"], params,
                              log_alpha, 0.5)


def test_the_kernel_itself_refuses_bad_offsets(kernels):
    image, offsets, basis, scale = _source(1, 1, 7, 8, 3, 6, 2)
    params, log_alpha = random_params(2, 6, 2, 6, 1, seed=2)
    with pytest.raises(ValueError, match=r"offsets\[1\] = 54 is not the top-left pixel of a 3x3 patch"):
        _run_image_op(kernels, image, torch.tensor([0, 54]), basis, scale, 3, params, log_alpha, 0.5)


@pytest.mark.skipif(not charts_bf16_supported(), reason="needs a CPU with AMX-BF16 (charts_bf16_supported())")
def test_bf16_image_op_equals_the_bf16_op_on_gathered_points(kernels):
    image, offsets, basis, scale = _source(1, 1, 30, 30, 6, 35, 100, dtype=torch.float32)
    params, log_alpha = random_params(2, 35, 8, 64, 2, seed=4, dtype=torch.float32)
    x = charts_image_points(image, offsets, basis, scale, 6)
    expected = kernels.charts_log_prob_bf16(x, params["center"], params["basis"], params["scale"],
                                            mlp_weight_list(params, "encoder"), mlp_weight_list(params, "decoder"),
                                            log_alpha, 0.4, True)
    got = _run_image_op(kernels, image, offsets, basis, scale, 6, params, log_alpha, 0.4, bf16=True)
    for a, e in zip(got, expected):
        assert_close_rel(a, e, 1e-5)


@pytest.mark.skipif(not (torch.cuda.is_available() and charts_ops.kernels_compiled()),
                    reason="needs a CUDA device and an extension built with CUDA kernels")
def test_cuda_image_op_equals_cpu():
    image, offsets, basis, scale = _source(2, 1, 20, 17, 6, 35, 70)
    params, log_alpha = random_params(3, 35, 4, 16, 2, seed=3)
    cpu = charts_log_prob_image(image, offsets, basis, scale, 6, params, log_alpha, 0.4)
    cuda = charts_log_prob_image(image.cuda(), offsets.cuda(), basis.cuda(), scale.cuda(), 6,
                                 {k: v.cuda() for k, v in params.items()}, log_alpha.cuda(), 0.4)
    for a, e in zip(cuda, cpu):
        assert_close_rel(a.cpu(), e, 1e-10)


# --- the chart prior's all-patches path: the patches never leave the image ------------------------


@pytest.mark.parametrize("kwargs", [dict(stride=1), dict(stride=3), dict(n_patches=60), dict(top_charts=None)])
def test_prior_reading_the_image_equals_the_patch_matrix_path(kwargs):
    model = _model()
    x = torch.rand(2, 1, 13, 12, dtype=F64)
    new = ChartPrior(model, **kwargs)
    xa = x.clone().requires_grad_(True)
    ra = new.nll(xa)
    ra.sum().backward()
    # the same density and gradient from the extracted patch matrix (chart_patch_log_prob, autograd of extraction)
    old = ChartPrior(model, **kwargs)
    xb = x.clone().requires_grad_(True)
    patches = old.patches(xb)
    B, L, d = patches.shape
    params = old._weights(F64, x.device)
    lp = cp._PatchLogProb.apply(model.coords(patches.reshape(B * L, d)),
                                lambda c, g: cp.chart_patch_log_prob(model, c, old.top_charts, g, params=params))
    rb = -lp.reshape(B, L).mean(1)
    rb.sum().backward()
    torch.testing.assert_close(ra, rb, atol=1e-11, rtol=1e-11)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-11, rtol=1e-11)


def test_prior_builds_no_patch_matrix(monkeypatch):
    """All patches, fused charts: extraction is never called and the selector gathers at most SELECT_CHUNK rows."""
    model = _model()
    x = torch.rand(1, 1, 16, 15, dtype=F64, requires_grad=True)
    expected = ChartPrior(model, top_charts=2).nll(x)

    def refuse(*args, **kwargs):
        raise AssertionError("the patch matrix was extracted")

    sizes = []
    gather = cp.charts_image_points

    def counted(image, offsets, *args):
        sizes.append(len(offsets))
        return gather(image, offsets, *args)

    monkeypatch.setattr(cp, "extract_patches", refuse)
    monkeypatch.setattr(cp, "charts_image_points", counted)
    monkeypatch.setattr(cp, "SELECT_CHUNK", 50)
    r = ChartPrior(model, top_charts=2).nll(x)
    r.sum().backward()
    torch.testing.assert_close(r, expected, atol=1e-12, rtol=1e-12)
    assert sizes and max(sizes) <= 50 and sum(sizes) == 14 * 13  # every patch scored by the selector once
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
