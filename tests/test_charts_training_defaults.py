"""Issue 15: the learning-rate schedule, local seeding, the training callback, the CLI's point-data defaults,
and the relative metrics (manifold diameters, sliced-W2 and coverage floors)."""

import math

import numpy as np
import pytest
import torch

from patchreg.charts import TrainConfig, build_mixture, train_mixture
from patchreg.charts.datasets import load_dataset
from patchreg.charts.metrics import evaluate_mixture, manifold_diameter
from patchreg.charts.seeding import seed_charts, seed_members
from patchreg.charts.training import TOY_DEFAULTS, finalize, mixture_loss, toy_train_config
from patchreg.data.toy_manifolds import Circle, get_manifold

D64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_cosine_schedule_values_and_constant_unchanged():
    config = TrainConfig(pretrain_steps=10, mixture_steps=60, overlap_steps=30, lr=2e-3, lr_schedule="cosine",
                         lr_final=0.05)
    assert config.learning_rate(0) == config.learning_rate(9) == 2e-3  # pre-training at full lr
    assert config.learning_rate(10) == pytest.approx(2e-3)
    assert config.learning_rate(55) == pytest.approx(2e-3 * (0.05 + 0.95 * 0.5))  # half-way: the mean
    assert config.learning_rate(100) == config.learning_rate(120) == pytest.approx(2e-3 * 0.05)
    lrs = [config.learning_rate(s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    constant = TrainConfig(pretrain_steps=10, mixture_steps=60, overlap_steps=30, lr=2e-3)
    assert {constant.learning_rate(s) for s in range(100)} == {2e-3}


def test_config_check_names_field_and_bound():
    for field, value, match in [("lr_schedule", "step", "lr_schedule must be one of"), ("lr_final", 0.0, r"lr_final must be in \(0, 1\]"),
                                ("seed_fraction", 1.5, r"seed_fraction must be in \(0, 1\]"), ("lr", -1.0, "lr must be > 0"),
                                ("mixture_steps", -1, "mixture_steps must be >= 0"),
                                ("overlap_scale", 0.5, "overlap_scale must be >= 1")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**{field: value}).check()
    model = build_mixture("fif", 1, 2, 1, width=4, n_blocks=1)
    with pytest.raises(ValueError, match="lr_schedule"):  # raised before any work
        train_mixture(model, torch.zeros(10, 2), TrainConfig(lr_schedule="exp"), progress=False)


def test_toy_train_config_phases_and_cli_help_defaults():
    from patchreg.cli.charts import _TOY

    config = toy_train_config()
    assert config.total_steps == TOY_DEFAULTS["steps"]
    assert config.pretrain_steps == round(TOY_DEFAULTS["pretrain_fraction"] * TOY_DEFAULTS["steps"])
    assert config.overlap_steps == round(TOY_DEFAULTS["overlap_fraction"] * TOY_DEFAULTS["steps"])
    for key in ("lr", "lr_schedule", "train_sigma", "batch_size", "seed_fraction"):
        assert getattr(config, key) == TOY_DEFAULTS[key]
    assert toy_train_config(10, lr=5e-4).total_steps == 10 and toy_train_config(10, lr=5e-4).lr == 5e-4
    # the CLI's help text quotes the same defaults
    for key in ("steps", "batch_size", "lr", "lr_schedule", "train_sigma", "width", "blocks", "seed_fraction",
                "overlap_scale"):
        assert _TOY[key] == TOY_DEFAULTS[key], key
    assert config.overlap_scale == TOY_DEFAULTS["overlap_scale"]
    split = [float(v) for v in _TOY["split"].split("/")]
    assert split[0] == TOY_DEFAULTS["pretrain_fraction"] and split[2] == TOY_DEFAULTS["overlap_fraction"]
    assert sum(split) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="steps must be >= 3"):
        toy_train_config(2)


def test_local_seeding_patches_and_pretrain_membership():
    torus = get_manifold("torus")
    points = torch.from_numpy(torus.sample(3000, 0))
    model = build_mixture("fif", 6, 3, 2, width=4, n_blocks=1).double()
    whole = seed_charts(model, points, torch.Generator().manual_seed(0))
    local = seed_charts(model, points, torch.Generator().manual_seed(0), fraction=0.3)
    assert whole.shape == (6, 3) and local.shape == (6, 4)
    torch.testing.assert_close(local[:, :3], whole)  # same clusters, plus the radii
    members = seed_members(points, local)
    full = seed_members(points, whole)
    assert (full >= 0).all()
    kept = members >= 0
    assert (members[kept] == full[kept]).all()
    assert 0.25 < kept.double().mean() < 0.35  # about the fraction of every cluster
    # the pre-training loss ignores the points outside every patch (weight 0 in every chart)
    _, w = mixture_loss(model, points[:200], TrainConfig(), "pretrain", local, torch.Generator().manual_seed(0))
    torch.testing.assert_close(w.sum(1), kept[:200].to(D64))
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        seed_charts(model, points, torch.Generator().manual_seed(0), fraction=0.0)


def test_callback_sees_logged_steps_and_changes_nothing():
    data = torch.from_numpy(Circle().sample(400, 0)).float()
    config = TrainConfig(pretrain_steps=4, mixture_steps=6, overlap_steps=2, batch_size=32, lr=3e-3, seed_points=200,
                         log_every=3, lr_schedule="cosine")
    torch.manual_seed(0)
    plain = build_mixture("fif", 2, 2, 1, width=8, n_blocks=1)
    train_mixture(plain, data, config, progress=False)
    seen = []

    def callback(step, model, record):  # what bench/charts_convergence.py does: finalize and evaluate a copy
        import copy

        clone = copy.deepcopy(model)
        finalize(clone, data[:100], 0.05)
        clone.sample(50, torch.Generator().manual_seed(1))
        record["seen"] = True
        seen.append(step)

    torch.manual_seed(0)
    watched = build_mixture("fif", 2, 2, 1, width=8, n_blocks=1)
    history = train_mixture(watched, data, config, progress=False, callback=callback)
    assert seen == [3, 6, 9, 12] and all(h["seen"] for h in history)
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("name,expected", [("circle", 2.0), ("two_circles", 5.0), ("annulus", 3.0), ("sphere", 2.0), ("torus", 2.8)])
def test_manifold_diameter_closed_forms_match_samples(name, expected):
    manifold = get_manifold(name)
    assert manifold_diameter(manifold) == pytest.approx(expected)
    x = torch.from_numpy(manifold.sample(3000, 1))
    sampled = float(torch.cdist(x, x).max())
    assert sampled <= expected + 1e-9 and sampled > 0.99 * expected


def test_swiss_roll_diameter_estimate():
    roll = get_manifold("swiss_roll")
    d = manifold_diameter(roll)
    # the roll spans its height 1.0 and its outer turn (radius up to 4.5 pi * 0.1 = 1.41) across
    assert math.hypot(2 * 1.2, 1.0) < d < math.hypot(2 * 4.5 * math.pi * 0.1, 1.0) + 1e-9


def test_evaluate_reports_relative_distances_and_floors():
    data = load_dataset("toy:circle", 300, 400, 0)
    model = build_mixture("fif", 2, 2, 1, width=8, n_blocks=1).double()
    result = evaluate_mixture(model, data, n=400, eps=0.1, seed=0)
    assert result["diameter"] == 2.0
    assert result["dist_mean_rel"] == pytest.approx(result["dist_mean"] / 2.0)
    assert result["dist_p95_rel"] == pytest.approx(result["dist_p95"] / 2.0)
    # the floors: true samples are close to the held-out ones, far closer than an untrained model
    assert 0 < result["sliced_w2_floor"] < result["sliced_w2"] / 3
    # the model's W2 is the mean of as many sample draws as the floor's, the first draw kept apart
    assert len(result["sliced_w2_draws"]) == len(result["sliced_w2_floor_draws"]) == 5
    assert result["sliced_w2"] == pytest.approx(np.mean(result["sliced_w2_draws"]))
    assert result["sliced_w2_single"] == result["sliced_w2_draws"][0]
    assert len(set(result["sliced_w2_draws"])) == 5  # independent draws, not one sample five times
    assert result["coverage_floor"] > 0.99 > result["coverage"]
    assert np.isfinite(result["heldout_nll"])


def test_cli_rejects_bad_schedule_settings(tmp_path, capsys):
    from patchreg.cli import main

    out = str(tmp_path / "x.safetensors")
    assert main(["train", "charts", "--data", "toy:circle", "--seed-fraction", "0", "--out", out]) == 2
    assert "--seed-fraction must be in (0, 1]" in capsys.readouterr().err
    assert main(["train", "charts", "--data", "toy:circle", "--steps", "3", "--out", out]) == 2
    assert main(["train", "charts", "--data", "toy:circle", "--revive-every", "-1", "--out", out]) == 2
    assert "revive_every must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_revive_every_reaches_the_training(tmp_path):
    from patchreg.charts import load_mixture
    from patchreg.cli import main

    out = tmp_path / "r.safetensors"
    assert main(["train", "charts", "--data", "toy:circle", "--steps", "20", "--width", "8", "--blocks", "1",
                 "--n-train", "300", "--revive-every", "5", "--no-progress", "--out", str(out)]) == 0
    _, header = load_mixture(out, torch.float32)
    assert header["training"]["config"]["revive_every"] == 5


def test_cli_defaults_are_the_library_defaults(tmp_path):
    """`patchreg train charts` on a toy = toy_train_config + the toy's suggested K + seeded initial weights,
    the recipe of bench/charts_toy_seeds.py's table (here shortened to 20 steps)."""
    from patchreg.charts import load_mixture
    from patchreg.cli import main

    out = tmp_path / "c.safetensors"
    assert main(["train", "charts", "--data", "toy:circle", "--steps", "20", "--width", "8", "--blocks", "1",
                 "--n-train", "300", "--seed", "3", "--no-progress", "--out", str(out)]) == 0
    cli_model, header = load_mixture(out, torch.float32)
    assert header["model"]["n_charts"] == get_manifold("circle").suggested_charts
    data = load_dataset("toy:circle", 300, 10, 3)
    torch.manual_seed(3)
    model = build_mixture("fif", 2, 2, 1, width=8, n_blocks=1, sigma=TOY_DEFAULTS["train_sigma"])
    train_mixture(model, data.train.float(), toy_train_config(20, seed=3), progress=False)
    assert header["training"]["config"]["seed_fraction"] == TOY_DEFAULTS["seed_fraction"]
    for (name, a), b in zip(model.state_dict().items(), cli_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_toy_settings_override_the_defaults_per_toy():
    from patchreg.charts.training import TOY_SETTINGS, toy_defaults

    assert toy_defaults(None) == TOY_DEFAULTS and toy_defaults("no_such_toy") == TOY_DEFAULTS
    for name, settings in TOY_SETTINGS.items():
        assert set(settings) <= set(TOY_DEFAULTS) | {"charts"}, name  # only known keys (and K)
        merged = toy_defaults(name)
        config = toy_train_config(manifold=name)
        for key, value in settings.items():
            assert merged[key] == value
            if hasattr(config, key):
                assert getattr(config, key) == value
        assert toy_train_config(manifold=name, lr=5e-4).lr == 5e-4  # an explicit setting still wins
    # the torus trains at its own learning rate (bench/results/charts_torus_ablation.md), the others at the default
    assert toy_train_config(manifold="torus").lr == TOY_SETTINGS["torus"]["lr"] != TOY_DEFAULTS["lr"]
    assert toy_train_config(manifold="sphere").lr == TOY_DEFAULTS["lr"]


def test_cli_uses_the_toys_own_settings(tmp_path):
    from patchreg.charts import load_mixture
    from patchreg.charts.training import toy_defaults
    from patchreg.cli import main

    out = tmp_path / "t.safetensors"
    assert main(["train", "charts", "--data", "toy:torus", "--steps", "4", "--width", "4",
                 "--blocks", "1", "--n-train", "200", "--no-progress", "--out", str(out)]) == 0
    header = load_mixture(out, torch.float32)[1]
    assert header["model"]["n_charts"] == toy_defaults("torus").get("charts", get_manifold("torus").suggested_charts)
    config = header["training"]["config"]
    for key in ("lr", "batch_size", "train_sigma", "seed_fraction"):
        assert config[key] == toy_defaults("torus")[key], key
    assert main(["train", "charts", "--data", "toy:torus", "--charts", "2", "--steps", "4", "--width", "4",
                 "--blocks", "1", "--n-train", "200", "--lr", "5e-4", "--batch-size", "64", "--no-progress",
                 "--out", str(out)]) == 0
    config = load_mixture(out, torch.float32)[1]["training"]["config"]
    assert config["lr"] == 5e-4 and config["batch_size"] == 64


def test_finalize_uses_the_training_points_themselves():
    """alpha is set on the data's own points (no resample with replacement), a seeded subset beyond the cap."""
    from patchreg.charts import training

    config = training.toy_train_config(30, seed=3)
    small = torch.randn(500, 3, dtype=torch.float64)
    assert torch.equal(training.finalize_points(small, config, torch.float64), small)
    big = torch.arange(training.FINALIZE_POINTS + 777, dtype=torch.float64)[:, None].expand(-1, 2).contiguous()
    picked = training.finalize_points(big, config, torch.float32)
    assert picked.dtype == torch.float32 and len(picked) == training.FINALIZE_POINTS
    assert len(torch.unique(picked[:, 0])) == training.FINALIZE_POINTS  # without replacement
    assert torch.equal(picked, training.finalize_points(big, config, torch.float32))  # seeded
    sampler = lambda n, g: torch.randn(n, 2, generator=g)  # noqa: E731 (a streamed source keeps its draw)
    assert len(training.finalize_points(sampler, config, torch.float32)) == min(config.seed_points, 4096)


def test_overlap_scale_one_makes_the_overlap_phase_the_mixture_phase():
    """overlap_scale 1 (the toys with an edge): the overlap phase's loss and responsibilities are the mixture phase's."""
    annulus = get_manifold("annulus")
    points = torch.from_numpy(annulus.sample(300, 0))
    torch.manual_seed(0)
    model = build_mixture("fif", 3, annulus.ambient_dim, annulus.intrinsic_dim, width=8, n_blocks=1).double()
    centers = seed_charts(model, points, torch.Generator().manual_seed(0))

    def loss(phase, scale):
        # a wide training sigma: soft responsibilities, which the prior's scale visibly moves
        config = TrainConfig(overlap_scale=scale, train_sigma=2.0)
        return mixture_loss(model, points[:64], config, phase, centers, torch.Generator().manual_seed(1))

    plain, w_plain = loss("mixture", 1.5)
    same, w_same = loss("overlap", 1.0)
    torch.testing.assert_close(same, plain, rtol=0, atol=0)
    torch.testing.assert_close(w_same, w_plain, rtol=0, atol=0)
    _, w_scaled = loss("overlap", 1.5)  # the default scale does hand points on: the test can tell the two apart
    assert (w_scaled - w_plain).abs().max() > 1e-3


def test_overlap_in_loss_scales_the_prior_in_the_charts_loss():
    """overlap_in_loss (Alberti et al.'s overlap phase): each chart's loss uses the prior at overlap_scale * z, only
    in the overlap phase; the responsibilities are the same either way."""
    sphere = get_manifold("sphere")
    points = torch.from_numpy(sphere.sample(300, 0))
    torch.manual_seed(0)
    model = build_mixture("vae", 2, 3, 2, width=8, sigma=2.0).double()
    centers = seed_charts(model, points, torch.Generator().manual_seed(0))
    x = points[:64]

    def loss(phase, in_loss):
        config = TrainConfig(overlap_scale=1.5, train_sigma=2.0, overlap_in_loss=in_loss)
        return mixture_loss(model, x, config, phase, centers, torch.Generator().manual_seed(1))

    def expected(w, scale):  # the same random draws, chart by chart, as mixture_loss takes them
        gen = torch.Generator().manual_seed(1)
        losses = torch.stack([c.training_loss(x, model.prior, 2.0, scale, gen) for c in model.charts], -1)
        return (w * losses).sum(-1).mean()

    authors, w_authors = loss("overlap", True)
    ours, w_ours = loss("overlap", False)
    torch.testing.assert_close(w_authors, w_ours, rtol=0, atol=0)
    torch.testing.assert_close(authors, expected(w_authors, 1.5))
    torch.testing.assert_close(ours, expected(w_ours, 1.0))
    assert authors > ours  # U(1.5 z) >= U(z) for the radial prior: the test can tell the two apart
    mixture, _ = loss("mixture", True)  # other phases ignore it
    torch.testing.assert_close(mixture, loss("mixture", False)[0], rtol=0, atol=0)


def test_cli_overlap_in_loss(tmp_path):
    from patchreg.charts import load_mixture
    from patchreg.charts.training import toy_defaults
    from patchreg.cli import main

    out = tmp_path / "a.safetensors"
    args = ["train", "charts", "--data", "toy:sphere", "--steps", "4", "--width", "4", "--blocks", "1", "--n-train", "200",
            "--no-progress", "--family", "vae", "--out", str(out)]
    saved = lambda: load_mixture(out, torch.float32)[1]["training"]["config"]["overlap_in_loss"]  # noqa: E731
    assert main(args) == 0 and saved() == toy_defaults("sphere", "vae")["overlap_in_loss"]
    assert main(args + ["--overlap-in-loss"]) == 0 and saved() is True
    assert main(args + ["--no-overlap-in-loss"]) == 0 and saved() is False


def test_cli_overlap_scale(tmp_path, capsys):
    """--overlap-scale, and each family's default (the VAE keeps the hand-off)."""
    from patchreg.charts import load_mixture
    from patchreg.charts.training import toy_defaults
    from patchreg.cli import main

    out = tmp_path / "a.safetensors"
    args = ["train", "charts", "--data", "toy:annulus", "--steps", "4", "--width", "4", "--blocks", "1", "--n-train", "200",
            "--no-progress", "--out", str(out)]
    assert main(args) == 0
    assert load_mixture(out, torch.float32)[1]["training"]["config"]["overlap_scale"] == toy_defaults("annulus")["overlap_scale"]
    assert main(args + ["--family", "vae"]) == 0
    assert load_mixture(out, torch.float32)[1]["training"]["config"]["overlap_scale"] == toy_defaults("annulus", "vae")["overlap_scale"]
    assert main(args + ["--overlap-scale", "2"]) == 0
    assert load_mixture(out, torch.float32)[1]["training"]["config"]["overlap_scale"] == 2.0
    assert main(args + ["--overlap-scale", "0.5"]) == 2
    assert "--overlap-scale must be >= 1" in capsys.readouterr().err


def test_family_settings_sit_between_the_defaults_and_the_toys():
    from patchreg.charts.training import FAMILY_SETTINGS, FAMILY_TOY_SETTINGS, TOY_SETTINGS, toy_defaults
    from patchreg.cli.charts import _VAE

    assert _VAE == FAMILY_SETTINGS["vae"]  # the CLI's help text quotes them

    assert toy_defaults(None, "fif") == TOY_DEFAULTS
    vae = toy_defaults("two_circles", "vae")
    config = toy_train_config(manifold="two_circles", family="vae")
    for key, value in FAMILY_SETTINGS["vae"].items():
        assert vae[key] == value and getattr(config, "total_steps" if key == "steps" else key) == value
    assert config.total_steps == 6000 != toy_train_config(manifold="two_circles", family="fif").total_steps
    assert config.pretrain_steps == 600 and config.overlap_steps == 1200  # the same fractions of the longer schedule
    assert toy_train_config(manifold="two_circles", family="fif").overlap_scale == TOY_DEFAULTS["overlap_scale"] != vae["overlap_scale"]
    # one family on one toy comes last, and only there
    for (family, name), settings in FAMILY_TOY_SETTINGS.items():
        assert set(settings) <= set(TOY_DEFAULTS) | {"charts"}
        for key, value in settings.items():
            assert toy_defaults(name, family)[key] == value == getattr(toy_train_config(manifold=name, family=family), key)
    assert toy_defaults("sphere", "vae")["train_sigma"] == 0.02 != toy_defaults("sphere", "fif")["train_sigma"]
    assert toy_defaults("sphere", "fif") == toy_defaults("sphere")
    assert toy_defaults("torus", "vae")["charts"] == TOY_SETTINGS["torus"]["charts"]  # the toy's own settings still apply
