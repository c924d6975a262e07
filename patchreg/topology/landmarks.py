"""Maxmin (farthest-point) landmarks: an evenly spread subset on which Rips complexes stay small."""

from __future__ import annotations

import numpy as np

__all__ = ["maxmin_landmarks"]


def maxmin_landmarks(points: np.ndarray, n_landmarks: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """Indices of n_landmarks points chosen greedily farthest from those already chosen.

    The first landmark is random (seeded). Returns (indices, covering radius), the radius being
    max over points of the distance to the nearest landmark: the Hausdorff distance between the
    landmarks and the cloud, which bounds how far landmark barcodes can move (stability theorem).
    """
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    if isinstance(n_landmarks, bool) or not isinstance(n_landmarks, (int, np.integer)):
        raise TypeError(f"n_landmarks must be an int, got {type(n_landmarks).__name__}")
    if n_landmarks < 1:
        raise ValueError(f"n_landmarks must be >= 1, got {n_landmarks}")
    n_landmarks = min(int(n_landmarks), n)
    chosen = np.empty(n_landmarks, dtype=np.int64)
    chosen[0] = np.random.default_rng(seed).integers(n)
    nearest = np.linalg.norm(points - points[chosen[0]], axis=1)
    for i in range(1, n_landmarks):
        chosen[i] = int(np.argmax(nearest))
        np.minimum(nearest, np.linalg.norm(points - points[chosen[i]], axis=1), out=nearest)
    return chosen, float(nearest.max())
