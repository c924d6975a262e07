"""The chart prior (patchreg.priors.chart_prior) and its patch model (patchreg.priors.patch_charts).

Models here are small and untrained (random residual MLP charts with frames seeded on random
patches): the tests check the arithmetic and the plumbing, not the quality of a trained prior.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import patchreg
from patchreg.charts import build_mixture, stack_mlp_charts
from patchreg.charts.seeding import seed_charts
from patchreg.charts.stacked import charts_log_prob as stacked_reference
from patchreg.ops.charts import kernels_compiled as charts_kernels_compiled
from patchreg.priors import ChartPrior, PatchCharts, chart_denoise_patches, charts_restore, mean_free_basis
from patchreg.priors.chart_prior import _PerChart, chart_patch_log_prob, is_fusable, select_charts


def _model(patch_size=3, K=4, d=2, dtype=torch.float64, seed=0, selector=True, family="fif") -> PatchCharts:
    torch.manual_seed(seed)
    n = patch_size**2 - 1
    mixture = build_mixture(family, K, n, d, "mlp", width=8, n_blocks=1, sigma=0.1, sigma_per_chart=True,
                            coupling_blocks=2).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    points = 0.3 * torch.randn(400, n, generator=gen, dtype=dtype)
    seed_charts(mixture, points, gen)
    with torch.no_grad():
        mixture.log_sigma.copy_(torch.log(torch.linspace(0.05, 0.3, K, dtype=dtype)))
        mixture.log_alpha.copy_(torch.log_softmax(torch.randn(K, generator=gen, dtype=dtype), 0))
    model = PatchCharts(mixture, patch_size).to(dtype)
    if selector:
        model.fit_selector(points)
    return model


def _exact_log_prob(model: PatchCharts, coords: torch.Tensor) -> torch.Tensor:
    """All K charts at once by the stacked pure-torch reference, per-chart sigma as a (K,) tensor."""
    params = stack_mlp_charts(model.mixture)
    return stacked_reference(coords, params, model.mixture.log_alpha, model.mixture.sigma)


def test_mean_free_basis_is_orthonormal_and_drops_the_mean():
    B = mean_free_basis(36)
    assert B.shape == (36, 35)
    torch.testing.assert_close(B.T @ B, torch.eye(35, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(B.T @ torch.ones(36, dtype=torch.float64), torch.zeros(35, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    x = torch.randn(5, 36, dtype=torch.float64)
    centred = x - x.mean(1, keepdim=True)
    torch.testing.assert_close((x @ B) @ B.T, centred)  # coordinates keep everything but the mean


@pytest.mark.parametrize("backend", ["extension", "reference"])
def test_all_charts_kept_is_exact(backend):
    model = _model()
    coords = 0.3 * torch.randn(200, 8, dtype=torch.float64)
    with patchreg.use_backend(backend):
        log_p, grad = chart_patch_log_prob(model, coords, top_charts=None)
    xr = coords.clone().requires_grad_(True)
    exact = _exact_log_prob(model, xr)
    (exact_grad,) = torch.autograd.grad(exact.sum(), xr)
    torch.testing.assert_close(log_p, exact.detach(), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grad, exact_grad, atol=1e-9, rtol=1e-9)


def test_keeping_every_chart_through_the_selector_equals_all_charts():
    model = _model()
    coords = 0.3 * torch.randn(100, 8, dtype=torch.float64)
    full, full_grad = chart_patch_log_prob(model, coords, top_charts=None)
    assert select_charts(model, coords, model.n_charts) is None
    sel = torch.arange(model.n_charts).expand(100, -1)  # an explicit selection of every chart, in any order
    same, same_grad = chart_patch_log_prob(model, coords, selection=sel.flip(1).contiguous())
    torch.testing.assert_close(same, full, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(same_grad, full_grad, atol=1e-12, rtol=1e-12)


def test_selection_is_a_lower_bound_and_matches_the_kept_charts():
    model = _model(K=6)
    coords = 0.3 * torch.randn(300, 8, dtype=torch.float64)
    full, _ = chart_patch_log_prob(model, coords, top_charts=None)
    top2, _ = chart_patch_log_prob(model, coords, top_charts=2)
    assert bool((top2 <= full + 1e-12).all())  # dropping charts can only lower the mixture density
    # exact over the kept charts: logsumexp of alpha_k p_k over the selection
    chart_lp = stacked_reference(coords, stack_mlp_charts(model.mixture), model.mixture.log_alpha,
                                 model.mixture.sigma, return_chart_log_probs=True)[1]
    sel = select_charts(model, coords, 2)
    kept = torch.logsumexp((model.mixture.log_alpha + chart_lp).gather(1, sel), dim=1)
    torch.testing.assert_close(top2, kept, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("n_patches", [None, 50])
def test_nll_and_gradient_match_the_reference_path_in_float64(n_patches):
    model = _model()
    x = torch.rand(2, 1, 12, 11, dtype=torch.float64)
    values, grads = [], []
    for backend in ("extension", "reference"):
        prior = ChartPrior(model, n_patches=n_patches, top_charts=2, seed=3)
        xr = x.clone().requires_grad_(True)
        with patchreg.use_backend(backend):
            r = prior.nll(xr)
            r.sum().backward()
        values.append(r.detach())
        grads.append(xr.grad)
    assert values[0].shape == (2,)
    torch.testing.assert_close(values[0], values[1], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-10, rtol=1e-10)


def _smooth_image_and_noisy():
    """(clean, noisy): a smoothed random 20x20 image and it plus noise of sigma 0.1, seeded."""
    gen = torch.Generator().manual_seed(0)
    clean = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 20, 20, generator=gen, dtype=torch.float64), 3, 1, 1)
    return clean, clean + 0.1 * torch.randn(clean.shape, generator=gen, dtype=torch.float64)


_CUDA = pytest.mark.skipif(not (torch.cuda.is_available() and charts_kernels_compiled()),
                           reason="needs a CUDA device and an extension built with CUDA kernels")


@_CUDA
@pytest.mark.parametrize("n_patches", [None, 50])
def test_nll_and_gradient_on_cuda_equal_cpu(n_patches):
    """The prior's CUDA path (the image op's gather, the CUDA chart kernel, the fused aggregation) against the CPU
    extension, float64, the same random patch positions (drawn on the CPU generator)."""
    model = _model()
    x = torch.rand(2, 1, 12, 11, dtype=torch.float64)
    values, grads = [], []
    for device in ("cpu", "cuda"):
        prior = ChartPrior(copy.deepcopy(model).to(device), n_patches=n_patches, top_charts=2, seed=3)
        xr = x.to(device).requires_grad_(True)
        r = prior.nll(xr)
        r.sum().backward()
        values.append(r.detach().cpu())
        grads.append(xr.grad.cpu())
    torch.testing.assert_close(values[1], values[0], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-9, rtol=1e-9)


@_CUDA
def test_charts_restore_on_cuda_equals_cpu():
    model = _model()
    _, noisy = _smooth_image_and_noisy()
    cpu = charts_restore(noisy, None, model, 0.1)
    cuda = charts_restore(noisy.cuda(), None, copy.deepcopy(model).cuda(), 0.1)
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-7, rtol=1e-7)


def test_nll_equals_patchwise_exact_density():
    model = _model()
    x = torch.rand(1, 1, 9, 10, dtype=torch.float64)
    prior = ChartPrior(model, top_charts=None, reduction="sum")
    patches = patchreg.extract_patches(x, 3)[0]
    expected = -_exact_log_prob(model, patches @ model.basis).sum()
    torch.testing.assert_close(prior.nll(x)[0], expected.detach(), atol=1e-9, rtol=1e-9)


def test_gradcheck_small_image():
    model = _model()
    prior = ChartPrior(model, top_charts=None, stride=2)
    x = torch.rand(1, 1, 7, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: prior.nll(v), (x,), eps=1e-6, atol=1e-6)


def test_bad_inputs_raise_before_work():
    model = _model()
    prior = ChartPrior(model)
    with pytest.raises(ValueError, match="channels"):
        prior.nll(torch.rand(1, 3, 10, 10, dtype=torch.float64))
    with pytest.raises(ValueError, match="smaller than"):
        prior.nll(torch.rand(1, 1, 2, 10, dtype=torch.float64))
    bad = torch.rand(1, 1, 10, 10, dtype=torch.float64)
    bad[0, 0, 3, 3] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        prior.nll(bad)
    with pytest.raises(ValueError, match="x must be 4-D"):
        prior.nll(torch.rand(10, 10, dtype=torch.float64))
    with pytest.raises(ValueError, match="top_charts"):
        ChartPrior(model, top_charts=0)
    with pytest.raises(ValueError, match="selector"):
        ChartPrior(_model(selector=False), top_charts=2)
    with pytest.raises(TypeError, match="PatchCharts"):
        ChartPrior(model.mixture)
    with pytest.raises(ValueError, match="patches must have last dimension 9"):
        model.coords(torch.rand(4, 16, dtype=torch.float64))


def test_checkpoint_round_trip_and_wrong_kind(tmp_path):
    model = _model(dtype=torch.float32)
    path = model.save(tmp_path / "charts.safetensors")
    loaded = PatchCharts.load(path)
    coords = 0.3 * torch.randn(50, 8)
    torch.testing.assert_close(loaded.mixture.log_prob(coords), model.mixture.log_prob(coords))
    torch.testing.assert_close(loaded.selector_means, model.selector_means)
    assert loaded.patch_size == 3
    # a chart mixture on points is not a patch model
    from patchreg.charts import save_mixture

    save_mixture(tmp_path / "points.safetensors", model.mixture)
    with pytest.raises(ValueError, match="not on image patches"):
        PatchCharts.load(tmp_path / "points.safetensors")
    from patchreg.priors import GMM

    GMM(2, 3).save(tmp_path / "gmm.safetensors")
    with pytest.raises(ValueError, match="'gmm' checkpoint, expected 'charts'"):
        PatchCharts.load(tmp_path / "gmm.safetensors")


def test_denoise_patches_shrinks_toward_the_charts_and_keeps_the_mean():
    model = _model()
    gen = torch.Generator().manual_seed(1)
    patches = torch.rand(64, 9, generator=gen, dtype=torch.float64)
    tiny = chart_denoise_patches(model, patches, 1e-12, top_charts=2)
    torch.testing.assert_close(tiny, patches, atol=1e-8, rtol=0)  # no noise: nothing to remove
    out = chart_denoise_patches(model, patches, 0.5, top_charts=None, combine="best")
    torch.testing.assert_close(out.mean(1), patches.mean(1))
    # with noise the estimate moves toward the learned manifolds: smaller residual to the projection
    coords = model.coords(patches)
    mix = model.mixture
    best = mix.assign(coords)
    proj = torch.stack([mix.charts[int(k)].decode(mix.charts[int(k)].encode(c[None]))[0] for k, c in zip(best, coords)])
    before = (coords - proj).norm(dim=1)
    after_coords = model.coords(out)
    assert float((after_coords - proj).norm(dim=1).mean()) < float(before.mean())


def test_charts_restore_denoises_and_validates():
    model = _model()
    clean, noisy = _smooth_image_and_noisy()
    out = charts_restore(noisy, None, model, 0.1)
    assert out.shape == clean.shape and bool(torch.isfinite(out).all())
    assert float(((out - clean) ** 2).mean()) < float(((noisy - clean) ** 2).mean())
    with pytest.raises(ValueError, match="sigma"):
        charts_restore(noisy, None, model, -1.0)
    with pytest.raises(ValueError, match="betas"):
        charts_restore(noisy, None, model, 0.1, betas=[])
    bad = noisy.clone()
    bad[0, 0, 0, 0] = math.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        charts_restore(bad, None, model, 0.1)


def test_train_charts_on_image_patches_cli(tmp_path):
    """`patchreg train charts --data bundled --patch-size 3`: a PatchCharts checkpoint with its selector."""
    from patchreg.cli import main

    out = tmp_path / "pc.safetensors"
    argv = ["train", "charts", "--data", "bundled", "--patch-size", "3", "--charts", "2", "--latent-dim", "2",
            "--steps", "8", "--batch-size", "64", "--width", "8", "--blocks", "1", "--checkpoint-every", "4",
            "--selector-points", "500", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    model = PatchCharts.load(out)
    assert model.patch_size == 3 and model.n_charts == 2 and model.has_selector
    assert model.mixture.sigma.shape == (2,)  # one off-manifold noise level per chart
    r = ChartPrior(model, top_charts=1).nll(torch.rand(1, 1, 16, 16))
    assert r.shape == (1,) and bool(torch.isfinite(r).all())
    assert main(argv + ["--resume"]) == 0  # finished run: resuming is a no-op that keeps the model
    torch.testing.assert_close(PatchCharts.load(out).mixture.log_alpha, model.mixture.log_alpha)


@pytest.mark.parametrize("extra, message", [
    (["--data", "toy:circle", "--patch-size", "3", "--latent-dim", "1"], "--patch-size needs image data"),
    (["--data", "bundled", "--patch-size", "3", "--latent-dim", "8"], "--latent-dim"),
    (["--data", "bundled", "--patch-size", "1", "--latent-dim", "1"], "--patch-size must be"),
    (["--data", "bundled", "--patch-size", "3", "--latent-dim", "2", "--architecture", "conv"], "--architecture mlp"),
    (["--data", "bundled", "--patch-size", "3", "--latent-dim", "2", "--steps", "2"], "--steps must be >= 4"),
])
def test_train_charts_on_patches_rejects_bad_arguments(tmp_path, capsys, extra, message):
    from patchreg.cli import main

    out = tmp_path / "x.safetensors"
    assert main(["train", "charts", "--charts", "2", "--no-progress", "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def _scaled_model():
    model = _model(K=3)
    gen = torch.Generator().manual_seed(4)
    points = 0.3 * torch.randn(300, 8, generator=gen, dtype=torch.float64) * torch.rand(300, 1, generator=gen, dtype=torch.float64)
    history = model.fit_scales(points, [1.0, 0.5, 0.25], n_iter=10, prune=1e-3)
    model.fit_selector(points)
    return model, points, history


def _exact_scale_mixture(model, coords):
    """sum over (k, s) of alpha_{k,s} s^-n p_k(c / s) from the stacked reference, pair by pair."""
    params = stack_mlp_charts(model.mixture)
    n = coords.shape[1]
    terms = []
    for j, s in enumerate(model.scales.tolist()):
        chart_lp = stacked_reference(coords / s, params, model.mixture.log_alpha, model.mixture.sigma,
                                     return_chart_log_probs=True)[1]
        terms.append(model.scale_log_alpha[:, j] + chart_lp - n * math.log(s))
    return torch.logsumexp(torch.cat(terms, dim=1), dim=1)


def test_contrast_scale_mixture_is_exact_with_every_pair():
    model, points, history = _scaled_model()
    assert history[-1] >= history[0]  # EM never lowers the likelihood of its data
    assert model.pairs().shape[0] <= 9 and torch.isfinite(model.pair_log_weights()).all()
    torch.testing.assert_close(model.scale_log_alpha.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    coords = points[:60].clone().requires_grad_(True)
    exact = _exact_scale_mixture(model, coords)
    (exact_grad,) = torch.autograd.grad(exact.sum(), coords)
    for backend in ("extension", "reference"):
        with patchreg.use_backend(backend):
            log_p, grad = chart_patch_log_prob(model, coords.detach(), top_charts=None)
        torch.testing.assert_close(log_p, exact.detach(), atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(grad, exact_grad, atol=1e-9, rtol=1e-9)
    top, _ = chart_patch_log_prob(model, coords.detach(), top_charts=2)
    assert bool((top <= exact.detach() + 1e-12).all())


def test_scale_mixture_survives_a_checkpoint(tmp_path):
    model, points, _ = _scaled_model()
    path = model.to(torch.float32).save(tmp_path / "s.safetensors")
    loaded = PatchCharts.load(path, dtype=torch.float64)
    torch.testing.assert_close(loaded.scales, model.scales.double())
    torch.testing.assert_close(loaded.log_prob(points[:20] @ loaded.basis.T), model.double().log_prob(points[:20] @ model.basis.T))


def test_fit_scales_rejects_bad_scales():
    model = _model()
    with pytest.raises(ValueError, match="scales must be"):
        model.fit_scales(torch.randn(10, 8, dtype=torch.float64), [1.0, -0.5])


def test_eight_by_eight_patches():
    model = _model(patch_size=8, K=2, d=3)
    x = torch.rand(1, 1, 12, 13, dtype=torch.float64)
    prior = ChartPrior(model, top_charts=None, reduction="sum")
    patches = patchreg.extract_patches(x, 8)[0]
    expected = -_exact_log_prob(model, patches @ model.basis).sum()
    torch.testing.assert_close(prior.nll(x)[0], expected.detach(), atol=1e-9, rtol=1e-9)
    out = charts_restore(x, None, model, 0.1)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())


# --- the fast path: per-chart selector scores, two-stage top m, sorted entries, reused buffers ------------


@pytest.mark.parametrize("backend", ["extension", "reference"])
@pytest.mark.parametrize("extra_variance", [0.0, 0.01])
def test_selector_scores_equal_the_pairs_gaussians(backend, extra_variance):
    """selector_scores (per chart, at extra_variance 0) = the GMM op on the P pairs' own Gaussians."""
    from patchreg.ops.gmm import gmm_log_prob

    model, points, _ = _scaled_model()
    coords = points[:120] * 1.7
    with patchreg.use_backend(backend):
        fast = model.selector_scores(coords, extra_variance)
        slow = gmm_log_prob(coords, *model.selector_params(torch.float64, extra_variance))
    assert fast.shape == (120, model.pairs().shape[0])
    torch.testing.assert_close(fast, slow, atol=1e-9, rtol=1e-10)


