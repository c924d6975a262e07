"""Chart covers: the interface the nerve consumes, and a simple local-PCA cover fitter.

Interface (`ChartCover`), so a learned chart mixture (patchreg.charts) can plug in later:
- scores (N, K): how badly chart k explains point i, dimensionless, lower is better (e.g. a
  per-chart reconstruction error divided by a chart scale, or -log responsibility). Point i
  belongs to chart k at overlap threshold tau iff scores[i, k] <= tau; every point also belongs
  to its best chart, so the cover always covers the data.
- tangents (K, n, d) or (N, K, n, d): decoder Jacobians dD_k/dz (per chart, or per point). The
  transition map z_k = E_k(D_j(z_j)) has Jacobian pinv(J_k) J_j on an overlap; its determinant
  sign orients the overlap.
- latents (N, K, d) and centres (K, n): chart coordinates and chart positions, for figures.

`fit_local_pca_cover`: K centres by maxmin + Lloyd (k-means) iterations; chart k is the affine
d-plane of the local PCA of its cell, with latent domain the disc of radius R_k (the largest
latent norm in the cell); the decoder is D_k(z) = mu_k + U_k z and the encoder clips
U_k^T (x - mu_k) to the disc. The score is the reconstruction error ||x - D_k(E_k(x))|| in
excess of the chart's own error level (90th percentile over its cell: curvature and noise),
divided by the median chart radius; distant points score high (their latent is clipped), and
tau reads as "how much worse than for its own points, in chart radii, chart k may explain a
point that still belongs to it".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .landmarks import maxmin_landmarks

OWN_ERROR_QUANTILE = 0.9

__all__ = ["ChartCover", "fit_local_pca_cover", "chart_flatness", "estimate_chart_dim", "choose_num_charts"]


@dataclass
class ChartCover:
    scores: np.ndarray  # (N, K), lower = better explained
    tangents: np.ndarray  # (K, n, d) or (N, K, n, d) decoder Jacobians
    dim: int
    latents: np.ndarray | None = None  # (N, K, d)
    centres: np.ndarray | None = None  # (K, n)
    description: str = ""

    def __post_init__(self):
        if self.scores.ndim != 2:
            raise ValueError(f"scores must be (N, K), got shape {self.scores.shape}")
        n_charts = self.scores.shape[1]
        if self.tangents.ndim not in (3, 4) or self.tangents.shape[-3] != n_charts:
            raise ValueError(f"tangents must be (K, n, d) or (N, K, n, d) with K={n_charts}, got {self.tangents.shape}")
        if self.tangents.shape[-1] != self.dim:
            raise ValueError(f"tangents have latent size {self.tangents.shape[-1]}, but dim={self.dim}")

    @property
    def n_charts(self) -> int:
        return self.scores.shape[1]

    def membership(self, tau: float) -> np.ndarray:
        """(N, K) bool: point i lies in chart k."""
        member = self.scores <= tau
        member[np.arange(len(member)), np.argmin(self.scores, axis=1)] = True
        return member

    def tangent(self, point: int, chart: int) -> np.ndarray:
        return self.tangents[chart] if self.tangents.ndim == 3 else self.tangents[point, chart]


def _kmeans(points: np.ndarray, n_charts: int, seed: int, iterations: int = 10) -> np.ndarray:
    """Cell labels: maxmin seeds (spread evenly, deterministic given the seed), then Lloyd steps."""
    from scipy.spatial import cKDTree

    seeds, _ = maxmin_landmarks(points, n_charts, seed)
    centres = points[seeds].copy()
    for _ in range(iterations):
        _, labels = cKDTree(centres).query(points)
        for k in range(n_charts):
            if np.any(labels == k):
                centres[k] = points[labels == k].mean(axis=0)
    _, labels = cKDTree(centres).query(points)
    return labels


def _local_pca(cell: np.ndarray):
    mean = cell.mean(axis=0)
    _, sing, vt = np.linalg.svd(cell - mean, full_matrices=True)  # full: tiny cells still give d axes
    variances = np.zeros(cell.shape[1])
    variances[: len(sing)] = sing**2 / max(len(cell) - 1, 1)
    return mean, vt.T, variances


def _cells(points: np.ndarray, n_charts: int, seed: int):
    if n_charts < 1 or n_charts > len(points):
        raise ValueError(f"n_charts must be in [1, {len(points)}] (the number of points), got {n_charts}")
    _, labels = np.unique(_kmeans(points, n_charts, seed), return_inverse=True)  # drop empty cells
    return labels, [_local_pca(points[labels == k]) for k in range(labels.max() + 1)]


def chart_flatness(points: np.ndarray, n_charts: int, dim: int, seed: int = 0) -> np.ndarray:
    """Per chart, the fraction of its cell's variance outside its best d-plane (curvature + noise)."""
    _, charts = _cells(points, n_charts, seed)
    return np.array([v[dim:].sum() / max(v.sum(), 1e-300) for _, _, v in charts])


