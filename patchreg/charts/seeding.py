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
    """(B,) the nearest centre of each point; `centers` (K, n), or (K, n + 1) with the seeding radii last."""
    return torch.cdist(x, centers[:, : x.shape[1]].to(x)).argmin(1)


def seed_members(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """(B,) the seeding chart of each point, -1 where it lies outside its chart's seeding radius.

    `centers` (K, n): every point belongs to its nearest centre's cluster; (K, n + 1): the last column
    is each cluster's radius, and only the points within it belong (local seeding, seed_fraction < 1)."""
    n = x.shape[1]
    dist = torch.cdist(x, centers[:, :n].to(x))
    labels = dist.argmin(1)
    if centers.shape[1] == n + 1:
        radius = centers[:, n].to(x)
        labels = torch.where(dist.gather(1, labels[:, None])[:, 0] <= radius[labels], labels, -1)
    return labels


def seed_charts(model, points: torch.Tensor, generator: torch.Generator, align: str = "pca",
                fraction: float = 1.0) -> torch.Tensor:
    """Cluster `points` into K groups, put chart k's frame on cluster k; returns the centres (K, n).

    fraction < 1 (local seeding): chart k's frame and pre-training points are only the `fraction` of its
    cluster nearest to its centre, a disc-like patch even where the cluster is not (a k-means cluster of
    a torus is a tube segment, a cylinder, which no single chart can cover); returns (K, n + 1), the
    last column each cluster's radius (see seed_members)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    centers = kmeans(points, model.n_charts, generator)
    labels = nearest_center(points, centers)
    radii = torch.full((model.n_charts,), float("inf"), dtype=points.dtype, device=points.device)
    for k, chart in enumerate(model.charts):
        members = points[labels == k]
        if fraction < 1 and len(members) > 1:
            dist = (members - centers[k]).norm(dim=1)
            radii[k] = torch.quantile(dist, fraction)
            members = members[dist <= radii[k]]
        chart.set_frame(members, align)
    return torch.cat([centers, radii[:, None]], 1) if fraction < 1 else centers
