"""patchreg.charts.curves: held-out metrics recorded while a chart mixture trains (`patchreg train charts --eval-every`)."""

import json

import pytest
import torch

from patchreg.charts import build_mixture, train_mixture
from patchreg.charts.curves import curve_markdown, curve_rows, heldout_curve_callback
from patchreg.charts.datasets import load_dataset
from patchreg.charts.metrics import evaluate_mixture
from patchreg.charts.training import toy_train_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _train(steps=30, every=10, log_every=10, sink=None):
    data = load_dataset("toy:circle", 300, 200, 0)
    torch.manual_seed(0)
    model = build_mixture("fif", 2, 2, 1, width=8, n_blocks=1)
    config = toy_train_config(steps, seed=0, log_every=log_every)
    history = train_mixture(model, data.train.float(), config, progress=False,
                            callback=heldout_curve_callback(data, config, every, n=200, sink=sink))
    return data, model, history


def test_the_last_row_is_the_trained_model_and_rows_come_every_n_steps():
    seen = []
    data, model, history = _train(sink=seen.append)
    rows = curve_rows(history)
    assert [r["step"] for r in rows] == [10, 20, 30] and seen == rows
    # train_mixture finalized the model on the same points the callback finalized its copy on
    final = evaluate_mixture(model.double(), data, n=200, eps=0.1, seed=0)
    for key in ("heldout_nll", "heldout_nll_surface", "dist_mean_rel", "coverage", "sliced_w2"):
        assert rows[-1][key] == pytest.approx(final[key], rel=1e-9, abs=1e-12), key
    assert rows[0]["lr"] > rows[-1]["lr"]  # the cosine schedule, step by step


def test_evaluation_is_skipped_between_multiples_but_not_at_the_end():
    _, _, history = _train(steps=25, every=20, log_every=5)
    assert [r["step"] for r in curve_rows(history)] == [20, 25]


def test_markdown_has_one_line_per_row_and_dashes_for_missing_metrics():
    _, _, history = _train()
    rows = curve_rows(history)
    text = curve_markdown(rows + [dict(step=40, phase="overlap", loss=1.0, heldout_nll=0.5, seconds=1.0)], "t")
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| step")]
    assert len(lines) == 4 and lines[-1].startswith("| 40 | overlap |") and "| - |" in lines[-1]


def test_bad_arguments_are_refused_before_training():
    data = load_dataset("toy:circle", 300, 50, 0)
    config = toy_train_config(30, seed=0)
    with pytest.raises(ValueError, match="every must be >= 1"):
        heldout_curve_callback(data, config, 0)
    with pytest.raises(ValueError, match=r"n must be <= the held-out points \(50\)"):
        heldout_curve_callback(data, config, 10, n=100)


def test_cli_writes_the_curve(tmp_path, capsys):
    from patchreg.cli import main

    out = tmp_path / "m.safetensors"
    assert main(["train", "charts", "--data", "toy:circle", "--steps", "40", "--eval-every", "20", "--eval-n", "200",
                 "--width", "8", "--blocks", "1", "--n-train", "300", "--no-progress", "--out", str(out)]) == 0
    rows = json.loads((tmp_path / "m.curve.json").read_text())
    assert [r["step"] for r in rows] == [20, 40]
    assert (tmp_path / "m.curve.md").read_text().count("\n| 20 | mixture |") == 1
    # without --eval-every: no curve, and the model is the one trained with it (evaluations draw from no training stream)
    plain = tmp_path / "p.safetensors"
    assert main(["train", "charts", "--data", "toy:circle", "--steps", "40", "--width", "8", "--blocks", "1",
                 "--n-train", "300", "--no-progress", "--out", str(plain)]) == 0
    assert not (tmp_path / "p.curve.json").exists()
    from patchreg.charts import load_mixture

    a, b = load_mixture(out, torch.float32)[0], load_mixture(plain, torch.float32)[0]
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("args, message", [(["--eval-every", "-1"], "--eval-every must be >= 0"),
                                           (["--data", "bundled", "--patch-size", "4", "--latent-dim", "2",
                                             "--eval-every", "10"], "--eval-every is for point data")])
def test_cli_refuses_bad_eval_settings(tmp_path, capsys, args, message):
    from patchreg.cli import main

    out = tmp_path / "m.safetensors"
    assert main(["train", "charts", "--data", "toy:circle", "--out", str(out)] + args) == 2
    assert message in capsys.readouterr().err and not out.exists()
