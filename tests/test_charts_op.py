"""The fused chart-mixture op (csrc/charts_cpu.cpp, patchreg/ops/charts.py) against the
pure-PyTorch reference patchreg.charts.charts_log_prob (values and autograd gradients)."""

from __future__ import annotations

import math

import pytest
import torch

import patchreg
from patchreg.charts import build_mixture, charts_log_prob, stack_mlp_charts
from patchreg.ops import charts as charts_ops
from patchreg.ops.charts import charts_log_prob_fused, mlp_weight_list

F64 = torch.float64


@pytest.fixture
def kernels():
    """The compiled op (skips when the extension is not in use or lacks it)."""
    if not (patchreg.extension_available() and charts_ops.kernels_compiled()):
        pytest.skip("the fused chart kernel is not compiled/loaded")
    charts_ops._register()
    return torch.ops.patchreg


@pytest.fixture(params=["avx512", "avx2", "portable"])
def cpu_path(request, monkeypatch):
    """Runs a test with the AVX-512 and the AVX2 loops (where the CPU has them; otherwise the next
    path down runs) and with the portable loops."""
    monkeypatch.setenv("PATCHREG_DISABLE_AVX2", "1" if request.param == "portable" else "0")
    monkeypatch.setenv("PATCHREG_DISABLE_AVX512", "0" if request.param == "avx512" else "1")
    return request.param


def _mlp(prefix, K, n_in, n_out, width, n_blocks, g, dtype):
    def w(*shape):
        return torch.randn(K, *shape, generator=g, dtype=F64).to(dtype) * (1.3 / math.sqrt(shape[-1]))

    def b(size):
        return torch.randn(K, size, generator=g, dtype=F64).to(dtype) * 0.3

    out = {f"{prefix}.input.weight": w(width, n_in), f"{prefix}.input.bias": b(width)}
    for i in range(n_blocks):
        for j in range(2):
            out[f"{prefix}.blocks.{i}.{j}.weight"] = w(width, width)
            out[f"{prefix}.blocks.{i}.{j}.bias"] = b(width)
    out[f"{prefix}.output.weight"] = w(n_out, width)
    out[f"{prefix}.output.bias"] = b(n_out)
    return out


def random_params(K, n, d, width, n_blocks, dec_width=None, dec_blocks=None, seed=0, dtype=F64):
    """A stack_mlp_charts-like dict with random frames (orthogonal bases) and weights, and log_alpha."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(K, n, n, generator=g, dtype=F64))[0]
    params = {
        "center": torch.randn(K, n, generator=g, dtype=F64),
        "basis": basis,
        "scale": torch.rand(K, generator=g, dtype=F64) + 0.5,
    }
    params.update(_mlp("encoder", K, n, d, width, n_blocks, g, F64))
    params.update(_mlp("decoder", K, d, n, dec_width or width, n_blocks if dec_blocks is None else dec_blocks, g, F64))
    log_alpha = torch.log_softmax(torch.randn(K, generator=g, dtype=F64), 0)
    return {k: v.to(dtype) for k, v in params.items()}, log_alpha.to(dtype)


def random_points(B, n, seed=1, dtype=F64):
    return torch.randn(B, n, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def reference(x, params, log_alpha, sigma):
    """(log p, log p_k, autograd d log p / dx) of the reference."""
    xr = x.detach().clone().requires_grad_(True)
    total, chart = charts_log_prob(xr, params, log_alpha, sigma, return_chart_log_probs=True)
    (grad,) = torch.autograd.grad(total.sum(), xr)
    return total.detach(), chart.detach(), grad


def run_op(ops, x, params, log_alpha, sigma, compute_grad=True):
    return ops.charts_log_prob(
        x, params["center"], params["basis"], params["scale"], mlp_weight_list(params, "encoder"),
        mlp_weight_list(params, "decoder"), log_alpha, sigma, compute_grad,
    )


def assert_close_rel(actual, expected, rtol):
    """|a - e| <= rtol * (1 + max|e|): relative to the output's scale (log-densities reach 1e3)."""
    scale = 1 + expected.abs().max().item() if expected.numel() else 1
    err = (actual - expected).abs().max().item() if expected.numel() else 0
    assert err <= rtol * scale, f"max error {err:.3g} > {rtol:g} * {scale:.3g}"


