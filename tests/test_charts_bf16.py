"""The chart kernel's bfloat16 mode (patchreg::charts_log_prob_bf16, csrc/charts_cpu_amx.cpp and
csrc/charts_amx_gemm.h): the decoder's tangent GEMMs as AMX bfloat16 tile products, the rest float32.
Compared with the float64 reference (patchreg.charts.charts_log_prob) and the float32 kernel; the chart
prior's precision option; the errors. Skipped where the CPU or build has no AMX-BF16 chart loops."""

from __future__ import annotations

import pytest
import torch

from patchreg.ops import charts as charts_ops
from patchreg.ops.charts import charts_bf16_supported, charts_log_prob_fused, mlp_weight_list
from patchreg.priors import ChartPrior

from .test_charts_op import random_params, random_points, reference

F32, F64 = torch.float32, torch.float64


@pytest.fixture
def bf16_kernel():
    if not charts_bf16_supported():
        pytest.skip("no AMX-BF16 chart loops on this CPU or build")
    charts_ops._register()
    return torch.ops.patchreg


def _run(op, x, params, log_alpha, sigma, compute_grad=True):
    return op(x, params["center"], params["basis"], params["scale"], mlp_weight_list(params, "encoder"),
              mlp_weight_list(params, "decoder"), log_alpha, sigma, compute_grad)


def _cast(params, log_alpha, dtype):
    return {k: v.to(dtype) for k, v in params.items()}, log_alpha.to(dtype)


@pytest.mark.parametrize("width,d,n_blocks", [(32, 3, 1), (64, 8, 2)])
def test_bf16_close_to_float64_reference(bf16_kernel, width, d, n_blocks):
    params, log_alpha = random_params(3, 12, d, width, n_blocks, seed=2)
    x = random_points(100, 12, seed=3)
    ref_total, ref_chart, ref_grad = reference(x, params, log_alpha, 0.4)
    p32, la32 = _cast(params, log_alpha, F32)
    total, chart, grad = _run(bf16_kernel.charts_log_prob_bf16, x.float(), p32, la32, 0.4)
    f_total, f_chart, f_grad = _run(bf16_kernel.charts_log_prob, x.float(), p32, la32, 0.4)
    # bfloat16 only in J: log p within a few 1e-2 nats, the gradient within 1% of its size
    err = (total.double() - ref_total).abs()
    assert float(err.max()) < 5e-2, float(err.max())
    torch.testing.assert_close(chart.double(), ref_chart, atol=1e-1, rtol=0)
    scale = ref_grad.norm(dim=1, keepdim=True)
    assert float(((grad.double() - ref_grad).norm(dim=1, keepdim=True) / scale).max()) < 1e-2
    # ... and the AMX path really ran: it differs from the float32 kernel by more than float32 rounding
    f_err = (f_total.double() - ref_total).abs()
    assert float(err.max()) > 10 * float(f_err.max())


def test_bf16_width_not_a_multiple_of_32_is_float32(bf16_kernel):
    params, log_alpha = _cast(*random_params(2, 10, 3, 24, 1, seed=4), F32)
    x = random_points(40, 10, seed=5).float()
    lowp = _run(bf16_kernel.charts_log_prob_bf16, x, params, log_alpha, 0.3)
    full = _run(bf16_kernel.charts_log_prob, x, params, log_alpha, 0.3)
    for a, b in zip(lowp, full):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_bf16_public_function_autograd_and_opcheck(bf16_kernel):
    params, log_alpha = _cast(*random_params(2, 10, 3, 32, 1, seed=6), F32)
    x = random_points(33, 10, seed=7).float().requires_grad_(True)
    total, _, grad = charts_log_prob_fused(x, params, log_alpha, 0.3, precision="bfloat16")
    (auto,) = torch.autograd.grad(total.sum(), x)
    torch.testing.assert_close(auto, grad)
    args = (x.detach().requires_grad_(True), params["center"], params["basis"], params["scale"],
            mlp_weight_list(params, "encoder"), mlp_weight_list(params, "decoder"), log_alpha, 0.3, True)
    torch.library.opcheck(torch.ops.patchreg.charts_log_prob_bf16.default, args)


