"""The chart nerve read as a filtration over the overlap threshold (nerve_persistence.py)."""

import numpy as np
import pytest

from patchreg.topology.cover import ChartCover, fit_local_pca_cover
from patchreg.topology.models import sample_model
from patchreg.topology.nerve import nerve_homology, nerve_simplices
from patchreg.topology.nerve_persistence import nerve_barcodes, nerve_entry_values, persistent_chart_verdict


def _cover(scores, dim=1):
    scores = np.asarray(scores, dtype=np.float64)
    return ChartCover(scores=scores, tangents=np.zeros((scores.shape[1], 2, dim)), dim=dim)


def test_entry_is_the_best_witness_of_the_worst_chart():
    cover = _cover([[0.0, 0.5, 2.0],   # best chart 0; with chart 1 at 0.5, with chart 2 at 2.0
                    [0.3, 0.1, 0.4],   # best chart 1 (score set to 0): {0,1} at 0.3, {1,2} at 0.4, {0,1,2} at 0.4
                    [1.0, 3.0, 0.2]])  # best chart 2: {0,2} at 1.0
    entry = nerve_entry_values(cover)
    assert entry[(0,)] == 0.0 and entry[(1,)] == 0.0 and entry[(2,)] == 0.0
    assert entry[(0, 1)] == 0.3 and entry[(1, 2)] == 0.4 and entry[(0, 2)] == 0.4 and entry[(0, 1, 2)] == 0.4
    assert nerve_entry_values(cover, max_charts=2).get((0, 1, 2)) is None  # only each point's 2 best charts
    with pytest.raises(ValueError, match="max_charts must be >= 1"):
        nerve_entry_values(cover, max_charts=0)


@pytest.mark.parametrize("tau", [0.05, 0.35, 0.45, 1.5])
def test_filtration_at_tau_is_the_nerve_at_tau(tau):
    rng = np.random.default_rng(0)
    cover = _cover(rng.uniform(0, 2, (200, 6)))
    entry = nerve_entry_values(cover, max_charts=6)
    at_tau = {s for s, v in entry.items() if v <= tau}
    assert at_tau == set(nerve_simplices(cover.membership(tau)))


def test_a_loop_of_charts_gives_one_long_h1_bar():
    # 8 charts around a circle (centres 0.785 apart, score = angular distance - 0.3): neighbours overlap at
    # 0.393 - 0.3 = 0.093 and close the loop; with 2 charts a point the filtration is exact until the third
    # chart's score, 0.785 - 0.3 = 0.485, so the loop's bar runs from 0.093 to 0.485
    angles = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    centres = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    gap = np.abs(np.angle(np.exp(1j * (angles[:, None] - centres[None]))))
    cover = _cover(np.maximum(0.0, gap - 0.3))
    bars = nerve_barcodes(cover, max_charts=2).diagrams
    for coeff in (2, 3):
        h1 = bars[coeff][1]
        assert len(h1) == 1 and h1[0] == pytest.approx([0.0927, 0.4854], abs=2e-3)
    assert np.isinf(bars[2][0][:, 1]).sum() == 1


@pytest.mark.parametrize("model, name, orientable", [("klein", "Klein bottle", False), ("torus", "torus", True),
                                                     ("sphere", "sphere", True)])
def test_surfaces_are_named_through_a_local_pca_cover(model, name, orientable):
    points, _ = sample_model(model, 3000, seed=0)
    r = persistent_chart_verdict(fit_local_pca_cover(points, 24, 2, 0), points=points)
    assert r["name"] == name and r["reliable"] and r["orientable"] is orientable
    z2 = r["betti"]["Z2"]
    assert nerve_homology([s for s, v in nerve_entry_values(fit_local_pca_cover(points, 24, 2, 0)).items()
                           if v <= r["tau_star"]], 2)[0][0] == z2[0]


