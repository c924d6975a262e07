"""Real van Hateren data (../shared/data/carlsson): the density cores are recomputed from the 50k
sample and both cores read b1 = 1 (circle) and b1 = 5 (three circles), by persistent homology and
by the chart nerve. Fast versions here (query subsample, landmarks, chart subsample); the full
recomputation is in bench/topology_experiments.py."""

from pathlib import Path

import numpy as np
import pytest

from patchreg.topology.density import knn_distance
from patchreg.topology.pipeline import homology_from_charts, homology_from_persistence
from patchreg.topology.preprocessing import check_on_sphere, load_points

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "carlsson"
pytestmark = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real patch data not found at {DATA} (a checkout without ../shared/data)"
)


@pytest.fixture(scope="module")
def sample():
    points = load_points(DATA / "n50000Dct.mat")
    check_on_sphere(points)
    return points


def _published(k):
    return load_points(DATA / f"nk{k}c30Dct.mat")


@pytest.mark.parametrize("k", [300, 15])
def test_recomputed_core_membership_matches_published(sample, k):
    # rho_k for 1500 random points (neighbours searched among all 50k); the 30% quantile of the
    # sample estimates the core threshold; points clearly on one side must agree with the file.
    rng = np.random.default_rng(0)
    queries = rng.choice(len(sample), 1500, replace=False)
    rho = knn_distance(sample, k, queries=queries)
    threshold = np.quantile(rho, 0.30)
    published = {tuple(row) for row in np.round(_published(k), 12)}
    in_published = np.array([tuple(row) in published for row in np.round(sample[queries], 12)])
    clear = np.abs(rho - threshold) > 0.03 * threshold
    agreement = np.mean((rho[clear] <= threshold) == in_published[clear])
    assert clear.mean() > 0.8 and agreement > 0.99, (clear.mean(), agreement)


@pytest.mark.parametrize("k, truth, n_charts", [(300, "circle", 16), (15, "three-circle model", 32)])
def test_published_cores_read_b1_both_ways(k, truth, n_charts):
    core = _published(k)
    ph = homology_from_persistence(core, n_landmarks=100, seed=0)
    assert ph["name"] == truth and ph["reliable"], (ph["betti"], ph["gap"])
    subset = core[np.random.default_rng(0).choice(len(core), 3000, replace=False)]
    charts = homology_from_charts(subset, n_charts=n_charts, dim=2, seed=0)
    assert charts["name"] == truth and charts["stable"], [s["betti"] for s in charts["scan"]]