# --- kernel vs reference ---------------------------------------------------------------------

CASES = [  # K, n, d, width, n_blocks, B (B = 37, 65, 70: not whole blocks of 32)
    (1, 2, 1, 4, 1, 1),
    (3, 5, 2, 16, 2, 37),
    (2, 4, 1, 8, 1, 65),
    (4, 9, 3, 13, 0, 70),
    (2, 6, 5, 16, 3, 33),
    (5, 36, 4, 24, 2, 40),
]


@pytest.mark.parametrize("K,n,d,width,n_blocks,B", CASES)
def test_kernel_matches_reference_float64(kernels, cpu_path, K, n, d, width, n_blocks, B):
    params, log_alpha = random_params(K, n, d, width, n_blocks, seed=B)
    x = random_points(B, n, seed=K)
    sigma = 0.4
    r_total, r_chart, r_grad = reference(x, params, log_alpha, sigma)
    total, chart, grad = run_op(kernels, x, params, log_alpha, sigma)
    assert total.shape == (B,) and chart.shape == (B, K) and grad.shape == (B, n)
    assert_close_rel(total, r_total, 1e-11)
    assert_close_rel(chart, r_chart, 1e-11)
    assert_close_rel(grad, r_grad, 1e-10)
    total2, chart2, empty = run_op(kernels, x, params, log_alpha, sigma, compute_grad=False)
    assert torch.equal(total2, total) and torch.equal(chart2, chart) and empty.shape == (B, 0)


def check_other_widths_blocks_and_sigma(run):
    """Encoder and decoder of different widths and depths, small sigma (large residual terms)."""
    params, log_alpha = random_params(3, 6, 2, 10, 2, dec_width=7, dec_blocks=1, seed=5)
    x = random_points(45, 6)
    r_total, r_chart, r_grad = reference(x, params, log_alpha, 0.05)
    total, chart, grad = run(x, params, log_alpha, 0.05)
    assert_close_rel(total, r_total, 1e-11)
    assert_close_rel(chart, r_chart, 1e-11)
    assert_close_rel(grad, r_grad, 1e-10)


def test_kernel_other_widths_blocks_and_sigma(kernels, cpu_path):
    check_other_widths_blocks_and_sigma(lambda *args: run_op(kernels, *args))


def test_kernel_matches_chart_mixture_model(kernels):
    # realistic stacked parameters: a FIF ChartMixture with MLP charts, frames from data (as tests/test_charts.py)
    model = build_mixture("fif", 3, 4, 2, width=16).to(F64)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 0.3)
        for chart in model.charts:
            chart.set_frame(torch.randn(30, 4, generator=g, dtype=F64))
        model.log_alpha.copy_(torch.log(torch.tensor([0.2, 0.5, 0.3], dtype=F64)))
    x = random_points(50, 4).requires_grad_(True)
    total, chart, grad = charts_log_prob_fused(x, stack_mlp_charts(model), model.log_alpha, model.sigma)
    expected = model.log_prob(x)
    (expected_grad,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(total, expected, rtol=1e-9, atol=1e-7)
    torch.testing.assert_close(chart, model.chart_log_probs(x), rtol=1e-9, atol=1e-7)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-6)


