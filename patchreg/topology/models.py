"""Synthetic point clouds with known topology, for checking the pipeline end to end.

Patch models (any patch size p) go through the same patch-space map as image patches
(mean removal, D-normalisation, DCT coordinates) and lie on S^(p^2-2):
- polynomial (Klein bottle) model of Carlsson et al.: f = c (a x + b y)^2 + d (a x + b y) with
  (a, b) = (cos t, sin t), (c, d) = (cos u, sin u); (t, u) ~ (t + pi, -u) makes it a Klein bottle;
- primary circle: linear patches a x + b y (c = 0, d = 1);
- three-circle model: primary circle plus the horizontal (a, b) = (1, 0) and vertical (0, 1)
  secondary circles c x^2 + d x, c y^2 + d y; 3 circles meeting in 4 points, b1 = 5.
- skeletal Klein bottle: the Klein bottle with most of its mass near the three circles (a thin
  sheet between them), as in the density cores of natural-image patches.
Plain point clouds: a flat (Clifford) torus on S^3, the round sphere S^2, the projective plane
(Veronese embedding of S^2 in S^5), several disjoint circles.
Each generator returns (points, expected) with `expected` the true Betti numbers over Z/2, Z/3.
"""

from __future__ import annotations

import numpy as np

from .preprocessing import patches_to_sphere

__all__ = ["MODELS", "KNOWN_BETTI", "patch_grid", "polynomial_patches", "sample_model"]

# Betti numbers (b0, b1, b2) over Z/2 and Z/3 of each named topology.
KNOWN_BETTI = {
    "circle": {"Z2": (1, 1, 0), "Z3": (1, 1, 0)},
    "three-circle model": {"Z2": (1, 5, 0), "Z3": (1, 5, 0)},
    "sphere": {"Z2": (1, 0, 1), "Z3": (1, 0, 1)},
    "torus": {"Z2": (1, 2, 1), "Z3": (1, 2, 1)},
    "Klein bottle": {"Z2": (1, 2, 1), "Z3": (1, 1, 0)},
    "projective plane": {"Z2": (1, 1, 1), "Z3": (1, 0, 0)},
}