def estimate_chart_dim(points: np.ndarray, n_charts: int = 32, seed: int = 0, explained: float = 0.8) -> int:
    """1 or 2: the smallest d whose d-planes hold `explained` of the variance in the median cell."""
    n_charts = min(n_charts, max(1, len(points) // 20))
    flat_1 = np.median(chart_flatness(points, n_charts, 1, seed))
    return 1 if 1.0 - flat_1 >= explained else 2


def choose_num_charts(
    points: np.ndarray, dim: int, candidates=(8, 16, 32, 64, 128), flatness: float = 0.1, seed: int = 0, min_points: int = 20
) -> tuple[int, list]:
    """Smallest K whose median chart is flat, or past which smaller charts stop getting flatter.

    Flat: variance outside the d-plane <= flatness. On noisy data the outside variance is noise
    and does not fall with K; then K stops at the first candidate whose successor is not at least
    10% flatter. Returns (K, [(K, median flatness), ...]). K is capped so each chart keeps
    >= min_points points.
    """
    allowed = [k for k in candidates if k * min_points <= len(points)] or [max(1, len(points) // min_points)]
    trace = []
    for k in allowed:
        value = float(np.median(chart_flatness(points, k, dim, seed)))
        trace.append((k, value))
        if value <= flatness:
            return k, trace
        if len(trace) >= 2 and value > 0.9 * trace[-2][1]:
            return trace[-2][0], trace
    return allowed[-1], trace


def fit_local_pca_cover(points: np.ndarray, n_charts: int, dim: int, seed: int = 0) -> ChartCover:
    points = np.asarray(points, dtype=np.float64)
    if dim not in (1, 2):
        raise ValueError(f"dim must be 1 (curves) or 2 (surfaces), got {dim}")
    labels, charts = _cells(points, n_charts, seed)
    means = np.stack([m for m, _, _ in charts])
    frames = np.stack([u[:, :dim] for _, u, _ in charts])  # (K, n, d), orthonormal columns
    latents = np.einsum("knd,ikn->ikd", frames, points[:, None, :] - means[None])
    radii = np.array([np.linalg.norm(latents[labels == k, k], axis=1).max() for k in range(len(charts))])
    norms = np.linalg.norm(latents, axis=2, keepdims=True)
    clipped = latents * np.minimum(1.0, radii[None, :, None] / np.maximum(norms, 1e-300))
    recon = means[None] + np.einsum("knd,ikd->ikn", frames, clipped)
    errors = np.linalg.norm(points[:, None, :] - recon, axis=2)
    # A chart's own points are off its plane by curvature and noise; only the error in excess of
    # that level (90th percentile over its cell) counts, so thick noisy data still overlaps.
    own_level = np.array([np.quantile(errors[labels == k, k], OWN_ERROR_QUANTILE) for k in range(len(charts))])
    scale = float(np.median(radii))
    return ChartCover(
        scores=np.maximum(errors - own_level[None], 0.0) / scale,
        tangents=frames,
        dim=dim,
        latents=latents,
        centres=means,
        description=f"local PCA, K={len(charts)}, d={dim}, score = excess clipped reconstruction error / median chart radius {scale:.4f}",
    )
