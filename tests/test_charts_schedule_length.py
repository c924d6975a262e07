"""bench/charts_schedule_length.py (issue 15): the factor per doubling of the steps, the goal count per schedule
length, the last copy of a cell winning, and the hand-written reading surviving a regeneration."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
pytest.importorskip("matplotlib")
csl = pytest.importorskip("bench.charts_schedule_length")
from bench.charts_toy_seeds import goal_checks  # noqa: E402


def _cell(manifold="torus", seed=0, steps=3000, dist=0.001, coverage=1.0, w2=0.02, **extra):
    return dict(manifold=manifold, family="fif", seed=seed, steps=steps, dist_mean_rel=dist, dist_p95_rel=2 * dist,
                coverage=coverage, coverage_floor=1.0, sliced_w2=w2, sliced_w2_floor=0.02, heldout_nll=-1.0,
                train_seconds=10.0, sigma=0.01, **extra)


def _write(path: Path, cells: list[dict]) -> Path:
    path.write_text("".join(json.dumps(c) + "\n" for c in cells))
    return path


def test_goal_checks_uses_the_authors_distance_where_measured():
    assert goal_checks(_cell(dist=0.0013)) == {"dist": True, "cov": True, "W2": True}
    assert goal_checks(_cell(dist=0.0015))["dist"] is False  # the torus's 0.0112 / 8
    assert goal_checks(_cell(manifold="klein_bottle", dist=0.5))["dist"] is True  # no authors' number
    assert goal_checks(_cell(coverage=0.9985))["cov"] is False
    assert goal_checks(_cell(w2=0.031))["W2"] is False


def test_doubling_factor_is_per_doubling_and_paired_by_seed():
    short = {s: _cell(seed=s, dist=d) for s, d in ((0, 0.004), (1, 0.002), (2, 0.003))}
    long = {s: _cell(seed=s, steps=12000, dist=d) for s, d in ((0, 0.001), (1, 0.0005))}  # two doublings, x1/4
    factor, n = csl.doubling_factor(long, short)
    assert n == 2 and factor == pytest.approx(0.5)
    assert csl.doubling_factor(long, {}) == (pytest.approx(float("nan"), nan_ok=True), 0)


def test_report_counts_goals_and_keeps_the_reading(tmp_path):
    first = _write(tmp_path / "a.jsonl", [_cell(seed=0), _cell(seed=1), _cell(seed=0, steps=6000, dist=0.0008)])
    # a later file's copy of a cell replaces the earlier one: seed 1 at 3000 steps misses the distance goal there
    second = _write(tmp_path / "b.jsonl", [_cell(seed=1, dist=0.002), _cell(seed=1, steps=6000, dist=0.0012)])
    out = tmp_path / "report.md"
    csl.main([str(first), str(second), "--out", str(out)])
    rows = [r for r in out.read_text().splitlines() if r.startswith("| torus | fif |")]
    plateau = [r for r in rows if r.startswith("| torus | fif | 3000, 6000 |")]
    rows = [r for r in rows if r not in plateau]
    assert len(rows) == 2 and len(plateau) == 1
    assert "| 3000 | 0,1 |" in rows[0] and rows[0].endswith("| 1 of 2 | 10 |")
    assert "x0.69 (2 seeds)" in rows[1] and rows[1].endswith("| 2 of 2 | 10 |")  # sqrt(0.8 * 0.6)
    assert out.with_suffix(".png").is_file() and len(json.loads(out.with_suffix(".json").read_text())) == 4
    out.write_text(out.read_text() + "\n## Reading\n\nby hand\n")
    csl.main([str(first), str(second), "--out", str(out)])
    assert out.read_text().endswith("## Reading\n\nby hand\n")


def test_nll_parts_exact_where_recorded_else_from_sigma():
    import math

    from patchreg.data.toy_manifolds import get_manifold

    area = get_manifold("torus").area()
    exact = _cell(heldout_nll_normal=-3.0, heldout_nll_surface=2.0)
    assert csl.nll_parts(exact) == (pytest.approx(2.0 - math.log(area)), -3.0, False)
    # old cell: the normal part at residuals averaging codim sigma^2 (codim 1 on the torus)
    surface, normal, approx = csl.nll_parts(_cell())
    assert approx and normal == pytest.approx(0.5 * math.log(2 * math.pi * math.e * 0.01**2))
    assert surface == pytest.approx(-1.0 - normal - math.log(area))
    # noisy data: the normal part is measured from its floor, that of noise s
    noisy = _cell(noise=0.02, heldout_nll_normal=-2.0, heldout_nll_surface=1.0)
    assert csl.nll_parts(noisy)[1] == pytest.approx(-2.0 - 0.5 * math.log(2 * math.pi * math.e * 0.02**2))


def test_plateau_is_where_no_longer_schedule_beats_the_seed_spread():
    falling = [_cell(seed=s, steps=n, dist=d + 1e-5 * s) for n, d in ((3000, 0.004), (6000, 0.002), (12000, 0.001))
               for s in range(3)]
    flat = [_cell(seed=s, steps=n, dist=0.001 + 2e-4 * ((s + n // 3000) % 3)) for n in (3000, 6000, 12000) for s in range(3)]
    late = [_cell(seed=s, steps=n, dist=d + 1e-5 * s) for n, d in ((3000, 0.004), (6000, 0.002), (12000, 0.002))
            for s in range(3)]
    assert csl.plateau_from(falling, "dist_mean_rel", "low") is None
    assert csl.plateau_from(flat, "dist_mean_rel", "low") == 3000
    assert csl.plateau_from(late, "dist_mean_rel", "low") == 6000
    # "high" is better for coverage: a rise is an improvement
    assert csl.still_improving([0.0, 0.0001, 0.0], [-0.003, -0.0031, -0.0029], "high")
    assert not csl.still_improving([-0.003, -0.0031, -0.0029], [0.0, 0.0001, 0.0], "high")


def test_small_gains_below_the_tolerance_per_doubling_do_not_count():
    # 3% less distance per doubling, seeds tight: significant, but below the 5% least gain
    slow = [_cell(seed=s, steps=n, dist=0.001 * 0.97 ** k + 1e-7 * s) for k, n in enumerate((3000, 6000, 12000))
            for s in range(3)]
    assert csl.plateau_from(slow, "dist_mean_rel", "low") is None
    assert csl.plateau_from(slow, "dist_mean_rel", "low", ("relative", 0.05)) == 3000
    # an absolute tolerance is per doubling: 0.015 nats over two doublings is 0.0075 a doubling
    assert not csl.still_improving([0.0, 0.0001, 0.0], [0.015, 0.0151, 0.015], "low", 2.0, ("absolute", 0.01))
    assert csl.still_improving([0.0, 0.0001, 0.0], [0.015, 0.0151, 0.015], "low", 1.0, ("absolute", 0.01))
    # a length run with one seed has no spread and is left out
    single = slow + [_cell(seed=0, steps=24000, dist=1e-5)]
    assert csl.plateau_from(single, "dist_mean_rel", "low", ("relative", 0.05)) == 3000
