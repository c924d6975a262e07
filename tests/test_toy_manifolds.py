"""Toy manifolds: seeded samplers, area-uniform sampling, exact distances, point clouds."""

import math

import numpy as np
import pytest

from patchreg.data.toy_manifolds import (
    TOY_MANIFOLDS, Annulus, Circle, KleinBottle, PointCloud, SwissRoll, Torus, TwoCircles, get_manifold, load_point_cloud,
)

NAMES = sorted(TOY_MANIFOLDS)


@pytest.mark.parametrize("name", NAMES)
def test_samples_lie_on_manifold_and_are_seeded(name):
    m = get_manifold(name)
    x = m.sample(300, seed=3)
    assert x.shape == (300, m.ambient_dim) and x.dtype == np.float64
    assert m.distance(x).max() < 1e-9
    np.testing.assert_array_equal(x, m.sample(300, seed=3))
    assert not np.allclose(x, m.sample(300, seed=4))


def _normals(jac):
    """Orthonormal basis (N, n, n-2) of the normal spaces from tangent Jacobians (N, n, 2)."""
    q, _ = np.linalg.qr(np.concatenate([jac, np.random.default_rng(0).standard_normal(jac.shape[:2] + (jac.shape[1] - 2,))], 2))
    return q[:, :, 2:]


@pytest.mark.parametrize("surface", [SwissRoll(), KleinBottle(), Torus()], ids=["swiss_roll", "klein", "torus"])
def test_distance_of_normal_offsets_equals_offset(surface):
    rng = np.random.default_rng(1)
    if isinstance(surface, Torus):
        u, v = rng.uniform(0, 2 * math.pi, (2, 200))
        ring = surface.major + surface.minor * np.cos(v)
        base = np.stack([ring * np.cos(u), ring * np.sin(u), surface.minor * np.sin(v)], 1)
        normal = np.stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)], 1)[:, :, None]
    else:
        (u0, u1), (v0, v1) = surface.box
        u, v = rng.uniform(u0 + 0.1, u1 - 0.1, 200), rng.uniform(v0 + 0.1, v1 - 0.1, 200)
        base, normal = surface.param(u, v), _normals(surface.param_jacobian(u, v))
    direction = normal @ rng.standard_normal((200, normal.shape[2], 1))
    direction = direction[..., 0] / np.linalg.norm(direction[..., 0], axis=1, keepdims=True)
    offset = rng.uniform(0.0, 0.08, 200)  # well inside the reach of each surface
    np.testing.assert_allclose(surface.distance(base + offset[:, None] * direction), offset, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_distance_never_exceeds_dense_sample_distance(name):
    m = get_manifold(name)
    dense = m.sample(8000, seed=0)
    q = m.sample(60, seed=1) + 0.3 * np.random.default_rng(2).standard_normal((60, m.ambient_dim))
    brute = np.sqrt(((q[:, None, :] - dense[None]) ** 2).sum(-1)).min(1)
    d = m.distance(q)
    assert np.all(d <= brute + 1e-9)
    assert np.all(brute - d < 0.15)  # the dense sample is within its spacing of the nearest point


def test_closed_form_distances():
    assert Circle(2.0, (1.0, 0.0)).distance([[1.0, 3.0]])[0] == pytest.approx(1.0)
    assert TwoCircles().distance([[1.5, 0.0], [0.0, 0.0]]).tolist() == pytest.approx([1.0, 0.5])
    assert get_manifold("sphere").distance([[0.0, 0.0, 0.0], [0.0, 3.0, 0.0]]).tolist() == pytest.approx([1.0, 2.0])
    # annulus 0.5 <= |(x, y)| <= 1.5 at z = 0: zero on it, hypot(radial overshoot, height) off it
    points = [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, -2.0, 0.0], [0.3, 0.0, 0.0], [1.0, 0.0, -0.7], [1.8, 0.0, 0.4]]
    assert Annulus().distance(points).tolist() == pytest.approx([0, 0.5, 0.5, 0.2, 0.7, 0.5])


def test_annulus_sampling_is_area_uniform():
    a = Annulus(0.5, 1.5)
    r = np.linalg.norm(a.sample(20000, seed=0), axis=1)
    expected = (1.0**2 - 0.5**2) / (1.5**2 - 0.5**2)  # area fraction inside radius 1
    assert abs((r < 1.0).mean() - expected) < 4 * math.sqrt(expected * (1 - expected) / len(r))


def test_torus_sampling_is_area_uniform():
    t = Torus(1.0, 0.4)
    x = t.sample(20000, seed=0)
    outer = np.hypot(x[:, 0], x[:, 1]) > t.major
    expected = (math.pi * t.major + 2 * t.minor) / (2 * math.pi * t.major)
    assert abs(outer.mean() - expected) < 4 * math.sqrt(expected * (1 - expected) / len(x))


def test_klein_identification_and_injectivity():
    k = KleinBottle()
    u, v = np.random.default_rng(0).uniform(0, 2 * math.pi, (2, 50))
    np.testing.assert_allclose(k.param(u + 2 * math.pi, v), k.param(u, -v), atol=1e-12)
    # distinct parameters in the fundamental domain give distinct points
    grid_uv, pts = k._grid_points()
    d = np.sqrt(((pts[:200, None] - pts[None, 200:400]) ** 2).sum(-1))
    assert d.min() > 1e-3


def test_point_cloud_from_npy(tmp_path):
    pts = Circle().sample(500, seed=0)
    np.save(tmp_path / "c.npy", pts)
    cloud = load_point_cloud(tmp_path / "c.npy", intrinsic_dim=1)
    assert cloud.ambient_dim == 2 and cloud.distance(pts).max() < 1e-6  # sqrt of a rounded 0
    s = cloud.sample(100, seed=1)
    assert cloud.distance(s).max() < 1e-6
    assert cloud.distance([[0.0, 0.0]])[0] == pytest.approx(1.0, abs=1e-9)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="unknown toy manifold"):
        get_manifold("moebius")
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        get_manifold("sphere").distance(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        get_manifold("circle").distance([[np.nan, 0.0]])
    with pytest.raises(ValueError, match="n_points"):
        get_manifold("torus").sample(0)
    with pytest.raises(ValueError, match="inner < outer"):
        Annulus(inner=1.0, outer=1.0)
    with pytest.raises(ValueError, match="disjoint"):
        TwoCircles(radius=1.0, offset=0.5)
    with pytest.raises(ValueError, match="NaN"):
        PointCloud(np.array([[0.0, np.nan], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="intrinsic_dim"):
        PointCloud(np.zeros((5, 2)), intrinsic_dim=2)
    with pytest.raises(FileNotFoundError):
        load_point_cloud(tmp_path / "missing.npy")
