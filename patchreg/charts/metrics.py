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
- heldout_nll: -mean log p(x) of held-out data under the model (nats per point);
- heldout_nll_parts: that NLL split into the part on the manifold and the off-manifold (normal) part. A chart's
  log p_k(x) is the sum of its density on its manifold, log q(z) - 1/2 log det(J^T J), and the normal-space Gaussian
  -|x - D(z)|^2 / (2 sigma^2) - (n - d)/2 log(2 pi sigma^2); the normal part of the mixture's NLL is the
  responsibility-weighted mean of the charts' Gaussian terms (exact where one chart holds a point), the surface part
  the rest. On noise-free data the normal part has no floor (sigma, fitted to the residuals, shrinks as the fit
  sharpens, codim log sigma with it), while the surface part is bounded below by log(area) of an area-uniform
  manifold: its excess over that is (about) the KL divergence from the true density on the manifold to the model's.
  The bound needs the model's manifold to be the true one (distances far below the manifold's scale): the density
  on the manifold is normalised on the model's own manifold, which an untrained model may have shrunk.
"""

from __future__ import annotations

import math

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


def sliced_w2_floor(manifold, test, seed: int = 0, draws: int = 5, noise: float = 0.0) -> list[float]:
    """Sliced W2 of `draws` independent true samples of len(test) points against `test` (the floor a perfect
    model scores); with `noise`, the true samples carry that Gaussian noise, as noisy test data do. One draw is a
    noisy floor: on two circles, whose mass split between the circles moves mass 3 units, single draws at 5000
    points range over 0.04-0.09; report their mean."""
    from .datasets import add_noise

    test = torch.as_tensor(_np(test)).double()
    return [sliced_wasserstein2(torch.from_numpy(add_noise(manifold.sample(len(test), seed + 20_000 + i), noise,
                                                           seed + 20_000 + i)), test, seed=seed)
            for i in range(draws)]


def heldout_nll(model, x, batch: int = 1024) -> float:
    """-mean log p(x) in nats per point (no gradients)."""
    x = torch.as_tensor(x).to(model.log_alpha.dtype)
    with torch.no_grad():
        return float(-torch.cat([model.log_prob(x[i : i + batch]) for i in range(0, len(x), batch)]).mean())


def heldout_nll_parts(model, x, batch: int = 1024) -> dict:
    """{"nll", "normal", "surface"} in nats per point (nll = normal + surface; see the module docstring)."""
    x = torch.as_tensor(x).to(model.log_alpha.dtype)
    codim = model.ambient_dim - model.latent_dim
    nll = normal = 0.0
    with torch.no_grad():
        for chunk in x.split(batch):
            chart_lp = model.chart_log_probs(chunk)
            log_p = torch.logsumexp(model.log_alpha + chart_lp, -1)
            w = torch.softmax(model.log_alpha + chart_lp, -1)
            gauss = torch.stack([_normal_log_density(chunk, c, model._chart_sigma(model.sigma, k), codim)
                                 for k, c in enumerate(model.charts)], -1)
            nll -= float(log_p.sum())
            normal -= float((w * gauss).sum())
    return {"nll": nll / len(x), "normal": normal / len(x), "surface": (nll - normal) / len(x)}


def _normal_log_density(x, chart, sigma, codim: int) -> torch.Tensor:
    """(B,) the chart's off-manifold Gaussian term: -|x - D(E(x))|^2 / (2 sigma^2) - codim/2 log(2 pi sigma^2)."""
    variance = sigma**2
    return -((x - chart.decode(chart.encode(x))) ** 2).sum(-1) / (2 * variance) - 0.5 * codim * torch.log(2 * math.pi * variance)


def surface_excess(metrics: dict) -> float | None:
    """evaluate_mixture's held-out NLL on the manifold less log(area) (about the KL divergence from the true density on
    the manifold to the model's), or None where the metrics lack either (no area, or recorded before the split)."""
    if "heldout_nll_surface" not in metrics or "surface_entropy" not in metrics:
        return None
    return metrics["heldout_nll_surface"] - metrics["surface_entropy"]


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


W2_DRAWS = 5  # independent sample draws of the model's sliced W2, as many as its floor's (sliced_w2_floor)


def evaluate_mixture(model, dataset, n: int = 2000, eps: float = 0.1, seed: int = 0) -> dict:
    """All metrics for `model` on a patchreg.charts.datasets.Dataset; toy manifolds get exact distances.

    The first n samples give the distances, coverage and chart usage; sliced W2 is the mean over W2_DRAWS draws
    of n samples (the first draw alone: sliced_w2_single), like its floor. Noisy toy data (dataset.noise > 0): the
    distances and coverage are those of the model's manifold (samples without noise, against the exact manifold),
    sliced W2 compares the model's noisy samples (its own sigma) with the noisy held-out points, and its floor
    noisy true samples."""
    gen = torch.Generator().manual_seed(seed)
    x, labels = model.sample(n, gen)
    test = dataset.test[:n]
    noisy = getattr(dataset, "noise", 0.0) > 0
    draws = [model.sample(n, gen, noise=True)[0] if noisy else x]
    draws += [model.sample(n, gen, noise=noisy)[0] for _ in range(W2_DRAWS - 1)]
    w2 = [sliced_wasserstein2(d[: len(test)].double(), test.double(), seed=seed) for d in draws]
    parts = heldout_nll_parts(model, test)
    result = {
        "n_samples": n,
        "heldout_nll": parts["nll"],
        "heldout_nll_normal": parts["normal"],
        "heldout_nll_surface": parts["surface"],
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
        try:  # the surface NLL's floor on an area-uniform manifold (noisy data: its normal part has a floor too)
            result["surface_entropy"] = math.log(dataset.manifold.area())
        except NotImplementedError:
            pass
        reference = dataset.manifold.sample(4 * n, seed + 777)
        result["coverage"] = coverage(reference, x, eps)
        result["coverage_eps"] = eps
        if not isinstance(dataset.manifold, toy_manifolds.PointCloud):
            # the floor: true samples of the same size against the same held-out points, mean of 5 draws
            draws = sliced_w2_floor(dataset.manifold, test, seed, noise=getattr(dataset, "noise", 0.0))
            result["sliced_w2_floor"] = float(np.mean(draws))
            result["sliced_w2_floor_draws"] = draws
            # what n true samples score (below 1 where n points cannot fill the eps-neighbourhoods)
            result["coverage_floor"] = coverage(reference, dataset.manifold.sample(n, seed + 30_000), eps)
    return result
