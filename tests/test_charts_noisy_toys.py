"""Noisy toy data (load_dataset(noise=)): the clean points plus seeded Gaussian noise, the manifold kept exact, and
evaluate_mixture's sliced W2 against noisy held-out points with a noisy floor (issue 15's convergence control)."""

import numpy as np
import pytest
import torch

from patchreg.charts import build_mixture
from patchreg.charts.datasets import add_noise, load_dataset
from patchreg.charts.metrics import evaluate_mixture, sliced_w2_floor

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_noise_adds_gaussian_of_the_given_std_to_the_clean_points():
    clean = load_dataset("toy:sphere", 4000, 3000, 2)
    noisy = load_dataset("toy:sphere", 4000, 3000, 2, noise=0.05)
    assert clean.noise == 0.0 and noisy.noise == 0.05
    for a, b in ((clean.train, noisy.train), (clean.test, noisy.test)):
        delta = (b - a).numpy()
        assert delta.std() == pytest.approx(0.05, rel=0.03)
        assert abs(delta.mean()) < 0.005
    # the manifold stays exact: the noisy points are off it by about the noise, the clean ones on it
    assert noisy.manifold.distance(noisy.test).mean() == pytest.approx(0.05 * np.sqrt(2 / np.pi), rel=0.05)
    assert clean.manifold.distance(clean.test).max() < 1e-12
    # train and held-out noise are independent draws
    assert not np.allclose((noisy.train - clean.train)[:100].numpy(), (noisy.test - clean.test)[:100].numpy())


def test_noise_zero_is_the_clean_dataset_bit_for_bit():
    a, b = load_dataset("toy:torus", 500, 200, 1), load_dataset("toy:torus", 500, 200, 1, noise=0)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert np.array_equal(add_noise(a.train.numpy(), 0.0, 3), a.train.numpy())


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1", True])
def test_bad_noise_is_refused_naming_the_argument(bad):
    with pytest.raises(ValueError, match="noise must be a finite number >= 0"):
        load_dataset("toy:circle", 10, 10, 0, noise=bad)


def test_noise_on_non_toy_data_is_refused():
    with pytest.raises(ValueError, match="noise applies to toy data only"):
        load_dataset("digits", noise=0.1)


def test_noisy_floor_is_noisy_true_samples_against_noisy_test():
    noisy = load_dataset("toy:circle", 10, 2000, 0, noise=0.1)
    clean_floor = np.mean(sliced_w2_floor(noisy.manifold, noisy.test, 0))
    noisy_floor = np.mean(sliced_w2_floor(noisy.manifold, noisy.test, 0, noise=0.1))
    # noise-free true samples are a worse match to noisy held-out points than equally noisy ones
    assert noisy_floor < clean_floor


def test_evaluate_noisy_data_uses_noisy_samples_for_w2_only():
    torch.manual_seed(0)
    model = build_mixture("fif", 2, 2, 1, width=8, n_blocks=1, sigma=0.3).double()
    clean, noisy = load_dataset("toy:circle", 10, 400, 0), load_dataset("toy:circle", 10, 400, 0, noise=0.1)
    a = evaluate_mixture(model, clean, n=400, seed=0)
    b = evaluate_mixture(model, noisy, n=400, seed=0)
    # distances and coverage: the same noise-free samples against the same exact manifold
    assert a["dist_mean"] == b["dist_mean"] and a["coverage"] == b["coverage"]
    # W2: other (noisy) samples and another floor
    assert a["sliced_w2_draws"] != b["sliced_w2_draws"] and a["sliced_w2_floor"] != b["sliced_w2_floor"]


def test_nll_parts_sum_to_the_nll_and_the_surface_part_is_free_of_sigma():
    from patchreg.charts.metrics import heldout_nll, heldout_nll_parts

    torch.manual_seed(1)
    model = build_mixture("fif", 1, 3, 2, width=8, n_blocks=1, sigma=0.2).double()
    test = load_dataset("toy:sphere", 10, 300, 0).test
    parts = heldout_nll_parts(model, test, batch=128)
    assert parts["nll"] == pytest.approx(heldout_nll(model, test))
    assert parts["nll"] == pytest.approx(parts["normal"] + parts["surface"])
    with torch.no_grad():
        model.log_sigma.fill_(np.log(0.05))
    other = heldout_nll_parts(model, test)
    # one chart: the Gaussian term is all that sigma touches, so the part on the manifold stays
    assert other["surface"] == pytest.approx(parts["surface"], rel=1e-10)
    assert other["normal"] != pytest.approx(parts["normal"])


@pytest.mark.parametrize("name", ["circle", "two_circles", "annulus", "sphere", "torus", "swiss_roll", "klein_bottle"])
def test_area_matches_a_monte_carlo_estimate_of_the_parametrisation(name):
    from patchreg.data.toy_manifolds import get_manifold

    m = get_manifold(name)
    rng = np.random.default_rng(0)
    if name == "swiss_roll" or name == "klein_bottle":
        # area = box area * mean of the area element sqrt(det J^T J) over uniform parameters
        (u0, u1), (v0, v1) = m.box
        u, v = rng.uniform(u0, u1, 400_000), rng.uniform(v0, v1, 400_000)
        jac = m.param_jacobian(u, v)
        element = np.sqrt(np.linalg.det(np.einsum("nki,nkj->nij", jac, jac)))
        assert m.area() == pytest.approx((u1 - u0) * (v1 - v0) * element.mean(), rel=5e-3)
    else:
        expected = {"circle": 2 * np.pi, "two_circles": 4 * np.pi, "annulus": np.pi * (1.5**2 - 0.5**2),
                    "sphere": 4 * np.pi, "torus": 4 * np.pi**2 * 0.4}[name]
        assert m.area() == pytest.approx(expected)


def test_cli_trains_and_evaluates_on_noisy_toy_data(tmp_path, capsys):
    from patchreg.charts import load_mixture
    from patchreg.cli import main

    out = tmp_path / "m.safetensors"
    assert main(["train", "charts", "--data", "toy:circle", "--data-noise", "0.05", "--steps", "30", "--width", "8",
                 "--blocks", "1", "--n-train", "300", "--no-progress", "--out", str(out)]) == 0
    model, _ = load_mixture(out, torch.float64)
    # the fitted off-manifold sigma sees the noise (an untrained-ish model's residuals are at least that)
    assert float(model.sigma) > 0.03
    report = tmp_path / "e.json"
    assert main(["evaluate", "--checkpoint", str(out), "--data", "toy:circle", "--data-noise", "0.05",
                 "--n", "300", "--out", str(report)]) == 0
    import json

    result = json.loads(report.read_text())
    assert result["heldout_nll"] == pytest.approx(result["heldout_nll_surface"] + result["heldout_nll_normal"])
    assert result["surface_entropy"] == pytest.approx(np.log(2 * np.pi))


@pytest.mark.parametrize("args, message", [(["--data-noise", "-0.1"], "--data-noise must be a finite number >= 0"),
                                           (["--data-noise", "nan"], "--data-noise must be a finite number >= 0"),
                                           (["--data", "digits", "--data-noise", "0.1"], "--data-noise is for toy data")])
def test_cli_refuses_bad_data_noise_before_training(tmp_path, capsys, args, message):
    from patchreg.cli import main

    out = tmp_path / "m.safetensors"
    base = ["train", "charts", "--data", "toy:circle", "--out", str(out)]
    assert main(base + args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