def test_selector_top_is_the_top_m_of_every_pair():
    """The two-stage top m (best charts first) picks the same pairs as a top m over all P pairs, for m up to P."""
    model, points, _ = _scaled_model()
    coords = points[:200] * torch.linspace(0.2, 3.0, 200, dtype=torch.float64)[:, None]
    scores = model.selector_scores(coords)
    P = scores.shape[1]
    assert P > model.n_charts  # some chart keeps several scales, so one chart can fill several of the top m
    for m in range(1, P + 1):
        fast = model.selector_top(coords, m, chunk=64)
        slow = scores.topk(m, dim=1).indices
        assert torch.equal(fast.sort(1).values, slow.sort(1).values), m
    with pytest.raises(ValueError, match="m must be <="):
        model.selector_top(coords, P + 1)


def test_workspace_and_row_chunks_do_not_change_the_result(monkeypatch):
    import patchreg.priors.chart_prior as cp

    model, points, _ = _scaled_model()
    coords = points[:150]
    plain = chart_patch_log_prob(model, coords, top_charts=3)
    workspace = {}
    first = chart_patch_log_prob(model, coords, top_charts=3, workspace=workspace)
    buffers = {k: v.data_ptr() for k, v in workspace.items()}
    again = chart_patch_log_prob(model, coords[:100], top_charts=3, workspace=workspace)
    assert buffers and {k: v.data_ptr() for k, v in workspace.items()} == buffers  # reused, not reallocated
    monkeypatch.setattr(cp, "ENTRY_BUDGET", 3 * 9 * 7)  # 7 rows per chunk
    chunked = chart_patch_log_prob(model, coords, top_charts=3, workspace={})
    for out in (first, chunked):
        torch.testing.assert_close(out[0], plain[0], atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(out[1], plain[1], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(again[1], plain[1][:100], atol=1e-12, rtol=1e-12)


def test_a_nan_chart_value_counts_as_zero_density(monkeypatch):
    """The kernel's NaN (singular J^T J) drops that (patch, pair) entry: -inf log-density, no gradient."""
    import patchreg.priors.chart_prior as cp

    model, points, _ = _scaled_model()
    coords = points[:40]
    sel = select_charts(model, coords, 2)
    exact, exact_grad = chart_patch_log_prob(model, coords, selection=sel)
    poisoned_chart = int(model.pairs()[sel[5, 0], 0])
    run = cp._run_chart

    def poisoned(model_, x, params, k, scales, extra_variance, compute_grad, precision="float32"):
        total, grad = run(model_, x, params, k, scales, extra_variance, compute_grad, precision)
        if k == poisoned_chart:
            total, grad = total.clone(), grad.clone()
            total[0] = math.nan
            grad[0] = math.nan
        return total, grad

    monkeypatch.setattr(cp, "_run_chart", poisoned)
    log_p, grad = chart_patch_log_prob(model, coords, selection=sel)
    assert bool(torch.isfinite(grad).all()) and bool((log_p <= exact + 1e-12).all())
    changed = (log_p != exact).nonzero()[:, 0]
    assert len(changed) == 1  # exactly one patch lost one entry
    row = int(changed[0])
    # that patch's log p and gradient are those of its other kept pair alone
    monkeypatch.setattr(cp, "_run_chart", run)
    singles = [chart_patch_log_prob(model, coords[row : row + 1], selection=sel[row : row + 1, j : j + 1]) for j in range(2)]
    match = [j for j in range(2) if abs(float(singles[j][0]) - float(log_p[row])) < 1e-12]
    assert len(match) == 1
    torch.testing.assert_close(grad[row], singles[match[0]][1][0], atol=1e-12, rtol=1e-12)


def test_old_per_pair_selection_gives_the_same_r(monkeypatch):
    """The benchmark's baseline switch (each pair's own Gaussian by the GMM op) ranks as the per-chart scores."""
    import patchreg.priors.chart_prior as cp

    model, _, _ = _scaled_model()
    x = torch.rand(1, 1, 14, 13, dtype=torch.float64)
    new = ChartPrior(model, top_charts=3).nll(x)
    monkeypatch.setattr(cp, "_SELECT_BY_PAIRS", True)
    old = ChartPrior(model, top_charts=3).nll(x)
    torch.testing.assert_close(new, old, atol=1e-12, rtol=1e-12)


# --- charts the fused kernel does not cover (family "vae"): each chart's own log_prob, by autograd ---------


def _own_log_prob(model: PatchCharts, coords: torch.Tensor) -> torch.Tensor:
    """log sum_k alpha_k p_k(c) from every chart's own (differentiable) log_prob: the formula, chart by chart."""
    mix = model.mixture
    sigma = mix.sigma.expand(model.n_charts)
    per_chart = torch.stack([c.log_prob(coords, mix.prior, sigma[k]) for k, c in enumerate(mix.charts)], dim=-1)
    return torch.logsumexp(mix.log_alpha + per_chart, dim=-1)


def test_generic_path_equals_the_fused_kernel_on_fif_charts():
    model = _model(K=3)
    coords = 0.3 * torch.randn(150, 8, dtype=torch.float64)
    fused, fused_grad = chart_patch_log_prob(model, coords, top_charts=None)
    generic, generic_grad = chart_patch_log_prob(model, coords, top_charts=None, params=_PerChart())
    torch.testing.assert_close(generic, fused, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(generic_grad, fused_grad, atol=1e-9, rtol=1e-9)


def test_vae_chart_prior_is_the_charts_own_density():
    model = _model(family="vae", K=3)
    assert not is_fusable(model) and is_fusable(_model(K=2))
    x = torch.rand(1, 1, 8, 9, dtype=torch.float64)
    prior = ChartPrior(model, top_charts=None, reduction="sum")
    patches = patchreg.extract_patches(x, 3)[0]
    xr = x.clone().requires_grad_(True)
    r = prior.nll(xr)
    r.sum().backward()
    xe = x.clone().requires_grad_(True)
    expected = -_own_log_prob(model, patchreg.extract_patches(xe, 3)[0] @ model.basis).sum()
    expected.backward()
    assert patches.shape[0] == 42
    torch.testing.assert_close(r[0], expected.detach(), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(xr.grad, xe.grad, atol=1e-8, rtol=1e-8)


def test_vae_chart_prior_gradcheck_and_selection():
    model = _model(family="vae", K=3)
    prior = ChartPrior(model, top_charts=None, stride=2)
    x = torch.rand(1, 1, 7, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: prior.nll(v), (x,), eps=1e-6, atol=1e-6)
    coords = 0.3 * torch.randn(60, 8, dtype=torch.float64)
    full, _ = chart_patch_log_prob(model, coords, top_charts=None)
    top1, _ = chart_patch_log_prob(model, coords, top_charts=1)
    assert bool((top1 <= full + 1e-12).all())


def test_vae_charts_restore_denoises():
    model = _model(family="vae", K=3)
    gen = torch.Generator().manual_seed(0)
    clean = torch.full((1, 1, 12, 12), 0.5, dtype=torch.float64)
    y = clean + 0.1 * torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    out = charts_restore(y, None, model, 0.1, top_charts=1)
    assert out.shape == y.shape and bool(torch.isfinite(out).all())
    assert float(((out - clean) ** 2).mean()) < float(((y - clean) ** 2).mean())


def test_train_vae_charts_on_image_patches_cli(tmp_path):
    from patchreg.cli import main

    out = tmp_path / "vae.safetensors"
    argv = ["train", "charts", "--data", "bundled", "--patch-size", "3", "--family", "vae", "--charts", "2",
            "--latent-dim", "2", "--steps", "8", "--batch-size", "64", "--width", "8", "--selector-points", "300",
            "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    model = PatchCharts.load(out)
    assert model.has_selector and not is_fusable(model)
    r = ChartPrior(model, top_charts=1).nll(torch.rand(1, 1, 10, 10))
    assert r.shape == (1,) and bool(torch.isfinite(r).all())


def test_selector_gmm_is_the_selector_on_patches():
    """log N_d(P; B m, B S B^T + f I) of a patch P = log N_n(B^T P; m, S + f I) + log N_1(P's mean; 0, f / d):
    the GMM's component log-densities are the selector's pair scores at extra variance f, up to that term."""
    model, points, _ = _scaled_model()
    floor = 1e-4
    gmm = model.selector_gmm(floor)
    assert gmm.n_components == model.pairs().shape[0]
    gen = torch.Generator().manual_seed(5)
    patches = 0.2 * torch.randn(40, 9, generator=gen, dtype=torch.float64)
    centred = patches - patches.mean(1, keepdim=True)
    got = gmm.component_log_prob(patches)
    scores = model.selector_scores(centred @ model.basis, extra_variance=floor)
    expected = scores - torch.logsumexp(model.scale_log_alpha[torch.isfinite(model.scale_log_alpha)], 0) \
        - 0.5 * math.log(2 * math.pi * floor)
    torch.testing.assert_close(got, expected, atol=1e-8, rtol=1e-8)
    with pytest.raises(ValueError, match="floor"):
        model.selector_gmm(0.0)
