"""Density filtration X(k, q) and maxmin landmarks against brute force."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from patchreg.topology.density import density_core, knn_distance
from patchreg.topology.landmarks import maxmin_landmarks


def test_knn_distance_matches_brute_force():
    points = np.random.default_rng(0).standard_normal((300, 5))
    dist = np.sort(cdist(points, points), axis=1)  # column 0: the point itself
    for k in (1, 7, 50):
        np.testing.assert_allclose(knn_distance(points, k), dist[:, k], rtol=1e-12)
        np.testing.assert_allclose(knn_distance(points, k, queries=[3, 10]), dist[[3, 10], k], rtol=1e-12)
    high = np.random.default_rng(3).standard_normal((300, 20))  # brute-force path (dim > 12)
    dist = np.sort(cdist(high, high), axis=1)
    np.testing.assert_allclose(knn_distance(high, 9), dist[:, 9], rtol=1e-8)


def test_density_core_keeps_the_densest_fraction():
    rng = np.random.default_rng(1)
    dense = 0.01 * rng.standard_normal((100, 2))
    sparse = rng.uniform(-5, 5, (300, 2))
    core = density_core(np.vstack([dense, sparse]), k=10, q=25)
    assert len(core) == 100
    assert np.all(core < 100)


def test_density_core_bad_inputs():
    points = np.zeros((10, 2))
    with pytest.raises(ValueError, match="only 10 points"):
        density_core(points, 10, 30)
    for q in (0, -1, 100.5):
        with pytest.raises(ValueError, match=r"\(0, 100\]"):
            density_core(points, 3, q)
    with pytest.raises(TypeError, match="k must be an int"):
        density_core(points, 2.5, 30)


def test_maxmin_landmarks_are_farthest_points_and_cover():
    points = np.random.default_rng(2).standard_normal((400, 3))
    chosen, radius = maxmin_landmarks(points, 20, seed=3)
    assert len(set(chosen.tolist())) == 20
    d = cdist(points, points[chosen])
    assert radius == pytest.approx(d.min(axis=1).max())
    for i in range(1, 20):  # each new landmark is the farthest from the previous ones
        assert d[chosen[i], :i].min() == pytest.approx(cdist(points, points[chosen[:i]]).min(axis=1).max())


def test_chunked_neighbour_distances_resume_from_their_cache(tmp_path):
    from patchreg.topology.knn import chunked_kth_neighbour_distances, kth_neighbour_distances

    points = np.random.default_rng(5).normal(size=(700, 3))
    whole, _ = kth_neighbour_distances(points, [2, 5], query_rows=np.arange(450))
    prefix = tmp_path / "rho"
    first = chunked_kth_neighbour_distances(points, [5, 2], 250, prefix, chunk=200)
    np.testing.assert_allclose(first, whole[:250])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rho_c000.npy", "rho_c001.npy"]
    np.save(tmp_path / "rho_c001.npy", np.full((200, 2), -1.0))  # a longer run reads saved chunks, computes new ones
    again = chunked_kth_neighbour_distances(points, [2, 5], 450, prefix, chunk=200)
    np.testing.assert_allclose(again[:200], whole[:200])
    assert np.all(again[200:400] == -1.0)
    np.testing.assert_allclose(again[400:], whole[400:450])
    with pytest.raises(ValueError, match="n_rows"):
        chunked_kth_neighbour_distances(points, [2], 0, prefix)
