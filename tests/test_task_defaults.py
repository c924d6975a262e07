"""The tuned splitting schedules of patchreg.priors.task_defaults and their use by the CLI."""

import numpy as np
import pytest
import torch

from patchreg.cli import main
from patchreg.priors import GMM
from patchreg.priors import task_defaults


def test_schedule_starts_at_the_given_noise_level_and_grows():
    betas = task_defaults.schedule_from_start(0.2)
    assert betas[0] == pytest.approx(1 / 0.2**2)
    assert betas == pytest.approx([b / 0.2**2 for b in task_defaults.SCHEDULE])
    assert all(b2 > b1 for b1, b2 in zip(betas, betas[1:]))


@pytest.mark.parametrize("prior", ["epll", "charts"])
@pytest.mark.parametrize("task", task_defaults.TASKS)
def test_every_prior_and_task_has_positive_settings(prior, task):
    start, scale, *rest = task_defaults.HQS_SETTINGS[prior][task]
    assert start > 0 and scale > 0
    betas = task_defaults.hqs_betas(prior, task)
    assert betas[0] == pytest.approx(1 / start**2)
    if rest:  # a geometric schedule ends at its end level after `steps` betas
        end, steps = rest
        assert len(betas) == steps and betas[-1] == pytest.approx(1 / end**2)
    assert task_defaults.hqs_lam(prior, task, 36, 0.01) == pytest.approx(scale * 36 / 0.01**2)


@pytest.mark.parametrize("args, fragment", [(("patchnr", "deblur"), "prior must be one of"),
                                            (("epll", "denoise"), "task must be one of"),
                                            (("epll", "sr3"), "task must be one of")])
def test_unknown_prior_or_task_is_named(args, fragment):
    with pytest.raises(ValueError, match=fragment):
        task_defaults.hqs_betas(*args)


def test_schedule_rejects_a_non_positive_start():
    with pytest.raises(ValueError, match="start must be > 0"):
        task_defaults.schedule_from_start(0.0)


def test_geometric_schedule_runs_from_start_to_end():
    betas = task_defaults.schedule_from_start(0.64, 0.01, 12)
    assert len(betas) == 12
    assert betas[0] == pytest.approx(1 / 0.64**2) and betas[-1] == pytest.approx(1 / 0.01**2)
    ratios = np.array(betas[1:]) / np.array(betas[:-1])
    assert ratios == pytest.approx(np.full(11, ratios[0]))  # geometric: a constant factor per step
    assert task_defaults.schedule_from_start(0.1, 0.1, 2) == pytest.approx([100.0, 100.0])


@pytest.mark.parametrize("end, steps, fragment", [(0.01, None, "end and steps go together"),
                                                  (None, 8, "end and steps go together"),
                                                  (0.0, 8, "end must be in"), (0.5, 8, "end must be in"),
                                                  (0.01, 1, "steps must be an int >= 2"),
                                                  (0.01, 4.0, "steps must be an int >= 2")])
def test_geometric_schedule_rejects_bad_bounds(end, steps, fragment):
    with pytest.raises(ValueError, match=fragment):
        task_defaults.schedule_from_start(0.2, end, steps)


@pytest.mark.parametrize("cli_task, extra, tuned", [("deblur", [], "deblur"), ("sr", ["--factor", "2"], "sr2"),
                                                    ("sr", ["--factor", "4"], "sr4"), ("inpaint", [], "inpaint"),
                                                    ("ct", [], "ct_limited"), ("ct", ["--photons", "4096"], "ct_lowdose")])
def test_cli_uses_the_tuned_schedule(tmp_path, monkeypatch, capsys, cli_task, extra, tuned):
    import patchreg.priors as priors

    seen = {}

    def fake_restore(y, op, model, sigma, betas=None, lam=None, **kwargs):
        seen["betas"], seen["lam"], seen["op"] = betas, lam, op
        return torch.zeros(1, 1, 16, 16, dtype=y.dtype)

    monkeypatch.setattr(priors, "epll_restore", fake_restore)
    np.save(tmp_path / "clean.npy", np.random.default_rng(0).random((16, 16)))
    GMM(2, 3).save(tmp_path / "gmm.safetensors")
    code = main(["reconstruct", "--task", cli_task, "--prior", "epll", "--checkpoint", str(tmp_path / "gmm.safetensors"),
                 "--image", str(tmp_path / "clean.npy"), "--output", str(tmp_path / "x.npy"), "--quiet", *extra])
    assert code == 0, capsys.readouterr().err
    assert seen["betas"] == pytest.approx(task_defaults.hqs_betas("epll", tuned))
    # 3x3 GMM, default sigma; with Poisson counts the weighted least squares' weights carry the 1/sigma^2
    sigma = 1.0 if tuned in task_defaults.POISSON_TASKS else 0.01
    assert seen["lam"] == pytest.approx(task_defaults.hqs_lam("epll", tuned, 9, sigma))
    assert (type(seen["op"]).__name__ == "Whitened") == (tuned in task_defaults.POISSON_TASKS)
