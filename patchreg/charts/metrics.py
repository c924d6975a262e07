"""Generation-quality metrics for chart mixtures on toy manifolds (and any point sets).

- distance_to_manifold_stats: mean and 95th percentile of the exact distance of samples to the true manifold;
- coverage: fraction of a dense ground-truth sample within eps of some generated point (mode coverage);
- sliced_wasserstein2: sliced 2-Wasserstein distance (random directions, sorted 1-D projections);
- heldout_nll: -mean log p(x) of held-out data under the model (nats per point).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _checks


def distance_to_manifold_stats(manifold, samples) -> dict:
    d = manifold.distance(_np(samples))
    return {"dist_mean": float(d.mean()), "dist_p95": float(np.quantile(d, 0.95))}


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


def heldout_nll(model, x, batch: int = 1024) -> float:
    """-mean log p(x) in nats per point (no gradients)."""
    x = torch.as_tensor(x).to(model.log_alpha.dtype)
    with torch.no_grad():
        return float(-torch.cat([model.log_prob(x[i : i + batch]) for i in range(0, len(x), batch)]).mean())


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def evaluate_mixture(model, dataset, n: int = 2000, eps: float = 0.1, seed: int = 0) -> dict:
    """All metrics for `model` on a patchreg.charts.datasets.Dataset; toy manifolds get exact distances."""
    x, labels = model.sample(n, torch.Generator().manual_seed(seed))
    test = dataset.test[:n]
    result = {
        "n_samples": n,
        "heldout_nll": heldout_nll(model, test),
        "sliced_w2": sliced_wasserstein2(x[: len(test)].double(), test.double(), seed=seed),
        "chart_usage": torch.bincount(labels, minlength=model.n_charts).tolist(),
    }
    if dataset.manifold is not None:
        result.update(distance_to_manifold_stats(dataset.manifold, x))
        result["coverage"] = coverage(dataset.manifold.sample(4 * n, seed + 777), x, eps)
        result["coverage_eps"] = eps
    return result
