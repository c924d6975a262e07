"""Distances from patch points to the Klein-bottle model and to the three-circle model (any p).

Klein-bottle model (Carlsson et al.; Perea and Carlsson 2014 project n x n patches onto it): the
patches f = cos(u) s^2 + sin(u) s, s = cos(t) x + sin(t) y on the p x p grid, mapped to the patch
sphere S^(p^2-2) by the same pipeline as image patches (models.polynomial_patches). Since
K(t + pi, u) = K(t, pi - u), t in [0, pi) and u in [0, 2 pi) cover it. The three-circle model is
the part of it with u = pi/2 or 3 pi/2 (primary circle: linear patches) or t in {0, pi/2}
(horizontal and vertical secondary circles).

Projection: onto a dense grid of model points (n_t x n_u), nearest by chord distance (on the unit
sphere the nearest point is the largest dot product, one float32 matmul per block). The grid step
bounds the error: the reported distance exceeds the true one by at most half a grid cell's chord,
which `grid_resolution` reports (the largest distance from a finer grid to this one).
"""

from __future__ import annotations

import numpy as np
import torch

from .models import polynomial_patches
from .preprocessing import patches_to_sphere

__all__ = ["klein_grid", "project_to_model", "distance_summary", "MODEL_NAMES"]

MODEL_NAMES = ("klein", "three-circle")


def klein_grid(patch_size: int, n_t: int = 120, n_u: int = 240, model: str = "klein"):
    """(model points (M, p^2 - 1) on the patch sphere, parameters (M, 2) = (t, u))."""
    if model not in MODEL_NAMES:
        raise ValueError(f"model must be one of {MODEL_NAMES}, got {model!r}")
    if patch_size < 3:
        raise ValueError(f"the Klein-bottle model needs patch_size >= 3, got {patch_size}")
    t = np.arange(n_t) * np.pi / n_t
    u = np.arange(n_u) * 2 * np.pi / n_u
    tt, uu = (a.ravel() for a in np.meshgrid(t, u, indexing="ij"))
    if model == "three-circle":
        # dense circles: primary (u = pi/2 and 3pi/2 for every t) and the secondary ones (t = 0, pi/2)
        t_dense = np.arange(4 * n_t) * np.pi / (4 * n_t)
        u_dense = np.arange(2 * n_u) * 2 * np.pi / (2 * n_u)
        tt = np.r_[t_dense, t_dense, np.zeros(len(u_dense)), np.full(len(u_dense), np.pi / 2)]
        uu = np.r_[np.full(len(t_dense), np.pi / 2), np.full(len(t_dense), 1.5 * np.pi), u_dense, u_dense]
    points, _ = patches_to_sphere(polynomial_patches(tt, uu, patch_size), top_fraction=1.0)
    return points, np.stack([tt, uu], axis=1)


@torch.no_grad()
def project_to_model(points, patch_size: int, model: str = "klein", n_t: int = 120, n_u: int = 240,
                     block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(chord distance (N,), model parameters (t, u) (N, 2)) of the nearest model grid point."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != patch_size**2 - 1:
        raise ValueError(f"points must have shape (N, {patch_size**2 - 1}) for patch_size={patch_size}, got {points.shape}")
    grid, params = klein_grid(patch_size, n_t, n_u, model)
    g = torch.from_numpy(grid.astype(np.float32))
    dist, best = np.empty(len(points)), np.empty(len(points), dtype=np.int64)
    for start in range(0, len(points), block):
        x = torch.from_numpy(np.ascontiguousarray(points[start : start + block], dtype=np.float32))
        dots, idx = (x @ g.T).max(dim=1)
        sq = (x * x).sum(dim=1) + 1.0 - 2.0 * dots
        dist[start : start + len(x)] = sq.clamp_min(0.0).sqrt().double().numpy()
        best[start : start + len(x)] = idx.numpy()
    return dist, params[best]


def grid_resolution(patch_size: int, n_t: int = 120, n_u: int = 240) -> float:
    """Largest distance from a 3x finer grid's points to this grid (the projection's error bound)."""
    fine, _ = klein_grid(patch_size, 3 * n_t, 3 * n_u)
    return float(project_to_model(fine, patch_size, "klein", n_t, n_u)[0].max())


def distance_summary(distances) -> dict:
    d = np.asarray(distances, dtype=np.float64)
    q = np.quantile(d, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"n": int(len(d)), "mean": round(float(d.mean()), 4),
            **{f"q{int(100 * a)}": round(float(v), 4) for a, v in zip((0.1, 0.25, 0.5, 0.75, 0.9), q)}}