def test_chart_mixture_uses_the_kernel_without_grad(kernels):
    """ChartMixture.chart_log_probs takes the fused path under no_grad (extension backend) and
    gives the per-chart numbers; with grad, or with the overlap-scaled prior, it does not."""

    model = build_mixture("fif", 3, 4, 2, width=16).to(F64)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for chart in model.charts:
            chart.set_frame(torch.randn(30, 4, generator=g, dtype=F64))
    x = random_points(40, 4)
    with patchreg.use_backend("extension"), torch.no_grad():
        fused = model._fused_chart_log_probs(x, model.sigma, 1.0)
        assert fused is not None and model._fused_chart_log_probs(x, model.sigma, 1.5) is None
        via_model = model.chart_log_probs(x)
    with patchreg.use_backend("reference"), torch.no_grad():
        assert model._fused_chart_log_probs(x, model.sigma, 1.0) is None
        per_chart = model.chart_log_probs(x)
    torch.testing.assert_close(fused, per_chart, rtol=1e-9, atol=1e-7)
    torch.testing.assert_close(via_model, per_chart, rtol=1e-9, atol=1e-7)
    with patchreg.use_backend("extension"):
        assert model._fused_chart_log_probs(x, model.sigma, 1.0) is None  # parameters require grad


def check_float32_close_to_float64(run):
    """run(x, params, log_alpha, sigma) -> (log p, log p_k, grad): float32 within rounding of float64."""
    params, log_alpha = random_params(6, 12, 3, 32, 2, seed=3)
    x = random_points(70, 12)
    total, chart, grad = run(x, params, log_alpha, 0.3)
    p32 = {k: v.float() for k, v in params.items()}
    total32, chart32, grad32 = run(x.float(), p32, log_alpha.float(), 0.3)
    assert total32.dtype == chart32.dtype == grad32.dtype == torch.float32
    assert_close_rel(total32.double(), total, 2e-5)
    assert_close_rel(chart32.double(), chart, 2e-5)
    assert_close_rel(grad32.double(), grad, 1e-4)


def test_kernel_float32_close_to_float64(kernels, cpu_path):
    check_float32_close_to_float64(lambda *args: run_op(kernels, *args))


def test_kernel_threads_do_not_change_results(kernels):
    params, log_alpha = random_params(4, 10, 3, 32, 2, seed=4)
    x = random_points(300, 10)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_op(kernels, x, params, log_alpha, 0.3)
        torch.set_num_threads(2)
        two = run_op(kernels, x, params, log_alpha, 0.3)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def check_empty_batch_and_singular_jacobian(run):
    params, log_alpha = random_params(2, 5, 2, 8, 1)
    total, chart, grad = run(random_points(0, 5), params, log_alpha, 0.3)
    assert total.shape == (0,) and chart.shape == (0, 2) and grad.shape == (0, 5)
    params["decoder.output.weight"] = torch.zeros_like(params["decoder.output.weight"])  # J = 0
    total, chart, grad = run(random_points(3, 5), params, log_alpha, 0.3)
    assert torch.isnan(chart).all() and torch.isnan(total).all()  # the reference raises instead


def test_kernel_empty_batch_and_singular_jacobian(kernels):
    check_empty_batch_and_singular_jacobian(lambda *args: run_op(kernels, *args))


# --- one thread per (point, chart): the CUDA kernel, and its thread program run on the CPU --------
# csrc/charts_thread.h is compiled for the GPU (charts_cuda.cu) and for the host as the test-only
# op charts_log_prob_simt, so that machines without a GPU still check the CUDA kernel's arithmetic.

THREAD_CASES = CASES + [(3, 20, 9, 12, 1, 20)]  # d = 9: more tangent columns than one register tile


_OP_NAME = "charts_log_prob"


def _has_cuda_kernel():
    return hasattr(torch.ops.patchreg, _OP_NAME) and torch._C._dispatch_has_kernel_for_dispatch_key(
        "patchreg::" + _OP_NAME, "CUDA")


@pytest.fixture(params=["simt-on-cpu", "cuda"])
def thread_impl(request, kernels):
    if request.param == "cuda" and not (torch.cuda.is_available() and _has_cuda_kernel()):
        pytest.skip("needs a CUDA device and an extension built with CUDA kernels")
    return request.param


