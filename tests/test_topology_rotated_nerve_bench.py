"""bench/topology_rotated_nerve.py: its argument bounds, its resumable per-p cells and its table of both methods."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import topology_rotated_nerve as bench  # noqa: E402


@pytest.mark.parametrize("argv, message", [
    (["--patch-sizes", "3,9"], "--patch-sizes must lie in 3..8"),
    (["--seeds", "0,-1"], "--seeds must be >= 0"),
    (["--queries", "600000"], "--queries must be in [1, --reference 500000]"),
    (["--charts", "0"], "--charts must be >= 1"),
    (["--max-charts", "0"], "--max-charts must be >= 1"),
    (["--q", "0"], "--q must be in (0, 100]"),
    (["--charts", "48", "--points", "400"], "--points must be at least 10 per chart (480)"),
])
def test_bad_arguments_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--cache", "unused"] + argv)
    assert message in capsys.readouterr().err


def test_cache_is_required_unless_the_report_is_only_rebuilt(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args([])
    assert "--cache is required" in capsys.readouterr().err
    assert bench.parse_args(["--write-only"]).write_only


def _cell(p, seed, named, reliable, orientable=False):
    bars = [[0.0, 1.0], [0.0, 0.8], [0.0, 0.3]]
    return {"p": p, "seed": seed, "n_core": 15000, "n_points": 3000, "named": named,
            "name": named if reliable else f"other (no clear gap: {named})", "betti_Z2": [1, 2, 1],
            "betti_Z3": [1, 1, 0] if named == "Klein bottle" else [1, 2, 0], "gap": 2.0 if reliable else 1.2,
            "reliable": reliable, "orientable": orientable, "tau_star": 0.4, "end": 1.4,
            "bars": {k: bars for k in ("Z2 H1", "Z3 H1", "Z2 H2", "Z3 H2")}, "core_seconds": 20.0, "nerve_seconds": 150.0}


def _ph(p, seed, L, named, reliable):
    return {"p": p, "seed": seed, "kind": "stratified", "q": 30.0, "L": L, "named": named, "reliable": reliable,
            "name": named if reliable else "other", "betti_Z2": [1, 2, 1], "betti_Z3": [1, 1, 0]}


def test_both_methods_need_the_nerve_and_every_persistence_reading():
    args = bench.parse_args(["--write-only"])
    torsion = {"Z2 H1": [[0.0, 1.0], [0.0, 0.8]], "Z3 H1": [[0.0, 0.8], [0.0, 0.4]], "Z2 H2": [[0.4, 1.3]], "Z3 H2": []}
    cells = [_cell(3, 0, "Klein bottle", True), {**_cell(3, 1, "Klein bottle", True), "bars": torsion},
             _cell(3, 2, "Klein bottle", False), _cell(4, 0, "three-circle model", True, None)]
    ph = {(3, 0): [_ph(3, 0, 100, "Klein bottle", True), _ph(3, 0, 150, "Klein bottle", True)],
          (3, 1): [_ph(3, 1, 100, "Klein bottle", True), _ph(3, 1, 150, "Klein bottle", False)],
          (3, 2): [_ph(3, 2, 100, "Klein bottle", True), _ph(3, 2, 150, "Klein bottle", True)]}
    text = bench.markdown(cells, ph, args, "cmd", "figs")
    assert "| 3 | 3 | 2 of 3 | 1 of 3 | 3 of 3 | 5 of 6 | 1 of 3 |" in text  # only seed 0 has both methods on every reading
    assert "| 4 | 1 | 0 of 1 | 0 of 1 | 0 of 1 | 0 of 0 | 0 of 1 |" in text
    assert text.count("| **yes** |") == 1 and "not run" in text


def test_persistence_readings_are_those_of_the_same_core(tmp_path):
    args = bench.parse_args(["--write-only"])
    rows = [_ph(3, 0, 100, "Klein bottle", True), {**_ph(3, 0, 100, "other", False), "kind": "plain"},
            {**_ph(3, 0, 150, "other", False), "q": 35.0}]
    path = tmp_path / "sizes.json"
    path.write_text(json.dumps({"sizes": [{"p": 3, "rows": rows}]}))
    assert bench.ph_readings(path, args) == {(3, 0): [rows[0]]}
    assert bench.ph_readings(tmp_path / "missing.json", args) == {}


def test_cells_of_other_settings_are_not_reused(tmp_path, monkeypatch):
    out = tmp_path / "nerve.md"
    calls = []

    def fake_cell(p, seed, args, fig_dir):
        calls.append((p, seed))
        return _cell(p, seed, "Klein bottle", True)

    monkeypatch.setattr(bench, "nerve_cell", fake_cell)
    argv = ["--cache", str(tmp_path), "--patch-sizes", "3", "--seeds", "0,1", "--out", str(out)]
    bench.main(argv)
    bench.main(argv)  # resumed: nothing new
    assert calls == [(3, 0), (3, 1)]
    bench.main(argv + ["--charts", "24"])  # other settings: trained again, and reported alone
    assert calls[2:] == [(3, 0), (3, 1)]
    assert "a FIF mixture of 24 charts" in out.read_text() and out.read_text().count("| 3 | 0 |") == 2


def test_torsion_in_bars_needs_the_z2_void_born_where_a_z3_loop_dies():
    cell = {"bars": {"Z3 H1": [[0.0, 0.8], [0.0, 0.4]], "Z2 H2": [[0.4005, 1.3], [1.0, 1.2]], "Z3 H2": [[1.0, 1.2]]}}
    assert bench.torsion_in_bars(cell)
    assert not bench.torsion_in_bars({"bars": {**cell["bars"], "Z2 H2": [[0.45, 1.3]]}})  # born elsewhere
    assert not bench.torsion_in_bars({"bars": {**cell["bars"], "Z3 H2": [[0.4, 1.3]]}})  # a void over both fields
    assert not bench.torsion_in_bars({"bars": {"Z3 H1": [[0.0, 0.8]], "Z2 H2": [], "Z3 H2": []}})
