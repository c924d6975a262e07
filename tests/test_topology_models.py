"""Synthetic clouds of known topology are named correctly by persistent homology and by the chart
nerve (small sizes here; more seeds and sizes in bench/topology_experiments.py)."""

import numpy as np
import pytest

from patchreg.topology.models import KNOWN_BETTI, polynomial_patches, sample_model
from patchreg.topology.pipeline import homology_from_charts, homology_from_persistence

# (model, patch size, chart dimension, K, n points): K fixed here to keep the tests fast (bench
# uses "auto"). Surfaces need ~3000 points for thick enough chart overlaps (measured: at 1500
# the torus and Klein nerves are often unstable), curves and small surfaces less.
CASES = [
    ("klein", 3, 2, 32, 3000),
    ("torus", None, 2, 32, 3000),
    ("sphere", None, 2, 16, 1500),
    ("projective-plane", None, 2, 16, 1500),
    ("primary-circle", 4, 1, 16, 1000),
    ("three-circle", 5, 1, 16, 1500),
    ("two-circles", None, 1, 16, 1000),
]


def test_polynomial_model_has_the_klein_identification():
    t, u = np.random.default_rng(0).uniform(0, 2 * np.pi, (2, 50))
    np.testing.assert_allclose(polynomial_patches(t + np.pi, -u, 4), polynomial_patches(t, u, 4), atol=1e-12)


@pytest.mark.parametrize("name, p, dim, n_charts, n", CASES)
def test_charts_and_persistence_name_the_model(name, p, dim, n_charts, n):
    seed = 2
    points, truth = sample_model(name, n, seed=seed, patch_size=p or 3)
    ph = homology_from_persistence(points, n_landmarks=100, seed=seed)
    assert ph["name"] == truth
    if truth in KNOWN_BETTI:
        assert ph["betti"]["Z2"] == KNOWN_BETTI[truth]["Z2"] and ph["betti"]["Z3"] == KNOWN_BETTI[truth]["Z3"]
    charts = homology_from_charts(points, n_charts=n_charts, dim=dim, seed=seed)
    assert charts["name"] == truth and charts["stable"]
    if dim == 2:  # orientability from transition Jacobians matches the surface
        assert charts["orientable"] is (truth in ("sphere", "torus"))


@pytest.mark.parametrize("seed", [4, 5])
def test_torus_and_klein_bottle_differ_over_z3(seed):
    for name, truth in (("torus", "torus"), ("klein", "Klein bottle")):
        points, _ = sample_model(name, 3000, seed=seed, patch_size=5)
        ph = homology_from_persistence(points, n_landmarks=100, seed=seed)
        assert ph["name"] == truth, (name, ph["betti"])


def test_skeletal_klein_bottle_keeps_most_points_near_the_three_circles():
    from patchreg.topology.model_fit import project_to_model

    points, truth = sample_model("skeletal-klein", 4000, seed=0)
    assert truth == "Klein bottle"
    on_klein = project_to_model(points, 3, "klein")[0]
    near_circles = project_to_model(points, 3, "three-circle")[0]
    assert np.median(on_klein) < 0.05  # on the Klein bottle
    assert 0.8 < np.mean(near_circles < 0.25) < 0.97  # mostly near the circles, a sheet of about 10% away from them
