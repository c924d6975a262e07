"""TrainConfig.responsibility_sigma: the mixture's responsibilities at each chart's own running sigma (issue 10's
dead-chart remedy), its maximum-likelihood update, and its errors."""

import pytest
import torch

from patchreg.charts import TrainConfig, build_mixture, train_mixture
from patchreg.charts.seeding import seed_charts
from patchreg.charts.training import SIGMA_FLOOR_FRACTION, mixture_loss, training_step, wrap_for_training

D64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _two_noise_levels(n=400, seed=0):
    """Two segments in R^3: one 0.01 off its line, one 0.2 (a flat and a textured cluster, as patches)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=D64) * 2 - 1
    quiet = torch.stack([t, 0 * t, 0 * t], 1) + 0.01 * torch.randn(n, 3, generator=g, dtype=D64)
    loud = torch.stack([0 * t + 3, t, 0 * t], 1) + 0.2 * torch.randn(n, 3, generator=g, dtype=D64)
    return torch.cat([quiet, loud])


def _model(points, sigmas=(0.1, 0.1)):
    torch.manual_seed(0)
    model = build_mixture("fif", 2, 3, 1, width=8, n_blocks=1, sigma=0.1, sigma_per_chart=True).double()
    centers = seed_charts(model, points, torch.Generator().manual_seed(0))
    model.log_sigma.copy_(torch.log(torch.tensor(sigmas, dtype=D64)))
    return model, centers


def test_per_chart_responsibilities_use_each_charts_sigma():
    points = _two_noise_levels()
    model, centers = _model(points, (0.03, 0.5))
    x = points[::7]
    config = TrainConfig(train_sigma=0.1, responsibility_sigma="per_chart")
    _, w = mixture_loss(model, x, config, "mixture", centers, torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch.softmax(model.log_alpha + model.chart_log_probs(x, sigma=model.sigma), -1)
        shared = torch.softmax(model.log_alpha + model.chart_log_probs(x, sigma=0.1), -1)
    torch.testing.assert_close(w, expected)
    assert (w - shared).abs().max() > 1e-2  # the test can tell per-chart from shared
    _, w_shared = mixture_loss(model, x, TrainConfig(train_sigma=0.1), "mixture", centers, torch.Generator().manual_seed(1))
    torch.testing.assert_close(w_shared, shared)  # the default is unchanged


@pytest.mark.parametrize("phase", ["mixture", "pretrain"])
def test_training_step_moves_each_sigma_to_its_weighted_ml_value(phase):
    points = _two_noise_levels()
    model, centers = _model(points)
    config = TrainConfig(train_sigma=0.1, responsibility_sigma="per_chart", alpha_momentum=0.9)
    x = points[::3]
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the batch's responsibilities and residuals, before the step changes the charts
        w = torch.softmax(model.log_alpha + model.chart_log_probs(x, sigma=model.sigma), -1)
        residual = torch.stack([((x - c.decode(c.encode(x))) ** 2).sum(-1) for c in model.charts], -1)
    before = model.sigma.clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    training_step(wrap_for_training(model, config, generator), model, optimizer, x, config, phase, centers, 0)
    if phase == "pretrain":  # hard assignment, no responsibilities: the sigmas stay
        torch.testing.assert_close(model.sigma, before, rtol=0, atol=0)
        return
    ml_var = (w * residual).sum(0) / ((3 - 1) * w.sum(0))  # codimension n - d = 2
    expected = (0.9 * before**2 + 0.1 * ml_var).sqrt()
    torch.testing.assert_close(model.sigma, expected, rtol=1e-4, atol=0)  # floor 1e-3: the dropped weights
    assert (model.sigma - before).abs().max() > 1e-3


def test_training_separates_the_noise_levels_and_keeps_the_floor():
    points = _two_noise_levels(1000)
    model, _ = _model(points)
    config = TrainConfig(pretrain_steps=20, mixture_steps=300, overlap_steps=0, batch_size=128, train_sigma=0.1,
                         responsibility_sigma="per_chart", alpha_momentum=0.8, responsibility_floor=1e-3)
    seen = []
    train_mixture(model, points, config, progress=False,
                  callback=lambda step, m, record: seen.append(m.sigma.clone()))
    running = seen[-1]  # before finalize(), which sets the ML sigmas itself
    assert running.min() >= SIGMA_FLOOR_FRACTION * 0.1 - 1e-12
    quiet, loud = sorted(running.tolist())
    assert quiet < 0.05 < 0.1 < loud  # one chart per cluster, each at about its own noise level


def test_per_chart_needs_a_model_with_one_sigma_per_chart():
    points = _two_noise_levels(100)
    model = build_mixture("fif", 2, 3, 1, width=8, n_blocks=1).double()
    config = TrainConfig(pretrain_steps=2, mixture_steps=2, overlap_steps=0, responsibility_sigma="per_chart")
    with pytest.raises(ValueError, match="sigma_per_chart=True"):
        train_mixture(model, points, config, progress=False)
    with pytest.raises(ValueError, match="responsibility_sigma must be one of"):
        TrainConfig(responsibility_sigma="chart").check()


def test_cli_responsibility_sigma(tmp_path, capsys):
    from patchreg.charts import load_mixture
    from patchreg.cli import main

    out = tmp_path / "pc.safetensors"
    argv = ["train", "charts", "--data", "bundled", "--patch-size", "3", "--charts", "2", "--latent-dim", "2",
            "--steps", "8", "--batch-size", "64", "--width", "8", "--blocks", "1", "--selector-points", "500",
            "--no-progress", "--responsibility-sigma", "per-chart", "--out", str(out)]
    assert main(argv) == 0
    _, header = load_mixture(out, torch.float32)
    assert header["training"]["config"]["responsibility_sigma"] == "per_chart"
    toy = tmp_path / "t.safetensors"
    assert main(["train", "charts", "--data", "toy:circle", "--responsibility-sigma", "per-chart", "--out", str(toy)]) == 2
    assert "--responsibility-sigma per-chart is for image data" in capsys.readouterr().err
    assert not toy.exists()
