"""Generation-quality metrics for chart mixtures on toy manifolds (and any point sets).

- distance_to_manifold_stats: mean and 95th percentile of the exact distance of samples to the true manifold;
- manifold_diameter: the extrinsic diameter max |x - y| over x, y on the manifold, the unit of the relative
  distances (dist_mean_rel = dist_mean / diameter). Closed forms: circle 2r, two circles 2 (offset + r),
  sphere 2, torus 2 (R + r) (ours: 2.8; Alberti et al.'s torus R = 3, r = 1: 8); otherwise the largest
  pairwise distance in a seeded 4000-point sample (a lower bound, within a fraction of a percent on
  the swiss roll and the Klein bottle);
- coverage: fraction of a dense ground-truth sample within eps of some generated point (mode coverage); with
  few samples on a large manifold even true samples score below 1 (evaluate_mixture reports that too);
- sliced_wasserstein2: sliced 2-Wasserstein distance (random directions, sorted 1-D projections); its floor
  (sliced_w2_floor), the same distance from independent true samples of the same size (mean of 5 draws),
  is what a perfect model gets. evaluate_mixture reports the model's as the mean over the same number of
  independent sample draws (W2_DRAWS; since 2026-12-06, before: one draw, still reported as
  sliced_w2_single), so that both sides of the comparison carry the same sampling noise;
- heldout_nll: -mean log p(x) of held-out data under the model (nats per point).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _checks
from ..data import toy_manifolds


def distance_to_manifold_stats(manifold, samples) -> dict:
    d = manifold.distance(_np(samples))
    return {"dist_mean": float(d.mean()), "dist_p95": float(np.quantile(d, 0.95))}


def manifold_diameter(manifold) -> float:
    """Extrinsic diameter max_{x, y in M} |x - y| of a toy manifold (see the module docstring)."""
    tm = toy_manifolds
    if type(manifold) is tm.Circle:
        return 2 * manifold.radius
    if type(manifold) is tm.TwoCircles:
        a, b = manifold.circles
        return float(np.linalg.norm(a.center - b.center)) + a.radius + b.radius
    if type(manifold) is tm.Annulus:
        return 2 * manifold.outer
    if type(manifold) is tm.Sphere:
        return 2.0
    if type(manifold) is tm.Torus:
        return 2 * (manifold.major + manifold.minor)
    points = manifold.points if isinstance(manifold, tm.PointCloud) else manifold.sample(4000, 12345)
    x = torch.as_tensor(points[:4000])
    return float(max(torch.cdist(x[i : i + 1000], x).max() for i in range(0, len(x), 1000)))


def coverage(reference, samples, eps: float, chunk: int = 2048) -> float:
    """Fraction of `reference` points with a `samples` point within distance eps."""
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    ref, smp = torch.as_tensor(_np(reference)), torch.as_tensor(_np(samples))
    hit = torch.cat([torch.cdist(ref[i : i + chunk], smp).min(1).values <= eps for i in range(0, len(ref), chunk)])
    return float(hit.double().mean())


def sliced_wasserstein2(a, b, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced W2 between two point sets of equal size (N, n): sqrt(mean over directions of W2^2 of projections)."""
    a, b = torch.as_tensor(_np(a)), torch.as_tensor(_np(b))
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    _checks.check_int("n_projections", n_projections, 1)
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], n_projections, generator=g, dtype=a.dtype)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, pb = (a @ dirs).sort(0).values, (b @ dirs).sort(0).values
    return float(((pa - pb) ** 2).mean().sqrt())


def sliced_w2_floor(manifold, test, seed: int = 0, draws: int = 5) -> list[float]:
    """Sliced W2 of `draws` independent true samples of len(test) points against `test` (the floor a perfect
    model scores). One draw is a noisy floor: on two circles, whose mass split between the circles moves
    mass 3 units, single draws at 5000 points range over 0.04-0.09; report their mean."""
    test = torch.as_tensor(_np(test)).double()
    return [sliced_wasserstein2(torch.from_numpy(manifold.sample(len(test), seed + 20_000 + i)), test, seed=seed)
            for i in range(draws)]


def heldout_nll(model, x, batch: int = 1024) -> float:
    """-mean log p(x) in nats per point (no gradients)."""
    x = torch.as_tensor(x).to(model.log_alpha.dtype)
    with torch.no_grad():
        return float(-torch.cat([model.log_prob(x[i : i + batch]) for i in range(0, len(x), batch)]).mean())


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


W2_DRAWS = 5  # independent sample draws of the model's sliced W2, as many as its floor's (sliced_w2_floor)


def evaluate_mixture(model, dataset, n: int = 2000, eps: float = 0.1, seed: int = 0) -> dict:
    """All metrics for `model` on a patchreg.charts.datasets.Dataset; toy manifolds get exact distances.

    The first n samples give the distances, coverage and chart usage; sliced W2 is the mean over W2_DRAWS draws
    of n samples (the first draw alone: sliced_w2_single), like its floor."""
    gen = torch.Generator().manual_seed(seed)
    x, labels = model.sample(n, gen)
    test = dataset.test[:n]
    draws = [x] + [model.sample(n, gen)[0] for _ in range(W2_DRAWS - 1)]
    w2 = [sliced_wasserstein2(d[: len(test)].double(), test.double(), seed=seed) for d in draws]
    result = {
        "n_samples": n,
        "heldout_nll": heldout_nll(model, test),
        "sliced_w2": float(np.mean(w2)),
        "sliced_w2_single": w2[0],
        "sliced_w2_draws": w2,
        "chart_usage": torch.bincount(labels, minlength=model.n_charts).tolist(),
    }
    if dataset.manifold is not None:
        result.update(distance_to_manifold_stats(dataset.manifold, x))
        diameter = manifold_diameter(dataset.manifold)
        result.update(diameter=diameter, dist_mean_rel=result["dist_mean"] / diameter,
                      dist_p95_rel=result["dist_p95"] / diameter)
        reference = dataset.manifold.sample(4 * n, seed + 777)
        result["coverage"] = coverage(reference, x, eps)
        result["coverage_eps"] = eps
        if not isinstance(dataset.manifold, toy_manifolds.PointCloud):
            # the floor: true samples of the same size against the same held-out points, mean of 5 draws
            draws = sliced_w2_floor(dataset.manifold, test, seed)
            result["sliced_w2_floor"] = float(np.mean(draws))
            result["sliced_w2_floor_draws"] = draws
            # what n true samples score (below 1 where n points cannot fill the eps-neighbourhoods)
            result["coverage_floor"] = coverage(reference, dataset.manifold.sample(n, seed + 30_000), eps)
    return result