def test_entry_values_equal_the_brute_force_minimum_over_points():
    # every simplex of up to 4 charts among each point's max_charts best, its entry the best witness's worst score
    from itertools import combinations

    rng = np.random.default_rng(3)
    cover = _cover(rng.uniform(0, 2, (60, 30)))
    for max_charts in (3, 7):
        expected = {}
        scores = cover.scores.copy()
        scores[np.arange(len(scores)), np.argmin(scores, axis=1)] = 0.0
        for row in scores:
            best = np.argsort(row, kind="stable")[:max_charts]
            for size in range(1, 5):
                for simplex in combinations(sorted(best.tolist()), size):
                    value = row[list(simplex)].max()
                    expected[simplex] = min(value, expected.get(simplex, np.inf))
        assert nerve_entry_values(cover, max_charts=max_charts) == pytest.approx(expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_skeletal_klein_bottle_needs_a_density_balanced_chart_sample(seed):
    # 90% of the points near the three circles, as in natural-image cores: charts fitted on a random sample never
    # overlap across the thin sheet and the nerve misses the Klein bottle; on a maxmin sample it is read
    from patchreg.topology.pipeline import chart_subset

    points, truth = sample_model("skeletal-klein", 20000, seed=seed)
    readings = {}
    for sample in ("maxmin", "random"):
        subset = chart_subset(points, sample, 3000, seed)
        assert len(subset) == 3000
        readings[sample] = persistent_chart_verdict(fit_local_pca_cover(subset, 24, 2, seed), points=subset)
    assert readings["maxmin"]["name"] == truth == "Klein bottle" and readings["maxmin"]["orientable"] is False
    assert readings["random"]["name"] != truth


def test_chart_subset_bounds_and_samples():
    from patchreg.topology.pipeline import analyse_points, chart_subset

    rng = np.random.default_rng(0)
    # a dense cluster of 900 points and a sparse ring of 100: maxmin gives the ring most of a 60-point sample
    cluster = 0.01 * rng.standard_normal((900, 2))
    angle = rng.uniform(0, 2 * np.pi, 100)
    points = np.r_[cluster, np.c_[np.cos(angle), np.sin(angle)]]
    on_ring = lambda sub: int((np.linalg.norm(sub, axis=1) > 0.5).sum())  # noqa: E731
    assert on_ring(chart_subset(points, "maxmin", 60, seed=0)) >= 50
    assert on_ring(chart_subset(points, "random", 60, seed=0)) <= 15
    assert chart_subset(points, "maxmin", 5000).shape == points.shape  # fewer points than asked: all of them
    with pytest.raises(ValueError, match="chart_sample must be one of"):
        chart_subset(points, "grid")
    with pytest.raises(ValueError, match="max_chart_points must be an int >= 1"):
        analyse_points(points, chart_sample="random", max_chart_points=0)


def _bars(z2_h1, z2_h2, z3_h1, z3_h2):
    from patchreg.topology.persistence import Barcodes

    h0 = np.array([[0.0, np.inf]])
    arr = lambda bars: np.array(bars, dtype=float).reshape(-1, 2)  # noqa: E731
    return Barcodes({2: [h0, arr(z2_h1), arr(z2_h2)], 3: [h0, arr(z3_h1), arr(z3_h2)]}, 48, float("nan"))


def test_late_classes_are_dropped_from_the_first_long_loop_death():
    # a p = 4 natural-image nerve (bench/RESULTS.md, issue 12): the Klein bottle's bars, plus a Z/3 void born at 0.808
    # where a Z/2 loop dies: 0.27 long against the shortest true bar, 0.36, a gap of 1.33 under the rule
    from patchreg.topology.nerve_persistence import drop_late_classes
    from patchreg.topology.persistence import read_betti

    bars = _bars(z2_h1=[[0.297, 0.808], [0.296, 0.659], [0.319, 0.412]],
                 z2_h2=[[0.396, 1.082], [0.854, 1.088], [0.909, 1.104]],
                 z3_h1=[[0.296, 0.659], [0.297, 0.396], [0.319, 0.412]],
                 z3_h2=[[0.808, 1.082], [0.854, 1.088], [0.909, 1.104]])
    whole = read_betti(bars)
    assert not whole["reliable"]
    cut_bars, cut = drop_late_classes(bars)
    assert cut == 0.659  # the first death among the long Z/2 loops
    assert cut_bars.diagrams[2][2].tolist() == [[0.396, 1.082]]  # born before the cut: kept whole
    assert cut_bars.diagrams[3][2].shape == (0, 2) and cut_bars.diagrams[2][1].shape == (3, 2)
    reading = read_betti(cut_bars)
    assert reading["betti"] == {"Z2": (1, 2, 1), "Z3": (1, 1, 0)} and reading["reliable"]


def test_a_cover_without_a_long_loop_is_read_whole():
    from patchreg.topology.nerve_persistence import drop_late_classes

    sphere = _bars(z2_h1=[[0.30, 0.33]], z2_h2=[[0.35, 1.2]], z3_h1=[[0.30, 0.33]], z3_h2=[[0.35, 1.2]])
    same, cut = drop_late_classes(sphere)
    assert cut == np.inf and same is sphere


@pytest.mark.parametrize("truth", ["klein", "torus", "sphere"])
def test_the_cut_reading_names_sampled_surfaces(truth):
    points, name = sample_model(truth, 3000, seed=0)
    cover = fit_local_pca_cover(points, 24, 2, 0)
    r = persistent_chart_verdict(cover, points=points, cut="first-loop-death")
    assert r["name"] == name and r["cut"] == "first-loop-death"
    assert (r["cut_at"] == np.inf) == (truth == "sphere")
    with pytest.raises(ValueError, match="cut must be one of"):
        persistent_chart_verdict(cover, cut="last")


def test_both_cuts_from_one_filtration_equal_each_read_alone():
    from patchreg.topology.nerve_persistence import CUTS, persistent_chart_verdicts

    points, _ = sample_model("klein", 2000, seed=1)
    cover = fit_local_pca_cover(points, 24, 2, 1)
    both = persistent_chart_verdicts(cover, points=points)
    assert set(both) == set(CUTS)
    for cut in CUTS:
        alone = persistent_chart_verdict(cover, points=points, cut=cut)
        assert (both[cut]["betti"], both[cut]["gap"], both[cut]["cut_at"]) == (alone["betti"], alone["gap"], alone["cut_at"])