def test_bf16_chart_prior_close_to_float32(bf16_kernel):
    model = _wide_model()  # decoder width 32: a multiple of 32, so the AMX path runs
    x = torch.rand(1, 1, 24, 24)
    values = {}
    for precision in ("float32", "bfloat16"):
        prior = ChartPrior(model, top_charts=2, precision=precision)
        xr = x.clone().requires_grad_(True)
        r = prior.nll(xr)
        r.sum().backward()
        values[precision] = (r.detach(), xr.grad)
    (r32, g32), (r16, g16) = values["float32"], values["bfloat16"]
    assert float((r16 - r32).abs().max()) < 1e-2
    assert float((g16 - g32).norm() / g32.norm()) < 1e-2
    assert not torch.equal(g16, g32)


def _wide_model():
    from patchreg.charts import build_mixture
    from patchreg.charts.seeding import seed_charts
    from patchreg.priors import PatchCharts

    torch.manual_seed(0)
    mixture = build_mixture("fif", 3, 15, 3, "mlp", width=32, n_blocks=1, sigma=0.1, sigma_per_chart=True)
    gen = torch.Generator().manual_seed(0)
    points = 0.3 * torch.randn(400, 15, generator=gen)
    seed_charts(mixture, points, gen)
    model = PatchCharts(mixture, 4).float()
    model.fit_selector(points)
    return model


def test_bad_precision_is_refused():
    params, log_alpha = _cast(*random_params(2, 10, 3, 32, 1), F32)
    x = random_points(4, 10).float()
    with pytest.raises(ValueError, match="precision must be one of"):
        charts_log_prob_fused(x, params, log_alpha, 0.3, precision="float16")
    with pytest.raises(ValueError, match="precision must be one of"):
        ChartPrior(_wide_model(), precision="half")


def test_bf16_refuses_float64_and_a_disabled_cpu(bf16_kernel, monkeypatch):
    params, log_alpha = random_params(2, 10, 3, 32, 1)
    with pytest.raises(TypeError, match="float32"):
        charts_log_prob_fused(random_points(4, 10), params, log_alpha, 0.3, precision="bfloat16")
    prior = ChartPrior(_wide_model(), precision="bfloat16")
    with pytest.raises(TypeError, match="float32"):
        prior.nll(torch.rand(1, 1, 8, 8, dtype=F64))
    monkeypatch.setenv("PATCHREG_DISABLE_AMX", "1")
    assert not charts_bf16_supported()
    with pytest.raises(ValueError, match="AMX"):
        ChartPrior(_wide_model(), precision="bfloat16")
    with pytest.raises(RuntimeError, match="AMX"):
        _run(bf16_kernel.charts_log_prob_bf16, random_points(4, 10).float(), *_cast(params, log_alpha, F32), 0.3)


def test_bf16_interleaved_with_onednn_amx_matmuls(bf16_kernel):
    """Tile configuration is per thread and shared with oneDNN's AMX matmuls: each side loads its own
    before use, so alternating them changes neither's results."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(256, 512, generator=g).bfloat16()
    b = torch.randn(512, 256, generator=g).bfloat16()
    first = a @ b
    params, log_alpha = _cast(*random_params(2, 12, 4, 64, 1, seed=8), F32)
    x = random_points(70, 12, seed=9).float()
    lp_first = _run(bf16_kernel.charts_log_prob_bf16, x, params, log_alpha, 0.4)
    for _ in range(3):
        torch.testing.assert_close(a @ b, first, atol=0, rtol=0)
        again = _run(bf16_kernel.charts_log_prob_bf16, x, params, log_alpha, 0.4)
        for u, v in zip(again, lp_first):
            torch.testing.assert_close(u, v, atol=0, rtol=0)