def patch_grid(patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred pixel coordinates (x: columns, y: rows) in [-1, 1], each flattened row-major (p^2,)."""
    if patch_size < 2:
        raise ValueError(f"patch_size must be >= 2, got {patch_size}")
    c = np.linspace(-1.0, 1.0, patch_size)
    y, x = np.meshgrid(c, c, indexing="ij")
    return x.ravel(), y.ravel()


def polynomial_patches(t: np.ndarray, u: np.ndarray, patch_size: int) -> np.ndarray:
    """Patches f = cos(u) s^2 + sin(u) s with s = cos(t) x + sin(t) y, shape (len(t), p^2)."""
    x, y = patch_grid(patch_size)
    s = np.cos(t)[:, None] * x + np.sin(t)[:, None] * y
    return np.cos(u)[:, None] * s**2 + np.sin(u)[:, None] * s


def _to_sphere(patches: np.ndarray) -> np.ndarray:
    points, _ = patches_to_sphere(patches, top_fraction=1.0)
    return points


def _add_noise(points: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of std `noise` per coordinate; clouds on the unit sphere are put back on it."""
    noisy = points + noise * rng.standard_normal(points.shape)
    if np.allclose(np.linalg.norm(points, axis=1), 1.0):
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    return noisy


def klein_bottle(n, rng, patch_size=3):
    if patch_size < 3:
        raise ValueError("the Klein bottle model needs patch_size >= 3 (quadratics are constant on 2x2)")
    t, u = rng.uniform(0, 2 * np.pi, (2, n))
    return _to_sphere(polynomial_patches(t, u, patch_size))


def skeletal_klein_bottle(n, rng, patch_size=3, sheet=0.1, jitter=0.1):
    """A fraction `sheet` of the points uniform on the Klein bottle, the rest on the three circles
    (each chosen with equal odds) with Gaussian jitter `jitter` (radians) across them."""
    if patch_size < 3:
        raise ValueError("the Klein bottle model needs patch_size >= 3 (quadratics are constant on 2x2)")
    n_sheet = int(round(n * sheet))
    t_sheet, u_sheet = rng.uniform(0, 2 * np.pi, (2, n_sheet))
    n_circles = n - n_sheet
    circle = rng.integers(0, 3, n_circles)  # 0 primary, 1 horizontal, 2 vertical
    along = rng.uniform(0, 2 * np.pi, n_circles)
    across = jitter * rng.standard_normal(n_circles)
    t = np.where(circle == 0, along, np.where(circle == 1, 0.0, np.pi / 2) + across)
    u = np.where(circle == 0, np.pi / 2 + across, along)
    return _to_sphere(polynomial_patches(np.r_[t_sheet, t], np.r_[u_sheet, u], patch_size))


def primary_circle(n, rng, patch_size=3):
    t = rng.uniform(0, 2 * np.pi, n)
    return _to_sphere(polynomial_patches(t, np.full(n, np.pi / 2), patch_size))


def three_circle(n, rng, patch_size=3):
    if patch_size < 3:
        raise ValueError("the three-circle model needs patch_size >= 3")
    n_primary = n // 3
    n_horizontal = (n - n_primary) // 2
    n_vertical = n - n_primary - n_horizontal
    t = np.r_[rng.uniform(0, 2 * np.pi, n_primary), np.zeros(n_horizontal), np.full(n_vertical, np.pi / 2)]
    u = np.r_[np.full(n_primary, np.pi / 2), rng.uniform(0, 2 * np.pi, n_horizontal + n_vertical)]
    return _to_sphere(polynomial_patches(t, u, patch_size))


def torus(n, rng, patch_size=None):
    """Flat Clifford torus (cos a, sin a, cos b, sin b) / sqrt 2 on S^3."""
    a, b = rng.uniform(0, 2 * np.pi, (2, n))
    return np.stack([np.cos(a), np.sin(a), np.cos(b), np.sin(b)], axis=1) / np.sqrt(2)


def _uniform_s2(n, rng):
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def sphere(n, rng, patch_size=None):
    return _uniform_s2(n, rng)


def projective_plane(n, rng, patch_size=None):
    """Veronese map v -> v v^T (upper triangle, off-diagonals x sqrt 2): RP^2 on S^5."""
    v = _uniform_s2(n, rng)
    i, j = np.triu_indices(3)
    scale = np.where(i == j, 1.0, np.sqrt(2.0))
    return v[:, i] * v[:, j] * scale


def two_circles(n, rng, patch_size=None):
    """Two disjoint unit circles in R^3, 3 apart (several circles: b0 = b1 = 2)."""
    a = rng.uniform(0, 2 * np.pi, n)
    shift = np.where(np.arange(n) < n // 2, 0.0, 3.0)
    return np.stack([np.cos(a) + shift, np.sin(a), np.zeros(n)], axis=1)


# name -> (generator, true topology name)
MODELS = {
    "klein": (klein_bottle, "Klein bottle"),
    "skeletal-klein": (skeletal_klein_bottle, "Klein bottle"),
    "primary-circle": (primary_circle, "circle"),
    "three-circle": (three_circle, "three-circle model"),
    "torus": (torus, "torus"),
    "sphere": (sphere, "sphere"),
    "projective-plane": (projective_plane, "projective plane"),
    "two-circles": (two_circles, "several circles"),
}


def sample_model(name: str, n: int, seed: int = 0, patch_size: int = 3, noise: float = 0.0):
    """(points (n, dim), true topology name) for a model of MODELS."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    generator, truth = MODELS[name]
    points = generator(n, rng, patch_size)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    return (_add_noise(points, noise, rng) if noise > 0 else points), truth
