"""A chart mixture over image patches: the patch model behind the chart prior (`ChartPrior`).

How the model treats a p x p patch P (d = C p^2 values):
- The mean (DC) is not modelled, as EPLL's GMM: the patch is mapped to its n = d - 1 coordinates
  c = B^T P in an orthonormal basis B (d, n) of the mean-free patches. B^T 1 = 0, so the mean is
  dropped by the map itself, and the density is a proper density on R^n (a mean-removed patch in
  R^d would have a degenerate direction). The basis is stored in the checkpoint.
- The chart mixture (patchreg.charts) models c: K charts of dimension d_lat, each an encoder /
  decoder pair with a compact latent prior, so contrast (the radius of c) and structure are both
  learned by the charts: k-means seeding gives charts to flat, mid- and high-contrast regions.
- The off-manifold part is Gaussian with one noise level per chart (sigma_per_chart): natural
  patches are not on one thin manifold, and flat and textured patches leave their charts by
  amounts that differ by orders of magnitude. sigma_k is the maximum-likelihood value on the
  chart's responsible training patches. The noisy patches that reconstruction feeds the prior
  are then scored by the same formula; the HQS solver adds its splitting variance 1/beta to it.
- A cheap Gaussian per chart (mean and covariance of its responsible patches), the "selector",
  ranks the charts for each patch with the fused GMM kernel, so the chart prior evaluates only the
  few charts that can matter (FEPLL's component pruning applied to charts).

Checkpoints are chart-mixture checkpoints (kind "charts", patchreg.charts.checkpoint) with a
"patch" header entry and tensors "patch/basis" and "patch/selector/*": `PatchCharts.load` needs
them; `load_mixture` reads the same file as a mixture on the coordinates.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import io
from .._checks import check_int, check_tensor
from ..charts.checkpoint import KIND as CHARTS_KIND
from ..charts.checkpoint import save_mixture
from ..charts.mixture import ChartMixture, build_mixture

__all__ = ["PatchCharts", "mean_free_basis", "train_patch_charts"]

SELECTOR_FLOOR = 1e-6  # relative covariance floor of the selector Gaussians


def mean_free_basis(dim: int, dtype=torch.float64) -> torch.Tensor:
    """An orthonormal basis (dim, dim - 1) of the vectors with zero mean (the Helmert basis).

    Column j (j = 1..dim-1) is (1, ..., 1, -j, 0, ..., 0) / sqrt(j (j + 1)) with j ones: closed
    form, so the same on every machine.
    """
    check_int("dim", dim, 2)
    basis = torch.zeros(dim, dim - 1, dtype=torch.float64)
    for j in range(1, dim):
        basis[:j, j - 1] = 1.0
        basis[j, j - 1] = -float(j)
        basis[:, j - 1] /= math.sqrt(j * (j + 1))
    return basis.to(dtype)


class PatchCharts(torch.nn.Module):
    """A ChartMixture on the mean-free coordinates of (C, p, p) patches, with its chart selector.

    mixture: a ChartMixture with ambient_dim = C p^2 - 1 (sigma_per_chart recommended).
    Buffers: basis (d, n); selector_means (K, n), selector_prec_chol (K, n, n), selector_log_const
    (K,) (empty until `fit_selector`).
    """

    def __init__(self, mixture: ChartMixture, patch_size: int, channels: int = 1, basis: torch.Tensor | None = None):
        super().__init__()
        self.patch_size = check_int("patch_size", patch_size, 2)
        self.channels = check_int("channels", channels, 1)
        if not isinstance(mixture, ChartMixture):
            raise TypeError(f"mixture must be a ChartMixture, got {type(mixture).__name__}")
        if mixture.ambient_dim != self.dim - 1:
            raise ValueError(
                f"the mixture models {mixture.ambient_dim}-dim points but {channels}x{patch_size}x{patch_size} "
                f"patches have {self.dim - 1} mean-free coordinates"
            )
        self.mixture = mixture
        dtype = mixture.log_alpha.dtype
        basis = mean_free_basis(self.dim) if basis is None else basis
        if tuple(basis.shape) != (self.dim, self.dim - 1):
            raise ValueError(f"basis must have shape {(self.dim, self.dim - 1)}, got {tuple(basis.shape)}")
        self.register_buffer("basis", basis.to(dtype))
        K, n = mixture.n_charts, mixture.ambient_dim
        self.register_buffer("selector_means", torch.zeros(0, n, dtype=dtype))
        self.register_buffer("selector_prec_chol", torch.zeros(0, n, n, dtype=dtype))
        self.register_buffer("selector_log_const", torch.zeros(0, dtype=dtype))
        self.history: list[dict] = []

    @property
    def dim(self) -> int:
        return self.channels * self.patch_size**2

    @property
    def n_charts(self) -> int:
        return self.mixture.n_charts

    @property
    def has_selector(self) -> bool:
        return self.selector_means.shape[0] == self.n_charts

    def coords(self, patches: torch.Tensor) -> torch.Tensor:
        """Mean-free coordinates (..., n) of patches (..., d)."""
        if patches.shape[-1] != self.dim:
            raise ValueError(f"patches must have last dimension {self.dim} ({self.channels}x{self.patch_size}x"
                             f"{self.patch_size}), got {tuple(patches.shape)}")
        return patches @ self.basis.to(patches.dtype)

    def patches_from_coords(self, coords: torch.Tensor, means: torch.Tensor | None = None) -> torch.Tensor:
        """Patches (..., d) with coordinates `coords` (..., n) and per-patch means (..., 1) (default 0)."""
        out = coords @ self.basis.to(coords.dtype).T
        return out if means is None else out + means

    @torch.no_grad()
    def log_prob(self, patches: torch.Tensor, batch: int = 8192) -> torch.Tensor:
        """Exact log-density of the mean-free coordinates of patches (N, d) under all charts (N,)."""
        check_tensor("patches", patches, ndim=2)
        c = self.coords(patches.to(self.basis.dtype))
        return torch.cat([self.mixture.log_prob(chunk) for chunk in c.split(batch)])

    # -- the selector --------------------------------------------------------------------------
    @torch.no_grad()
    def fit_selector(self, coords: torch.Tensor, batch: int = 4096) -> None:
        """Fit the per-chart selector Gaussians to coordinates (N, n), weighted by the responsibilities."""
        check_tensor("coords", coords, ndim=2)
        x = coords.to(torch.float64)
        mix = self.mixture
        w = torch.cat([mix.responsibilities(chunk.to(mix.log_alpha.dtype)).to(torch.float64) for chunk in x.split(batch)])
        mass = w.sum(0).clamp_min(1e-12)  # (K,)
        means = (w.T @ x) / mass[:, None]
        n = x.shape[1]
        covs = torch.empty(self.n_charts, n, n, dtype=torch.float64)
        total_var = x.var(0).sum() / n
        for k in range(self.n_charts):
            centred = x - means[k]
            cov = (centred * w[:, k : k + 1]).T @ centred / mass[k]
            covs[k] = cov + SELECTOR_FLOOR * total_var * torch.eye(n, dtype=torch.float64)
        self._set_selector(means, covs, (mass / mass.sum()).clamp_min(1e-12))

    def _set_selector(self, means, covs, weights) -> None:
        chol = torch.linalg.cholesky(covs)
        eye = torch.eye(covs.shape[-1], dtype=torch.float64).expand_as(covs)
        prec_chol = torch.linalg.solve_triangular(chol, eye, upper=False).transpose(1, 2)
        n = covs.shape[-1]
        log_const = weights.log() - 0.5 * n * math.log(2 * math.pi) - torch.diagonal(chol, dim1=1, dim2=2).log().sum(-1)
        dtype = self.basis.dtype
        self.selector_means = means.to(dtype).contiguous()
        self.selector_prec_chol = prec_chol.to(dtype).contiguous()
        self.selector_log_const = log_const.to(dtype).contiguous()

    def selector_covariances(self) -> torch.Tensor:
        """(K, n, n) float64 covariances of the selector Gaussians."""
        u = self.selector_prec_chol.to(torch.float64)
        return torch.linalg.inv(u @ u.mT)

    def selector_params(self, dtype, extra_variance: float = 0.0):
        """(prec_chol, log_const, means) of the selector in the GMM op's form, covariances + extra_variance I."""
        if not self.has_selector:
            raise ValueError("this chart model has no selector: call fit_selector(coords) (training does it)")
        if extra_variance == 0.0:
            return (self.selector_prec_chol.to(dtype), self.selector_log_const.to(dtype), self.selector_means.to(dtype))
        covs = self.selector_covariances() + extra_variance * torch.eye(self.dim - 1, dtype=torch.float64)
        u = self.selector_prec_chol.to(torch.float64)
        weights_log = (self.selector_log_const.to(torch.float64) + 0.5 * (self.dim - 1) * math.log(2 * math.pi)
                       - torch.diagonal(u, dim1=1, dim2=2).abs().log().sum(-1))
        chol = torch.linalg.cholesky(covs)
        eye = torch.eye(covs.shape[-1], dtype=torch.float64).expand_as(covs)
        prec_chol = torch.linalg.solve_triangular(chol, eye, upper=False).transpose(1, 2)
        log_const = (weights_log - 0.5 * (self.dim - 1) * math.log(2 * math.pi)
                     - torch.diagonal(chol, dim1=1, dim2=2).log().sum(-1))
        return prec_chol.to(dtype).contiguous(), log_const.to(dtype).contiguous(), self.selector_means.to(dtype)

    # -- checkpoints -----------------------------------------------------------------------------
    def patch_header(self) -> dict:
        return {"patch_size": self.patch_size, "channels": self.channels, "coordinates": "mean_free_helmert"}

    def extra_tensors(self) -> dict:
        out = {"patch/basis": self.basis}
        if self.has_selector:
            out.update({"patch/selector/means": self.selector_means, "patch/selector/prec_chol": self.selector_prec_chol,
                        "patch/selector/log_const": self.selector_log_const})
        return out

    def save(self, path, history: list | None = None) -> Path:
        """Write the model alone (no optimizer state): the small file that is shipped and loaded by name."""
        return save_mixture(path, self.mixture, extra_tensors=self.extra_tensors(),
                            extra_header={"patch": self.patch_header(), "history": history or self.history})

    @classmethod
    def load(cls, path, dtype=torch.float32) -> "PatchCharts":
        from ..charts.checkpoint import load_mixture

        tensors, header = io.load_checkpoint(path, CHARTS_KIND)
        if "patch" not in header or "patch/basis" not in tensors:
            raise ValueError(f"{path} holds a chart mixture on points, not on image patches "
                             "(train one with `patchreg train charts --data train400:train --patch-size 6`)")
        mixture, _ = load_mixture(path, dtype)
        meta = header["patch"]
        model = cls(mixture, meta["patch_size"], meta.get("channels", 1), tensors["patch/basis"].to(torch.float64))
        if "patch/selector/means" in tensors:
            model.selector_means = tensors["patch/selector/means"].to(dtype)
            model.selector_prec_chol = tensors["patch/selector/prec_chol"].to(dtype)
            model.selector_log_const = tensors["patch/selector/log_const"].to(dtype)
        model.history = header.get("history") or header.get("training", {}).get("history", [])
        return model.to(dtype)


