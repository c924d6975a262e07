"""bench/charts_digits_converged.py and the periodic evaluation of bench/charts_experiments.run_digits (issue 15):
the curve's steps, that evaluating does not change the training, resuming from the runs' JSONL, the plateau rule."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
pytest.importorskip("sklearn")  # the digits
pytest.importorskip("matplotlib")
cdc = pytest.importorskip("bench.charts_digits_converged")
from bench.charts_experiments import run_digits  # noqa: E402

TINY = ["--models", "fif:mlp", "--seeds", "0", "--steps", "8", "--eval-every", "4", "--charts", "2", "--latent", "2",
        "--width", "8"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # run_digits sets 1 thread


def _job(**extra):
    return dict(family="fif", architecture="mlp", K=2, d=2, seed=0, data_seed=0, steps=8, width=8, lr=2e-3,
                train_sigma=0.05, **extra)


def test_periodic_evaluation_leaves_training_unchanged():
    plain = run_digits(_job())
    curved = run_digits(_job(eval_every=4, fd_draws=2))
    assert [p["step"] for p in curved["curve"]] == [4, 8]
    assert all(math.isfinite(p["train_nll"]) for p in curved["curve"])
    assert curved["frechet"] == pytest.approx(plain["frechet"], rel=1e-9)  # same model, same first sample draw
    assert curved["heldout_nll"] == pytest.approx(plain["heldout_nll"], rel=1e-9)
    assert len(curved["frechet_draws"]) == 2 and curved["frechet_draws"][0] == curved["frechet"]
    last = curved["curve"][-1]  # the step-8 evaluation scores the same finalized model as the end of training
    assert last["frechet"] == pytest.approx(curved["frechet"], rel=1e-6)
    assert last["frechet_mean"] == pytest.approx(sum(curved["frechet_draws"]) / 2, rel=1e-6)


def test_runs_resume_and_report(tmp_path):
    runs, out = tmp_path / "runs.jsonl", tmp_path / "digits.md"
    args = ["--runs", str(runs), "--out", str(out), *TINY]
    assert cdc.main(args) == 0
    assert len(runs.read_text().splitlines()) == 1
    assert len(tmp_path.joinpath("runs.curve.jsonl").read_text().splitlines()) == 2
    out.write_text(out.read_text() + "\n## Reading\n\nkept\n")
    assert cdc.main(args) == 0  # the run is in the JSONL: not retrained, the reading kept
    assert len(runs.read_text().splitlines()) == 1
    text = out.read_text()
    assert "## FD against steps" in text and "| 8 | overlap |" in text and text.endswith("kept\n")
    assert out.with_suffix(".png").is_file()
    assert json.loads(out.with_suffix(".json").read_text())["runs"][0]["steps"] == 8


def test_plateau_and_t_interval():
    curve = [{"step": s, "frechet_mean": v} for s, v in zip(range(1, 7), (9.0, 5.0, 3.0, 3.1, 3.2, 2.9))]
    assert cdc.plateau(curve) == {"best_before": 3.0, "best_last_third": 2.9, "last_third_from": 5}
    lo, hi = cdc.t_interval([1.0, 2.0, 3.0])
    assert lo == pytest.approx(2 - 4.302653 / 3 ** 0.5, rel=1e-5) and hi == pytest.approx(2 + 4.302653 / 3 ** 0.5, rel=1e-5)
