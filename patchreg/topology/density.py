"""Density filtration X(k, q) of Carlsson et al.: the q% densest points by k-th neighbour distance."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["knn_distance", "density_core", "check_core_parameters"]

KDTREE_MAX_DIM = 12  # above this, brute force beats cKDTree (curse of dimensionality)


def check_core_parameters(n_points: int, k: int, q: float) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k >= n_points:
        raise ValueError(f"k={k} needs more than k points, but there are only {n_points} points")
    if not 0.0 < q <= 100.0:
        raise ValueError(f"q must be a percentage in (0, 100], got {q}")


def knn_distance(points: np.ndarray, k: int, workers: int = -1, queries=None) -> np.ndarray:
    """rho_k(x): distance from each point to its k-th nearest neighbour in `points`, x excluded.

    queries: optional indices into points (only those rows are answered; the neighbours are
    still searched among all points), for estimating a density filtration from a sample.
    """
    points = np.asarray(points, dtype=np.float64)
    check_core_parameters(len(points), k, 100.0)
    targets = points if queries is None else points[np.asarray(queries)]
    if points.shape[1] > KDTREE_MAX_DIM:
        return _knn_distance_brute(points, targets, k)
    distances, _ = cKDTree(points).query(targets, k=k + 1, workers=workers)
    # Column 0 is the point itself (distance 0); an exact duplicate may swap places with it,
    # which leaves the k-th distance unchanged.
    return distances[:, k]


def _knn_distance_brute(points: np.ndarray, targets: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Chunked exact distances (BLAS): faster than a k-d tree in the 15-63 dims of 4x4-8x8 patches."""
    sq_points = np.einsum("ij,ij->i", points, points)
    out = np.empty(len(targets))
    for start in range(0, len(targets), chunk):
        block = targets[start : start + chunk]
        sq = np.einsum("ij,ij->i", block, block)[:, None] + sq_points[None] - 2.0 * block @ points.T
        kth = np.partition(np.maximum(sq, 0.0), k, axis=1)[:, k]  # index 0 is the point itself
        out[start : start + chunk] = np.sqrt(kth)
    return out


def density_core(points: np.ndarray, k: int, q: float, workers: int = -1) -> np.ndarray:
    """Indices (sorted) of X(k, q): the round(q% of N) points with the smallest rho_k."""
    points = np.asarray(points, dtype=np.float64)
    check_core_parameters(len(points), k, q)
    rho = knn_distance(points, k, workers)
    n_keep = max(1, int(round(q / 100.0 * len(points))))
    return np.sort(np.argsort(rho, kind="stable")[:n_keep])
