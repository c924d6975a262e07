"""bench/topology_answer.py: per-seed majorities, verdict stability and the table, on synthetic saved readings."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import topology_answer as bench  # noqa: E402

KLEIN = ("Klein bottle", [1, 2, 1], [1, 1, 0])
CIRCLES = ("three-circle model", [1, 5, 0], [1, 5, 0])


def _ph(p, seed, reading, reliable=True, L=100, kind="stratified"):
    named, z2, z3 = reading
    return {"p": p, "seed": seed, "kind": kind, "q": 30.0, "L": L, "named": named, "reliable": reliable,
            "betti_Z2": z2, "betti_Z3": z3, "z2_excess": [0, 1, 1] if named == "Klein bottle" else [0, 0, 0],
            "fit": {"klein": {"q50": 0.1 * p, "q90": 0.2 * p}, "three-circle": {"q50": 0.5, "q90": 0.9}}}


def _fit(seed, chart_seed, reading, reliable=True, orientable=False):
    named, z2, z3 = reading
    r = {"named": named, "reliable": reliable, "betti_Z2": z2, "betti_Z3": z3, "gap": 2.0 if reliable else 1.2,
         "orientable": orientable, "torsion_in_bars": named == "Klein bottle"}
    return {"seed": seed, "chart_seed": chart_seed, "readings": {"ownership": r, "reconstruction": dict(r, reliable=False)}}


def _write(tmp_path, ph_rows, fits):
    ph_path = tmp_path / "sizes.json"
    sizes = {}
    for r in ph_rows:
        sizes.setdefault(r["p"], []).append(r)
    ph_path.write_text(json.dumps({"sizes": [{"p": p, "patch_set": {"n_points": 1000 * p}, "rows": rows}
                                             for p, rows in sizes.items()]}))
    folder = tmp_path / "fits"
    folder.mkdir()
    for p, cell in fits:
        (folder / f"p{p}_K48_steps300_q150000_m150_s{cell['seed']}_c{cell['chart_seed']}.json").write_text(json.dumps(cell))
    return ph_path, folder


def test_figures_need_the_cache(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--figures"])
    assert "--figures needs --cache" in capsys.readouterr().err


def test_seed_majority_and_verdict_stability():
    assert bench.seed_reading(["Klein bottle", "Klein bottle", "no clear gap"]) == "Klein bottle"
    assert bench.seed_reading(["Klein bottle", "no clear gap"]) == "mixed"  # half is not a majority
    assert bench.method_verdict({0: True, 1: True, 2: True}) == ("Klein bottle", "stable (3 of 3 seeds)")
    assert bench.method_verdict({0: False, 1: False}) == ("not the Klein bottle", "stable (2 of 2 seeds)")
    assert bench.method_verdict({0: True, 1: False, 2: True}) == ("Klein bottle in 2 of 3 seeds", "unstable")


def test_table_of_both_methods(tmp_path):
    ph = [_ph(3, s, KLEIN, L=L) for s in range(3) for L in (100, 150)] + [_ph(3, 2, CIRCLES, L=200)]
    ph += [_ph(4, 0, KLEIN), _ph(4, 0, KLEIN, reliable=False, L=150), _ph(4, 1, CIRCLES)]
    ph += [_ph(4, 0, KLEIN)]  # the same reading saved twice (a rerun) counts once
    fits = [(3, _fit(s, c, KLEIN)) for s in range(3) for c in (0, 7)] + [(3, _fit(1, 8, CIRCLES))]
    fits += [(4, _fit(0, 0, KLEIN, reliable=False)), (4, _fit(1, 0, CIRCLES))]
    ph_path, folder = _write(tmp_path, ph, fits)
    out = tmp_path / "answer.md"
    assert bench.main(["--ph", str(ph_path), "--nerve", f"{folder},{tmp_path / 'missing'}", "--out", str(out)]) == 0
    rows = {r["p"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert rows[3]["ph"]["readings"] == 7 and rows[3]["ph"]["klein"] == 6
    assert rows[3]["ph"]["verdict"] == ["Klein bottle", "stable (3 of 3 seeds)"]
    assert rows[3]["nerve"]["fits"] == 7 and rows[3]["nerve"]["verdict"] == ["Klein bottle", "stable (3 of 3 seeds)"]
    assert rows[4]["ph"]["readings"] == 3 and rows[4]["ph"]["per_seed"] == {"0": "mixed", "1": "three-circle model"}
    assert rows[4]["ph"]["verdict"] == ["not the Klein bottle", "stable (2 of 2 seeds)"]  # 1 of 2 reliable: no majority
    text = out.read_text()
    assert "**Klein bottle**, both methods, stable" in text
    assert "| 4 | 0 | mixed | no clear gap |" in text
    assert "0.300 (0.600)" in text  # p = 3's model fit: the median over cores


def test_disagreeing_methods_are_named_each(tmp_path):
    ph_path, folder = _write(tmp_path, [_ph(4, s, KLEIN) for s in range(2)], [(4, _fit(s, 0, CIRCLES)) for s in range(2)])
    row = bench.summarise(4, bench.ph_rows([ph_path])[4], bench.nerve_cells([folder])[4], "ownership")
    assert bench.overall(row) == "PH: Klein bottle (stable); nerve: not the Klein bottle (stable)"


def test_cut_readings_enter_only_when_every_fit_has_them(tmp_path):
    fits = [_fit(s, 0, CIRCLES, reliable=False) for s in range(2)]
    for c in fits:
        c["readings"]["ownership/cut"] = dict(c["readings"]["ownership"], named="Klein bottle", reliable=True)
    ph_path, folder = _write(tmp_path, [_ph(4, s, KLEIN) for s in range(2)], [(4, c) for c in fits])
    row = bench.summarise(4, bench.ph_rows([ph_path])[4], bench.nerve_cells([folder])[4], "ownership")
    assert row["nerve"]["verdict"] == ("not the Klein bottle", "stable (2 of 2 seeds)")
    assert row["nerve_cut"]["verdict"] == ("Klein bottle", "stable (2 of 2 seeds)")
    assert bench.overall(row) == "PH: Klein bottle (stable); nerve: not the Klein bottle (stable); nerve cut: Klein bottle (stable)"
    del fits[0]["readings"]["ownership/cut"]
    assert "nerve_cut" not in bench.summarise(4, [], fits, "ownership")
