"""bench/topology_rotated_sizes.py: its argument bounds and its report's counts, on synthetic readings."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import topology_rotated_sizes as bench  # noqa: E402


@pytest.mark.parametrize("argv, message", [
    (["--patch-sizes", "2,3"], "--patch-sizes must lie in 3..8"),
    (["--rotations", "0"], "--rotations must be >= 1"),
    (["--reference", "1000", "--queries", "1500"], "--queries must be in [1, --reference 1000]"),
    (["--seeds", "0,-1"], "--seeds must be >= 0"),
    (["--k", "0"], "--k must be in"),
])
def test_bad_arguments_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--cache", "unused"] + argv)
    assert message in capsys.readouterr().err


def test_query_blocks_keep_the_first_seeds_and_hold_later_seeds_out():
    # 3 queries of 10 rows fit in a 35-row reference: seeds 0-2 are its rows 0-29, as before the blocks
    assert bench.query_block(1, 10, 35, 100)[0] == 0
    assert list(bench.query_block(2, 10, 35, 100)[1]) == list(range(20, 30))
    start, rows = bench.query_block(4, 10, 35, 100)  # seed 4: the second block, rows 35-69, disjoint from the first
    assert start == 35 and list(rows) == list(range(10, 20))
    with pytest.raises(ValueError, match="--seeds: seed 6 needs rows \\[70, 105\\)"):
        bench.query_block(6, 10, 35, 100)


def test_seed_sample_reads_rho_from_its_block_and_caches_it(tmp_path, monkeypatch):
    class PatchSet:
        points = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
        path = tmp_path / "patches_p3_x.npy"

    args = type("Args", (), {"queries": 10, "reference": 35, "k": 3, "cache": str(tmp_path)})()
    points, rho, _ = bench.seed_sample(PatchSet, 4, args)
    block = PatchSet.points[35:70].astype(np.float64)
    assert np.array_equal(points, block[10:20])
    dist = np.linalg.norm(block[10:20, None] - block[None], axis=-1)
    np.testing.assert_allclose(rho, np.sort(dist, axis=1)[:, 3], rtol=1e-5)  # column 0 is the point itself
    monkeypatch.setattr(bench, "kth_neighbour_distances", lambda *a, **k: pytest.fail("recomputed"))
    np.testing.assert_array_equal(bench.seed_sample(PatchSet, 4, args)[1], rho)


def _row(p, seed, named, reliable, excess):
    fit = {"klein": {"q50": 0.1 * p, "q90": 0.2 * p}, "three-circle": {"q50": 0.3, "q90": 0.5}}
    z3 = [1, 1, 0] if named == "Klein bottle" else [1, 2, 0]
    return {"p": p, "seed": seed, "kind": "plain", "q": 30.0, "L": 100, "n_core": 15000, "betti_Z2": [1, 2, 1],
            "betti_Z3": z3, "z2_excess": excess, "gap": 2.0 if reliable else 1.1, "reliable": reliable,
            "named": named, "name": named if reliable else f"other (no clear gap: {named})",
            "H1": [[0.4, 0.4], [0.4, 0.1]], "H2": [[0.4], [0.1]], "fit": fit}


def test_report_counts_reliable_klein_readings_per_patch_size():
    rows3 = [_row(3, 0, "Klein bottle", True, [0, 1, 1]), _row(3, 1, "Klein bottle", False, [0, 1, 1]),
             _row(3, 2, "other", False, [0, 0, 1])]
    rows4 = [_row(4, 0, "Klein bottle", True, [0, 1, 1])]
    results = {"args": {"rotations": 6, "queries": 50000, "k": 20, "reference": 500000, "bins": 16, "denoise": 50,
                        "landmarks": "100,150"},
               "sizes": [{"p": 3, "patch_set": {"n_points": 14484561}, "rows": rows3},
                         {"p": 4, "patch_set": {"n_points": 14274000}, "rows": rows4}]}
    text = bench.markdown(results, "cmd")
    assert "| 3 | 14,484,561 | 3 | 1 of 3 | 2 of 3 | 2 of 3 | 0.300 (0.600) | 0.300 (0.500) |" in text
    assert "| 4 | 14,274,000 | 1 | 1 of 1 | 1 of 1 | 1 of 1 | 0.400 (0.800) |" in text
    assert text.count("| plain | 30 | 100 | 15,000 |") == 4
