"""A ChartCover from a learned chart mixture (patchreg.charts), for the nerve of issue 5.

Scores follow the local-PCA cover's meaning (patchreg.topology.cover), so the same overlap
thresholds tau apply: chart k explains point x when
- its reconstruction error ||x - D_k(E_k(x))|| exceeds the chart's own error level (90th
  percentile over the points it is most responsible for) by at most tau chart radii, and
- the latent E_k(x) lies within radius 1 + tau of the origin (the latent prior lives on about
  the unit ball, so latent radius 1 is the chart's border).
score = residual excess / R + max(0, |E_k(x)| - 1), R the median chart radius (90th percentile
of ||x - D_k(0)|| over each chart's own points). Tangents are the exact decoder Jacobians at
E_k(x), per point and chart.

overlap="ownership" reads the overlaps from the mixture's partition instead: every point is owned by
its most responsible chart, and chart k holds x at threshold tau when x lies within tau R of a point
chart k owns (and, as above, chart k explains x: the larger of the two scores). The cover is then the
owned cells thickened by tau R, the classic nerve of a partition into cells: three cells share a
simplex where they meet. The reconstruction score alone lets a decoder's surface that passes near a
distant part of the data join charts that are not neighbours on the manifold (many more edges and
triangles than a surface's triangulation holds).
"""

from __future__ import annotations

import numpy as np
import torch

from .cover import OWN_ERROR_QUANTILE, ChartCover

__all__ = ["OVERLAPS", "cover_from_chart_mixture", "default_train_config", "fit_chart_mixture_cover", "learned_cover_fitter"]


@torch.no_grad()
def _chart_outputs(model, x: torch.Tensor, batch: int):
    """Latents (N, K, d), reconstructions (N, K, n), Jacobians (N, K, n, d), log p_k (N, K)."""
    latents, recons, jacobians, log_probs = [], [], [], []
    for part in x.split(batch):
        z = torch.stack([c.encode(part) for c in model.charts], 1)
        outs = [c.decode_with_jacobian(z[:, k]) for k, c in enumerate(model.charts)]
        latents.append(z)
        recons.append(torch.stack([o[0] for o in outs], 1))
        jacobians.append(torch.stack([o[1] for o in outs], 1))
        log_probs.append(model.chart_log_probs(part))
    return tuple(torch.cat(t).double().numpy() for t in (latents, recons, jacobians, log_probs))


OVERLAPS = ("reconstruction", "ownership")


def _check_overlap(overlap: str) -> None:
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap must be one of {OVERLAPS}, got {overlap!r}")


def _distance_to_owned(pts: np.ndarray, own: np.ndarray, n_charts: int) -> np.ndarray:
    """(N, K): distance from each point to the nearest point owned by chart k (inf for a chart owning none)."""
    from scipy.spatial import cKDTree

    out = np.full((len(pts), n_charts), np.inf)
    for k in range(n_charts):
        mine = own == k
        if mine.any():
            out[:, k] = cKDTree(pts[mine]).query(pts, k=1)[0]
    return out


def cover_from_chart_mixture(model, points, batch: int = 1024, overlap: str = "reconstruction") -> ChartCover:
    """The ChartCover of a trained ChartMixture on points (N, n) (module docstring)."""
    _check_overlap(overlap)
    x = torch.as_tensor(np.asarray(points), dtype=model.log_alpha.dtype)
    if x.ndim != 2 or x.shape[1] != model.ambient_dim:
        raise ValueError(f"points must have shape (N, {model.ambient_dim}), got {tuple(x.shape)}")
    z, recon, jac, log_p = _chart_outputs(model, x, batch)
    pts = x.double().numpy()
    residual = np.linalg.norm(pts[:, None, :] - recon, axis=-1)  # (N, K)
    own = np.argmax(log_p + model.log_alpha.detach().double().numpy(), axis=1)
    with torch.no_grad():
        origins = torch.stack([c.decode(torch.zeros(1, model.latent_dim, dtype=x.dtype))[0] for c in model.charts])
    origins = origins.double().numpy()
    K = model.n_charts
    own_error, radius = np.zeros(K), []
    for k in range(K):
        mine = own == k
        if mine.any():
            own_error[k] = np.quantile(residual[mine, k], OWN_ERROR_QUANTILE)
            radius.append(np.quantile(np.linalg.norm(pts[mine] - origins[k], axis=1), OWN_ERROR_QUANTILE))
    scale = float(np.median(radius)) if radius else 1.0
    latent_excess = np.maximum(0.0, np.linalg.norm(z, axis=-1) - 1.0)
    scores = np.maximum(0.0, residual - own_error) / max(scale, 1e-12) + latent_excess
    if overlap == "ownership":
        scores = np.maximum(scores, _distance_to_owned(pts, own, K) / max(scale, 1e-12))
        scores[np.arange(len(pts)), own] = 0.0  # a point always lies in the chart that owns it
    return ChartCover(scores=scores, tangents=jac, dim=model.latent_dim, latents=z, centres=origins,
                      description=f"learned FIF chart mixture, K={K}, d={model.latent_dim}, overlaps by {overlap}")


def fit_chart_mixture_cover(points, n_charts: int, dim: int, seed: int = 0, config=None, width: int = 64,
                            progress: bool = False, overlap: str = "reconstruction") -> ChartCover:
    """cover_fitter for patchreg.topology.homology_from_charts: train a FIF mixture (residual MLP
    charts, latent dim `dim`) on the points, then read its cover. config: a TrainConfig."""
    from ..charts import TrainConfig, build_mixture, train_mixture

    _check_overlap(overlap)  # before the training, not after
    pts = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    torch.manual_seed(seed)
    model = build_mixture("fif", int(n_charts), pts.shape[1], int(dim), width=width)
    config = config or TrainConfig(seed=seed)
    train_mixture(model, pts, config, progress=progress)
    return cover_from_chart_mixture(model, pts, overlap=overlap)


def default_train_config(seed: int = 0, steps: int = 300):
    """The schedule used for covers: `steps` mixture steps after steps/2 of pretraining, then
    steps/3 of the overlap phase (150/300/100 named the torus, Klein bottle and sphere, K = 24)."""
    from ..charts import TrainConfig

    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    steps = int(steps)
    return TrainConfig(pretrain_steps=max(1, steps // 2), mixture_steps=steps, overlap_steps=max(1, steps // 3),
                       batch_size=128, lr=3e-3, seed_points=3000, log_every=100, seed=seed)


def learned_cover_fitter(steps: int = 300, width: int = 32, progress: bool = False, overlap: str = "reconstruction"):
    """A cover_fitter(points, K, d, seed) for homology_from_charts / analyse_points that trains FIF
    charts (residual MLPs of `width`) with default_train_config(seed, steps); overlaps read as `overlap`."""
    default_train_config(0, steps)  # checks steps now, not after the first fit
    if int(width) < 2:
        raise ValueError(f"width must be >= 2, got {width}")
    _check_overlap(overlap)

    def fit(points, n_charts, dim, seed):
        return fit_chart_mixture_cover(points, n_charts, dim, seed, config=default_train_config(seed, steps),
                                       width=int(width), progress=progress, overlap=overlap)

    fit.description = (f"learned FIF chart mixture (residual MLP width {int(width)}, {int(steps)} mixture steps, "
                       f"overlaps by {overlap})")
    return fit