def train_patch_charts(images, patch_size: int, family: str = "fif", n_charts: int = 32, latent_dim: int = 8,
                       width: int = 64, n_blocks: int = 2, config=None, out=None, resume: bool = False,
                       progress: bool = True, selector_points: int = 50_000, seed: int = 0) -> PatchCharts:
    """Train a PatchCharts model on random patches streamed from `images` (list of gray (H, W) arrays).

    Patches are drawn uniformly from all positions with the training stream's generator, so a run
    checkpointed every `config.checkpoint_every` steps resumes on the same patches. After training,
    alpha and the per-chart sigmas are set by maximum likelihood (finalize) and the selector is fit on
    `selector_points` patches of the same images (another seed); `out` then holds the whole state.
    """
    from ..charts.training import TrainConfig, train_mixture
    from ..data import PatchSampler

    config = config or TrainConfig(seed=seed)
    sampler = PatchSampler(images, patch_size, 1024, seed=seed, dtype=torch.float32)
    basis32 = mean_free_basis(patch_size**2).float()

    def draw(n, generator):
        return sampler.sample(n, generator) @ basis32

    mixture = build_mixture(family, n_charts, patch_size**2 - 1, latent_dim, "mlp", width, n_blocks,
                            config.train_sigma, sigma_per_chart=True).float()
    model = PatchCharts(mixture, patch_size)
    extra = dict(extra_tensors={"patch/basis": model.basis}, extra_header={"patch": model.patch_header()})
    history = train_mixture(mixture, draw, config, out, resume=resume, progress=progress, **extra)
    coords = draw(selector_points, torch.Generator().manual_seed(config.seed + 2))
    model.fit_selector(coords)
    model.history = history
    if out is not None:  # add the selector to the resumable state train_mixture wrote
        tensors, header = io.load_checkpoint(out, CHARTS_KIND)
        tensors.update(model.extra_tensors())
        io.save_checkpoint(out, CHARTS_KIND, tensors, {k: v for k, v in header.items() if k not in ("kind", "format")})
    return model