def run_thread_impl(impl, x, params, log_alpha, sigma, compute_grad=True):
    """The CUDA kernel (impl "cuda") or its thread program on the CPU; results on the CPU."""
    device = "cuda" if impl == "cuda" else "cpu"
    op = torch.ops.patchreg.charts_log_prob if impl == "cuda" else torch.ops.patchreg.charts_log_prob_simt
    p = {k: v.to(device) for k, v in params.items()}
    out = op(x.to(device), p["center"], p["basis"], p["scale"], mlp_weight_list(p, "encoder"),
             mlp_weight_list(p, "decoder"), log_alpha.to(device), sigma, compute_grad)
    return tuple(o.cpu() for o in out)


@pytest.mark.parametrize("K,n,d,width,n_blocks,B", THREAD_CASES)
def test_thread_program_matches_reference_float64(thread_impl, K, n, d, width, n_blocks, B):
    params, log_alpha = random_params(K, n, d, width, n_blocks, seed=B)
    x = random_points(B, n, seed=K)
    r_total, r_chart, r_grad = reference(x, params, log_alpha, 0.4)
    total, chart, grad = run_thread_impl(thread_impl, x, params, log_alpha, 0.4)
    assert total.shape == (B,) and chart.shape == (B, K) and grad.shape == (B, n)
    assert_close_rel(total, r_total, 1e-11)
    assert_close_rel(chart, r_chart, 1e-11)
    assert_close_rel(grad, r_grad, 1e-10)
    total2, chart2, empty = run_thread_impl(thread_impl, x, params, log_alpha, 0.4, compute_grad=False)
    assert_close_rel(total2, total, 1e-13)
    assert torch.equal(chart2, chart) and empty.shape == (B, 0)


def test_thread_program_other_widths_blocks_and_sigma(thread_impl):
    check_other_widths_blocks_and_sigma(lambda *args: run_thread_impl(thread_impl, *args))


def test_thread_program_chunks_of_points(thread_impl, monkeypatch):
    # a scratch budget of a few points per launch: many launches, the same numbers
    params, log_alpha = random_params(3, 8, 2, 12, 1, seed=7)
    x = random_points(50, 8)
    whole = run_thread_impl(thread_impl, x, params, log_alpha, 0.3)
    monkeypatch.setenv("PATCHREG_CHARTS_SCRATCH", "4000")  # values; about 3 points per launch here
    chunked = run_thread_impl(thread_impl, x, params, log_alpha, 0.3)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_thread_program_float32_close_to_float64(thread_impl):
    check_float32_close_to_float64(lambda *args: run_thread_impl(thread_impl, *args))


def test_thread_program_empty_batch_and_singular_jacobian(thread_impl):
    check_empty_batch_and_singular_jacobian(lambda *args: run_thread_impl(thread_impl, *args))


def test_thread_program_opcheck(kernels):
    params, log_alpha = random_params(2, 4, 2, 6, 1)
    x = random_points(5, 4)
    args = (x, params["center"], params["basis"], params["scale"], mlp_weight_list(params, "encoder"),
            mlp_weight_list(params, "decoder"), log_alpha, 0.5, True)
    torch.library.opcheck(torch.ops.patchreg.charts_log_prob_simt.default, args)


