"""Chart mixtures: density formula, Jacobians, prior, responsibilities, stacked reference,
training on a circle, checkpoints and resume, CLI, bad inputs."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from patchreg.charts import (
    CompactLatentPrior, FreeFormChart, TrainConfig, TrainingDiverged, build_mixture, charts_log_prob,
    decoder_jacobian, gram_logdet, load_mixture, stack_mlp_charts, train_mixture,
)
from patchreg.charts.architectures import ConvResNetDecoder, ConvResNetEncoder
from patchreg.charts.coupling import CouplingFlow
from patchreg.charts.mixture import ChartMixture
from patchreg.data.toy_manifolds import Circle
from patchreg.io import save_checkpoint

D64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _randomised(model, std=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return model


# -- latent prior ------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_prior_normalised_and_sampler_matches_density(dim):
    prior = CompactLatentPrior(dim)
    # normalisation by a Riemann sum on a grid covering the support
    side = {1: 4001, 2: 601, 3: 121}[dim]
    axis = torch.linspace(-1.6, 1.6, side, dtype=D64)
    grid = torch.stack(torch.meshgrid(*[axis] * dim, indexing="ij"), -1).reshape(-1, dim)
    mass = prior.log_prob(grid).exp().sum() * (axis[1] - axis[0]) ** dim
    assert mass.item() == pytest.approx(1.0, abs=2e-3 * dim)
    # the sampler's radius distribution: fraction inside the flat part vs the density's
    z = prior.sample(40000, torch.Generator().manual_seed(0), D64)
    inside = (grid.norm(dim=1) < 0.8).to(D64)
    expected = (prior.log_prob(grid).exp() * inside).sum() * (axis[1] - axis[0]) ** dim
    assert (z.norm(dim=1) < 0.8).double().mean().item() == pytest.approx(expected.item(), abs=0.015)


# -- density formula, known answer -----------------------------------------------------------
class _Linear(nn.Module):
    def __init__(self, matrix):
        super().__init__()
        self.register_buffer("matrix", matrix)

    def forward(self, v):
        return v @ self.matrix.T


def test_linear_chart_density_has_closed_form():
    """Decoder D(z) = c + a A z (A orthonormal columns), encoder its least-squares inverse: the chart density is
    p_Z(A^T (x - c) / a) a^-d times a Gaussian of variance sigma^2 across the plane."""
    n, d, a, sigma = 5, 2, 1.7, 0.3
    g = torch.Generator().manual_seed(0)
    A, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=D64))
    c = torch.randn(n, generator=g, dtype=D64)
    chart = FreeFormChart(_Linear(A.T / a), _Linear(a * A), n, d).to(D64)
    chart.center.copy_(c)
    model = ChartMixture([chart], sigma=sigma).to(D64)
    model.log_sigma.fill_(math.log(sigma))  # the float32 default buffer rounded it
    x = c + 0.8 * torch.randn(50, n, generator=g, dtype=D64)
    z = (x - c) @ A / a
    off_plane = ((x - c) - (x - c) @ A @ A.T).pow(2).sum(1)
    prior = CompactLatentPrior(d)
    expected = (prior.log_prob(z) - d * math.log(a) - off_plane / (2 * sigma**2)
                - (n - d) / 2 * math.log(2 * math.pi * sigma**2))
    torch.testing.assert_close(model.log_prob(x), expected, rtol=1e-10, atol=1e-10)
    # projection onto a flat chart is the orthogonal projection onto its plane
    torch.testing.assert_close(model.project(x), c + (x - c) @ A @ A.T)


def test_gram_logdet_and_jacobians_match_brute_force():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 3, generator=g, dtype=D64)
    for model in (_randomised(build_mixture("fif", 1, 7, 3).to(D64)), _randomised(build_mixture("vae", 1, 7, 3).to(D64), 0.1)):
        chart = model.charts[0]
        chart.set_frame(torch.randn(40, 7, generator=g, dtype=D64))
        brute = torch.stack([torch.autograd.functional.jacobian(chart.decode, zi[None])[0, :, 0] for zi in z])
        _, fast = chart.decode_with_jacobian(z)
        torch.testing.assert_close(fast, brute)
        torch.testing.assert_close(decoder_jacobian(chart.decode, z), brute)
        expected = torch.linalg.slogdet(brute.transpose(1, 2) @ brute).logabsdet
        torch.testing.assert_close(gram_logdet(fast), expected)


def test_coupling_flow_inverts():
    flow = _randomised(CouplingFlow(5, 16, 4).to(D64), 0.2)
    x = torch.randn(10, 5, dtype=D64)
    torch.testing.assert_close(flow.inverse(flow(x)), x)
    torch.testing.assert_close(flow(flow.inverse(x)), x)


def test_conv_architecture_shapes_and_pointwise():
    enc, dec = ConvResNetEncoder(4, 8, 8), ConvResNetDecoder(4, 8, 8)
    x = torch.rand(5, 64)
    z = enc(x)
    assert z.shape == (5, 4) and dec(z).shape == (5, 64)
    torch.testing.assert_close(enc(x[:2]), z[:2])  # no batch coupling (no batch norm)
    model = build_mixture("fif", 2, 64, 4, architecture="conv", width=4, n_blocks=1)
    assert model.log_prob(x).shape == (5,)


def test_conv_hand_written_jvp_matches_torch_func():
    g = torch.Generator().manual_seed(3)
    for net, dim_in in ((ConvResNetDecoder(3, 8, 4, 2), 3), (ConvResNetEncoder(3, 8, 4, 2), 64)):
        net = _randomised(net.to(D64), 0.3)
        x = torch.randn(5, dim_in, generator=g, dtype=D64)
        tangents = torch.randn(5, dim_in, 4, generator=g, dtype=D64)
        y, t = net.jvp(x, tangents)
        expected = torch.stack([torch.func.jvp(net, (x,), (tangents[..., j],))[1] for j in range(4)], -1)
        torch.testing.assert_close(y, net(x), rtol=0, atol=0)
        torch.testing.assert_close(t, expected, rtol=1e-10, atol=1e-10)
    # the chart uses them through its frame (a rotated one, to check the frame's factors)
    chart = _randomised(build_mixture("fif", 1, 64, 3, architecture="conv", width=4, n_blocks=1).to(D64), 0.2).charts[0]
    chart.set_frame(torch.rand(20, 64, generator=g, dtype=D64), "pca")
    z = torch.randn(4, 3, generator=g, dtype=D64)
    _, jac = chart.decode_with_jacobian(z)
    torch.testing.assert_close(jac, decoder_jacobian(chart.decode, z), rtol=1e-10, atol=1e-10)
    x, tx = torch.rand(4, 64, generator=g, dtype=D64), torch.randn(4, 64, 2, generator=g, dtype=D64)
    expected = torch.stack([torch.func.jvp(chart.encode, (x,), (tx[..., j],))[1] for j in range(2)], -1)
    z, push = chart.encode_linearized(x)
    torch.testing.assert_close(z, chart.encode(x), rtol=0, atol=0)
    torch.testing.assert_close(push(tx), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(chart.encode_jvp(x, tx)[1], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_fif_surrogate_forward_and_reverse_mode_agree(architecture):
    """The Hutchinson term v^T f'(x) stopgrad(g'(z) v) by forward mode (encoder jvp) and by reverse mode
    (create_graph vjp, Sorrenson et al.): same loss, same parameter gradients."""
    n, d = (64, 3) if architecture == "conv" else (5, 2)
    model = _randomised(build_mixture("fif", 1, n, d, architecture=architecture, width=4, n_blocks=1).to(D64), 0.2)
    chart = model.charts[0]
    x = torch.rand(6, n, dtype=D64)
    chart.set_frame(x, model.config["align"])
    results = []
    for mode in ("jvp", "vjp"):
        chart.surrogate_mode = mode
        loss = chart.training_loss(x, model.prior, 0.1, generator=torch.Generator().manual_seed(0))
        results.append((loss, torch.autograd.grad(loss.sum(), list(chart.parameters()))))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=1e-10)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


# -- mixture ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_mixture():
    model = _randomised(build_mixture("fif", 3, 4, 2, width=16).to(D64))
    g = torch.Generator().manual_seed(2)
    for chart in model.charts:
        chart.set_frame(torch.randn(30, 4, generator=g, dtype=D64))
    model.log_alpha.copy_(torch.log(torch.tensor([0.2, 0.5, 0.3], dtype=D64)))
    return model


def test_log_prob_is_logsumexp_and_responsibilities_sum_to_one(random_mixture):
    x = torch.randn(20, 4, dtype=D64)
    per_chart = random_mixture.chart_log_probs(x)
    torch.testing.assert_close(random_mixture.log_prob(x), torch.logsumexp(per_chart + random_mixture.log_alpha, 1))
    r = random_mixture.responsibilities(x)
    torch.testing.assert_close(r.sum(1), torch.ones(20, dtype=D64))
    assert (random_mixture.assign(x) == r.argmax(1)).all()


def test_log_prob_gradcheck(random_mixture):
    x = torch.randn(3, 4, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(random_mixture.log_prob, (x,))


def test_stacked_reference_matches_per_chart_modules(random_mixture):
    x = torch.randn(25, 4, dtype=D64, requires_grad=True)
    params = stack_mlp_charts(random_mixture)
    total, per_chart = charts_log_prob(x, params, random_mixture.log_alpha, random_mixture.sigma, return_chart_log_probs=True)
    torch.testing.assert_close(per_chart, random_mixture.chart_log_probs(x), rtol=1e-9, atol=1e-7)
    expected = random_mixture.log_prob(x)
    torch.testing.assert_close(total, expected, rtol=1e-9, atol=1e-7)
    (g1,) = torch.autograd.grad(total.sum(), x)
    (g2,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(g1, g2, rtol=1e-8, atol=1e-6)
    with pytest.raises(TypeError, match="ResidualMLP"):
        stack_mlp_charts(build_mixture("vae", 2, 4, 2))


def test_sample_and_project(random_mixture):
    x, labels = random_mixture.sample(50, torch.Generator().manual_seed(0))
    assert x.shape == (50, 4) and labels.shape == (50,) and labels.max() < 3
    again, _ = random_mixture.sample(50, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, again)
    projected = random_mixture.project(torch.randn(10, 4, dtype=D64))
    assert projected.shape == (10, 4) and torch.isfinite(projected).all()


# -- training -------------------------------------------------------------------------------
def _circle_data(n=2000, seed=0):
    return torch.from_numpy(Circle().sample(n, seed)).float()


def _tiny_config(**kw):
    base = dict(pretrain_steps=50, mixture_steps=60, overlap_steps=30, batch_size=64, lr=3e-3,
                seed_points=1000, log_every=10)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("family", ["fif", "vae"])
def test_training_on_circle_puts_samples_near_it(family):
    torch.manual_seed(0)
    model = build_mixture(family, 2, 2, 1, width=16, n_blocks=1, coupling_blocks=3)
    data = _circle_data()
    before, _ = model.sample(1000, torch.Generator().manual_seed(1))
    history = train_mixture(model, data, _tiny_config(), progress=False)
    samples, labels = model.sample(1000, torch.Generator().manual_seed(1))
    dist = Circle().distance(samples)
    assert dist.mean() < 0.06, dist.mean()
    assert Circle().distance(before).mean() > 2 * dist.mean()  # training, not the seeding, did it
    assert set(labels.tolist()) == {0, 1}
    assert np.isfinite([h["loss"] for h in history]).all()


@pytest.mark.parametrize("family,architecture", [("fif", "mlp"), ("fif", "conv"), ("vae", "mlp")])
def test_pretrain_loss_on_cluster_rows_matches_full_batch(family, architecture):
    """Pre-training evaluates each chart on its own cluster's points only: same loss, same gradients
    (zeros for a chart without points in the batch) and same random stream as weighting the full batch."""
    from patchreg.charts.training import mixture_loss

    n = 64 if architecture == "conv" else 5
    model = _randomised(build_mixture(family, 3, n, 2, architecture, width=4, n_blocks=1, coupling_blocks=2).to(D64), 0.1)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(12, n, generator=g, dtype=D64)
    centers = torch.stack([x[0], x[1], x[0] + 100])  # the third chart gets no points
    for chart in model.charts:
        chart.set_frame(x, model.config["align"])
    loss, w = mixture_loss(model, x, TrainConfig(), "pretrain", centers, torch.Generator().manual_seed(0))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    gen = torch.Generator().manual_seed(0)
    full = torch.stack([c.training_loss(x, model.prior, 0.05, 1.0, gen) for c in model.charts], -1)
    expected = (w * full).sum(-1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-10)
    for a, b in zip(grads, torch.autograd.grad(expected, list(model.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert w[:, 2].sum() == 0 and all((p == 0).all() for p in grads[2 * len(grads) // 3:])


def test_checkpoint_round_trip_and_exact_resume(tmp_path):
    data = _circle_data(500)
    config = _tiny_config(pretrain_steps=4, mixture_steps=4, overlap_steps=4, seed_points=200)

    torch.manual_seed(0)
    straight = build_mixture("fif", 2, 2, 1, width=8, n_blocks=1).double()
    train_mixture(straight, data, config, tmp_path / "straight.safetensors", progress=False)

    torch.manual_seed(0)
    part = build_mixture("fif", 2, 2, 1, width=8, n_blocks=1).double()
    half = TrainConfig(**{**config.__dict__, "overlap_steps": 0, "checkpoint_every": 4})
    train_mixture(part, data, half, tmp_path / "run.safetensors", progress=False)
    resumed, header = load_mixture(tmp_path / "run.safetensors")
    assert header["training"]["step"] == 8
    train_mixture(resumed, data, config, tmp_path / "run.safetensors", resume=True, progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)

    loaded, _ = load_mixture(tmp_path / "straight.safetensors")
    x = torch.randn(7, 2, dtype=D64)
    torch.testing.assert_close(loaded.log_prob(x), straight.log_prob(x))


@pytest.mark.parametrize("family", ["fif", "vae"])
def test_revival_reseeds_a_dead_chart_on_the_worst_explained_points(family):
    from patchreg.charts.training import revive_dead_charts

    torch.manual_seed(0)
    model = build_mixture(family, 3, 2, 1, width=8, n_blocks=1).double()
    near = torch.randn(400, 2, dtype=D64) * 0.05  # what the live charts explain
    far = torch.randn(40, 2, dtype=D64) * 0.05 + torch.tensor([4.0, -3.0], dtype=D64)  # what they do not
    for chart in model.charts:
        chart.set_frame(near)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for param in model.parameters():  # an Adam state to be cleared for the revived chart
        optimizer.state[param]["exp_avg"] = torch.ones_like(param)
    with torch.no_grad():
        model.log_alpha.copy_(torch.log(torch.tensor([0.6, 0.4 - 1e-9, 1e-9], dtype=D64)))
    before = [p.detach().clone() for p in model.charts[2].parameters()]
    points = torch.cat([near, far])
    revived = revive_dead_charts(model, points, optimizer, 0.1, torch.Generator().manual_seed(0), 0.05,
                                 pretrain_steps=50, lr=1e-2)
    assert revived == [2]
    alpha = model.log_alpha.exp()
    torch.testing.assert_close(alpha.sum(), torch.tensor(1.0, dtype=D64))
    assert alpha[2] == pytest.approx((1 / 3) / (0.6 + 0.4 - 1e-9 + 1 / 3))
    # the new frame sits on the far cluster (the points the mixture explains worst), not on the near one
    assert (model.charts[2].center - far.mean(0)).norm() < 0.5
    assert (model.charts[0].center - near.mean(0)).norm() < 0.1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.charts[2].parameters()))
    assert all(param not in optimizer.state for param in model.charts[2].parameters())
    assert all(param in optimizer.state for param in model.charts[0].parameters())
    # the head start: trained alone on its cluster, the revived chart explains it better than a fresh one
    fresh = build_mixture(family, 1, 2, 1, width=8, n_blocks=1).double().charts[0]
    torch.manual_seed(1)
    fresh.load_state_dict(model.charts[2].state_dict())
    from patchreg.charts.training import _reset_parameters
    _reset_parameters(fresh)
    members = far
    def mean_loss(chart):  # over several noise draws: the VAE's ELBO is a random estimate
        return sum(float(chart.training_loss(members, model.prior, 0.05, 1.0, torch.Generator().manual_seed(s)).mean())
                   for s in range(20)) / 20

    assert mean_loss(model.charts[2]) < mean_loss(fresh)
    assert revive_dead_charts(model, points, optimizer, 0.1, torch.Generator().manual_seed(0), 0.05) == []  # none dead


def test_reset_keeps_the_near_affine_initialisation():
    from patchreg.charts.architectures import ResidualMLP
    from patchreg.charts.training import _reset_parameters

    torch.manual_seed(0)
    net = ResidualMLP(3, 2, width=16, n_blocks=2)
    fresh_scale = max(float(second.weight.detach().abs().max()) for _, second in net.blocks)
    with torch.no_grad():
        for param in net.parameters():
            param.fill_(1.0)
    holder = nn.Module()
    holder.net = net
    _reset_parameters(holder)
    for first, second in net.blocks:
        assert float(second.weight.abs().max()) <= 1.5 * fresh_scale  # the residual branch scaled by 0.1 again
        assert torch.equal(second.bias, torch.zeros_like(second.bias))
        assert not torch.equal(first.weight, torch.ones_like(first.weight))


def test_training_with_revival_logs_it_and_resumes_exactly(tmp_path):
    data = _circle_data(500)
    # revive_below near 1: every chart under 0.95 / K is re-seeded, so revivals happen in a tiny run
    config = _tiny_config(pretrain_steps=4, mixture_steps=8, overlap_steps=2, seed_points=200, log_every=2,
                          revive_every=2, revive_below=0.95, revive_points=256)
    torch.manual_seed(0)
    straight = build_mixture("fif", 3, 2, 1, width=8, n_blocks=1).double()
    history = train_mixture(straight, data, config, tmp_path / "straight.safetensors", progress=False)
    assert any(r.get("revived") for r in history)
    assert all(math.isfinite(r["loss"]) for r in history)

    torch.manual_seed(0)
    part = build_mixture("fif", 3, 2, 1, width=8, n_blocks=1).double()
    first = TrainConfig(**{**config.__dict__, "mixture_steps": 4, "overlap_steps": 0, "checkpoint_every": 8})
    train_mixture(part, data, first, tmp_path / "run.safetensors", progress=False)
    resumed, _ = load_mixture(tmp_path / "run.safetensors")
    train_mixture(resumed, data, config, tmp_path / "run.safetensors", resume=True, progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("field, value, fragment", [("revive_every", -1, "revive_every must be >= 0"),
                                                    ("revive_pretrain_steps", -1, "revive_pretrain_steps must be >= 0"),
                                                    ("revive_below", 0.0, "revive_below must be in"),
                                                    ("revive_below", 1.0, "revive_below must be in"),
                                                    ("revive_points", 1, "revive_points must be >= 2")])
def test_revival_settings_are_checked(field, value, fragment):
    with pytest.raises(ValueError, match=fragment):
        TrainConfig(**{field: value}).check()


def test_nan_guard_stops_with_clear_message():
    model = build_mixture("fif", 1, 2, 1, width=8, n_blocks=1)
    with torch.no_grad():
        model.charts[0].decoder.output.bias.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 0"):
        train_mixture(model, _circle_data(200), _tiny_config(seed_points=100), progress=False)


# -- bad inputs -------------------------------------------------------------------------------
def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="latent_dim must be < ambient_dim"):
        build_mixture("fif", 2, 3, 3)
    with pytest.raises(ValueError, match="n_charts must be >= 1"):
        build_mixture("vae", 0, 3, 2)
    with pytest.raises(ValueError, match="family"):
        build_mixture("gan", 2, 3, 2)
    model = build_mixture("fif", 2, 3, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3\)"):
        model.log_prob(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"data must have shape \(N, 3\)"):
        train_mixture(model, torch.zeros(10, 2), _tiny_config(), progress=False)
    bad = torch.randn(50, 3)
    bad[7, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        train_mixture(model, bad, _tiny_config(), progress=False)
    save_checkpoint(tmp_path / "gmm.safetensors", "gmm", {"w": torch.ones(2)}, {})
    with pytest.raises(ValueError, match="expected 'charts'"):
        load_mixture(tmp_path / "gmm.safetensors")


def test_cli_train_sample_evaluate(tmp_path, capsys):
    from patchreg.cli import main

    ckpt = tmp_path / "c.safetensors"
    assert main(["train", "charts", "--data", "toy:circle", "--family", "fif", "--charts", "2", "--steps", "16",
                 "--width", "8", "--blocks", "1", "--n-train", "300", "--no-progress", "--out", str(ckpt)]) == 0
    assert main(["sample", "--checkpoint", str(ckpt), "--n", "20", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (20, 2)
    assert np.load(tmp_path / "s.labels.npy").shape == (20,)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", "toy:circle", "--n", "100",
                 "--out", str(tmp_path / "m.json")]) == 0
    assert "dist_mean" in capsys.readouterr().out
    assert main(["train", "charts", "--data", "toy:circle", "--charts", "0", "--out", str(tmp_path / "x")]) == 2
    assert main(["train", "charts", "--data", "toy:circle", "--latent-dim", "2", "--out", str(tmp_path / "x")]) == 2
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", "toy:sphere"]) == 2
    save_checkpoint(tmp_path / "flow.safetensors", "flow", {"w": torch.ones(1)}, {})
    assert main(["sample", "--checkpoint", str(tmp_path / "flow.safetensors"), "--out", str(tmp_path / "y.npy")]) == 2
    assert "expected 'charts'" in capsys.readouterr().err
