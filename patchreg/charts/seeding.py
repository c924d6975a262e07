"""Chart seeding: k-means clusters of the data give each chart its frame and its pre-training points."""

from __future__ import annotations

import torch

from .. import _checks


def kmeans(points: torch.Tensor, k: int, generator: torch.Generator, n_iter: int = 50) -> torch.Tensor:
    """Lloyd's k-means with k-means++ initialisation; returns the centres (k, n)."""
    _checks.check_int("k", k, 1)
    if len(points) < k:
        raise ValueError(f"need at least k={k} points to seed {k} charts, got {len(points)}")
    first = torch.randint(len(points), (1,), generator=generator)
    centers = points[first]
    for _ in range(1, k):
        d2 = torch.cdist(points, centers).min(1).values ** 2
        idx = torch.multinomial(d2 / d2.sum() if d2.sum() > 0 else torch.ones_like(d2), 1, generator=generator)
        centers = torch.cat([centers, points[idx]])
    for _ in range(n_iter):
        labels = torch.cdist(points, centers).argmin(1)
        new = torch.stack([points[labels == j].mean(0) if (labels == j).any() else centers[j] for j in range(k)])
        if torch.allclose(new, centers):
            break
        centers = new
    return centers


def nearest_center(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, centers.to(x)).argmin(1)


def seed_charts(model, points: torch.Tensor, generator: torch.Generator, align: str = "pca") -> torch.Tensor:
    """Cluster `points` into K groups, put chart k's frame on cluster k; returns the centres (K, n)."""
    centers = kmeans(points, model.n_charts, generator)
    labels = nearest_center(points, centers)
    for k, chart in enumerate(model.charts):
        chart.set_frame(points[labels == k], align)
    return centers