def test_cuda_public_function_autograd_and_opcheck(kernels):
    if not (torch.cuda.is_available() and _has_cuda_kernel()):
        pytest.skip("needs a CUDA device and an extension built with CUDA kernels")
    params, log_alpha = random_params(3, 5, 2, 16, 2)
    p = {k: v.cuda() for k, v in params.items()}
    x = random_points(20, 5).cuda().requires_grad_(True)
    with patchreg.use_backend("extension"):
        total, chart, grad = charts_log_prob_fused(x, p, log_alpha.cuda(), 0.4)
    (back,) = torch.autograd.grad(total.sum(), x)
    torch.testing.assert_close(back, grad)
    r_total, _, r_grad = reference(x.detach().cpu(), params, log_alpha, 0.4)
    assert_close_rel(total.detach().cpu(), r_total, 1e-11)
    assert_close_rel(grad.cpu(), r_grad, 1e-10)
    args = (x, p["center"], p["basis"], p["scale"], mlp_weight_list(p, "encoder"), mlp_weight_list(p, "decoder"),
            log_alpha.cuda(), 0.5, True)
    torch.library.opcheck(torch.ops.patchreg.charts_log_prob.default, args)


def test_cuda_kernel_bad_device_mix(kernels):
    if not (torch.cuda.is_available() and _has_cuda_kernel()):
        pytest.skip("needs a CUDA device and an extension built with CUDA kernels")
    params, log_alpha = random_params(2, 4, 2, 6, 1)
    x = random_points(5, 4).cuda()
    p = {k: v.cuda() for k, v in params.items()}
    with pytest.raises(ValueError, match="log_alpha is on"):
        torch.ops.patchreg.charts_log_prob(x, p["center"], p["basis"], p["scale"], mlp_weight_list(p, "encoder"),
                                           mlp_weight_list(p, "decoder"), log_alpha, 0.5, True)


# --- public function: dispatch, autograd, registration -------------------------------------------


