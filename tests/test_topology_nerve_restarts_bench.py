"""bench/topology_nerve_restarts.py: its arguments, and the best-of-restarts selection it reports."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import topology_nerve_restarts as bench  # noqa: E402


def test_bad_arguments_are_refused_before_any_work(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--cache", "unused", "--restarts", "0"])
    assert "--restarts must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args([])
    assert "--cache is required" in capsys.readouterr().err


def test_stems_name_every_setting_that_changes_the_fit():
    assert bench.parse_args(["--write-only"]).stem == "p3_K48_steps300"
    args = bench.parse_args(["--write-only", "--charts", "64", "--queries", "150000", "--denoise", "150"])
    assert args.stem == "p3_K64_steps300_q150000_m150"
    assert args.core_args.queries == 150000 and args.core_args.denoise == 150 and args.core_args.charts == 64


def _reading(klein):
    return {"named": "Klein bottle" if klein else "torus", "reliable": True, "betti_Z2": [1, 2, 1],
            "betti_Z3": [1, 1, 0] if klein else [1, 2, 1], "gap": 2.0, "orientable": False, "tau_star": 0.4}


def _cell(seed, chart_seed, heldout, klein_recon, klein_own):
    return {"seed": seed, "chart_seed": chart_seed, "heldout_nll": heldout, "train_nll": -heldout, "final_loss": 1.0,
            "residual": 0.1, "seconds": 90.0,
            "readings": {"reconstruction": _reading(klein_recon), "ownership": _reading(klein_own)}}


def test_selection_keeps_the_lowest_criterion_of_each_group():
    cells = [_cell(0, 0, -5.0, True, False), _cell(0, 7, -6.0, False, True), _cell(0, 8, -5.5, True, True),
             _cell(1, 0, -5.0, True, True), _cell(1, 7, -4.0, False, False)]  # seed 1's group lacks chart seed 8
    picks = bench.selections(cells, [0, 1], [0, 7, 8], 3)
    hits, n, chosen = picks[("heldout_nll", "reconstruction")]
    assert (hits, n, chosen) == (0, 1, [(0, (0, 7, 8), 7)])  # the held-out NLL keeps chart seed 7; incomplete groups skipped
    assert picks[("heldout_nll", "ownership")][:2] == (1, 1)
    assert picks[("train_nll", "reconstruction")][2] == [(0, (0, 7, 8), 0)]  # -heldout: the largest held-out NLL wins
    text = bench.markdown(cells, bench.parse_args(["--write-only"]), "cmd")
    assert "Single fits: the Klein bottle (both fields, clear gap) in 3 of 5" in text


def test_cut_readings_get_their_own_selection_once_every_fit_has_them():
    cells = [_cell(0, 0, -5.0, False, False), _cell(0, 7, -6.0, False, False), _cell(0, 8, -5.5, False, False)]
    args = bench.parse_args(["--write-only"])
    assert "overlaps by ownership/cut" not in bench.markdown(cells, args, "cmd")  # fits read before the cut existed
    for c in cells:
        c["readings"]["ownership/cut"] = _reading(True)
        c["readings"]["reconstruction/cut"] = _reading(c["chart_seed"] == 7)
    text = bench.markdown(cells, args, "cmd")
    assert "## Selection, overlaps by ownership/cut" in text and "in 3 of 3; Z/2 Betti" in text
    assert bench.selections(cells, [0], [0, 7, 8], 3, ("reconstruction/cut",))[("heldout_nll", "reconstruction/cut")][:2] == (1, 1)