def test_public_function_backends_agree_and_autograd(kernels):
    params, log_alpha = random_params(3, 5, 2, 16, 2)
    x = random_points(20, 5).requires_grad_(True)
    total, chart, grad = charts_log_prob_fused(x, params, log_alpha, 0.4)
    assert total.requires_grad and not chart.requires_grad and not grad.requires_grad
    (back,) = torch.autograd.grad((total * torch.arange(20, dtype=F64)).sum(), x)
    torch.testing.assert_close(back, torch.arange(20, dtype=F64)[:, None] * grad)
    with patchreg.use_backend("reference"):
        r_total, r_chart, r_grad = charts_log_prob_fused(x, params, log_alpha, torch.tensor(0.4, dtype=F64))
    torch.testing.assert_close(total, r_total, rtol=1e-11, atol=1e-10)
    torch.testing.assert_close(grad, r_grad, rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        _, _, empty = charts_log_prob_fused(x, params, log_alpha, 0.4, compute_grad=False)
    assert empty.shape == (20, 0)


def test_public_function_gradcheck(kernels):
    params, log_alpha = random_params(2, 4, 2, 6, 1)
    x = random_points(3, 4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: charts_log_prob_fused(v, params, log_alpha, 0.5)[0], (x,))


def test_parameter_gradients_use_the_reference(kernels):
    params, log_alpha = random_params(2, 4, 2, 6, 1)
    params["decoder.output.bias"] = params["decoder.output.bias"].clone().requires_grad_(True)
    x = random_points(5, 4)
    total, _, grad = charts_log_prob_fused(x, params, log_alpha, 0.5)
    (g_bias,) = torch.autograd.grad(total.sum(), params["decoder.output.bias"])
    assert g_bias.abs().sum() > 0
    torch.testing.assert_close(grad, reference(x, params, log_alpha, 0.5)[2])


def test_opcheck(kernels):
    params, log_alpha = random_params(2, 4, 2, 6, 1)
    x = random_points(5, 4).requires_grad_(True)
    args = (x, params["center"], params["basis"], params["scale"], mlp_weight_list(params, "encoder"),
            mlp_weight_list(params, "decoder"), log_alpha, 0.5, True)
    torch.library.opcheck(torch.ops.patchreg.charts_log_prob.default, args)


def test_backward_without_grad_raises(kernels):
    params, log_alpha = random_params(2, 4, 2, 6, 1)
    x = random_points(5, 4).requires_grad_(True)
    total, _, _ = run_op(kernels, x, params, log_alpha, 0.5, compute_grad=False)
    with pytest.raises(RuntimeError, match="compute_grad=False"):
        total.sum().backward()


# --- bad inputs ---------------------------------------------------------------------------------


def _bad_cases():
    params, log_alpha = random_params(2, 4, 2, 6, 1)
    x = random_points(5, 4)

    def edit(key, value):
        return x, {**params, key: value}, log_alpha, 0.5

    return [
        ("x must be 2-D", ValueError, (x[0], params, log_alpha, 0.5)),
        ("x.dtype", TypeError, (x.long(), params, log_alpha, 0.5)),
        ("center", ValueError, edit("center", params["center"][:, :3])),
        ("basis", ValueError, edit("basis", params["basis"][:, :, :3])),
        ("scale", ValueError, edit("scale", params["scale"][:1])),
        ("log_alpha", ValueError, (x, params, log_alpha[:1], 0.5)),
        ("log_alpha.dtype", TypeError, (x, params, log_alpha.float(), 0.5)),
        ("input.weight", ValueError, edit("encoder.input.weight", params["encoder.input.weight"][:, :, :3])),
        ("blocks.0.1.weight", ValueError, edit("decoder.blocks.0.1.weight", params["decoder.blocks.0.1.weight"][:, :5])),
        ("blocks.0.0.bias", TypeError, edit("encoder.blocks.0.0.bias", params["encoder.blocks.0.0.bias"].float())),
        ("output.bias", ValueError, edit("decoder.output.bias", params["decoder.output.bias"][:, :3])),
        ("latent dimension", ValueError, edit("encoder.output.weight", params["encoder.output.weight"][:, :0])),
        ("sigma", ValueError, (x, params, log_alpha, 0.0)),
        ("sigma", ValueError, (x, params, log_alpha, -1.0)),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_inputs_name_the_argument(kernels, case):
    match, error, (x, params, log_alpha, sigma) = _bad_cases()[case]
    with pytest.raises(error, match=match):
        charts_log_prob_fused(x, params, log_alpha, sigma)
    if match == "latent dimension":  # an empty output.weight: the op's shape checks fire first
        return
    with pytest.raises(error, match=match):  # the op's own checks (direct torch.ops calls)
        run_op(kernels, x, params, log_alpha, sigma)


def test_bad_inputs_of_the_op_itself(kernels):
    params, log_alpha = random_params(2, 4, 2, 6, 1)
    x = random_points(5, 4)
    enc, dec = mlp_weight_list(params, "encoder"), mlp_weight_list(params, "decoder")
    c, b, s = params["center"], params["basis"], params["scale"]
    with pytest.raises(ValueError, match=r"encoder must hold 4 \+ 4 \* n_blocks"):
        kernels.charts_log_prob(x, c, b, s, enc[:-1], dec, log_alpha, 0.5, True)
    with pytest.raises(ValueError, match=r"center must have shape \(K, n\) with K >= 1"):
        kernels.charts_log_prob(x, c[:0], b[:0], s[:0], [t[:0] for t in enc], [t[:0] for t in dec], log_alpha[:0], 0.5, True)
    with pytest.raises(ValueError, match=r"1 <= d < n"):  # d = n
        p2, la2 = random_params(2, 4, 4, 6, 1)
        run_op(kernels, x, p2, la2, 0.5)
    with pytest.raises(ValueError, match="sigma"):
        kernels.charts_log_prob(x, c, b, s, enc, dec, log_alpha, float("inf"), True)
    with pytest.raises(TypeError, match=r"decoder\[0\] \(input.weight\).dtype"):
        kernels.charts_log_prob(x, c, b, s, enc, [dec[0].float(), *dec[1:]], log_alpha, 0.5, True)
    with pytest.raises(ValueError, match="missing"):
        charts_log_prob_fused(x, {k: v for k, v in params.items() if k != "decoder.output.bias"}, log_alpha, 0.5)
