"""A chart mixture over image patches: the patch model behind the chart prior (`ChartPrior`).

How the model treats a p x p patch P (d = C p^2 values):
- The mean (DC) is not modelled, as EPLL's GMM: the patch is mapped to its n = d - 1 coordinates
  c = B^T P in an orthonormal basis B (d, n) of the mean-free patches. B^T 1 = 0, so the mean is
  dropped by the map itself, and the density is a proper density on R^n (a mean-removed patch in
  R^d would have a degenerate direction). The basis is stored in the checkpoint.
- The chart mixture (patchreg.charts) models c: K charts of dimension d_lat, each an encoder /
  decoder pair with a compact latent prior.
- Contrast is a scale mixture over the charts (as Gaussian scale mixtures of natural images): chart
  k is also used at contrast scales s from a fixed grid, p_{k,s}(c) = s^-n p_k(c / s), with its
  own weight alpha_{k,s}, so
      p(c) = sum_{k,s} alpha_{k,s} s^-n p_k(c / s).
  Natural patches span orders of magnitude of contrast at the same structure; trained charts
  cover the contrasts of their clusters, and the scaled copies cover the rest (measured on the
  validation split, K = 32, d = 8: held-out NLL -56.8 nats per patch with the trained charts
  alone, -67.0 with 13 half-octave scales; bench/results/patch_nll.md). The weights are fitted
  by EM after training (`fit_scales`); pairs with negligible weight are dropped.
- The off-manifold part is Gaussian with one noise level per chart (sigma_per_chart): natural
  patches are not on one thin manifold, and flat and textured patches leave their charts by
  amounts that differ by orders of magnitude. sigma_k is the maximum-likelihood value on the
  chart's responsible training patches. The noisy patches that reconstruction feeds the prior
  are then scored by the same formula; the HQS solver adds its splitting variance 1/beta to it.
- A cheap Gaussian per chart (mean and covariance of its responsible patches), the "selector",
  scaled to each (chart, scale) pair, ranks the pairs for each patch with the fused GMM kernel, so
  the chart prior evaluates only the few that can matter (FEPLL's component pruning for charts).

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
# contrast scales of the scale mixture: half octaves from 2 down to 2^-5 (13 scales)
DEFAULT_SCALES = tuple(2.0 ** (-j / 2) for j in range(-2, 11))


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
        n = mixture.ambient_dim
        self.register_buffer("selector_means", torch.zeros(0, n, dtype=dtype))
        self.register_buffer("selector_prec_chol", torch.zeros(0, n, n, dtype=dtype))
        self.register_buffer("selector_log_const", torch.zeros(0, dtype=dtype))
        # contrast scales (S,) and the weights log alpha_{k,s} (K, S); -inf marks a dropped pair
        self.register_buffer("scales", torch.ones(1, dtype=dtype))
        log_alpha = mixture.log_alpha.detach().clone()[:, None]  # a chart without mass is no component
        self.register_buffer("scale_log_alpha", log_alpha.masked_fill(log_alpha < math.log(1e-10), -math.inf))
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

    def latent_variance(self) -> float:
        """Per-coordinate variance of the charts' latent prior (the compact radial prior), by its exact sampler."""
        if getattr(self, "_latent_var", None) is None:
            z = self.mixture.prior.sample(20000, torch.Generator().manual_seed(0), torch.float64)
            self._latent_var = float((z**2).mean())
        return self._latent_var

    def pairs(self) -> torch.Tensor:
        """(P, 2) int64: the kept (chart, scale index) pairs, in a fixed order."""
        return torch.isfinite(self.scale_log_alpha).nonzero()

    def pair_log_weights(self) -> torch.Tensor:
        """(P,) log alpha_{k,s} - n log s of the kept pairs: the constant added to log p_k(c / s)."""
        k, j = self.pairs().unbind(1)
        n = self.dim - 1
        return self.scale_log_alpha[k, j] - n * torch.log(self.scales[j])

    @torch.no_grad()
    def log_prob(self, patches: torch.Tensor, batch: int = 8192) -> torch.Tensor:
        """Exact log-density of the mean-free coordinates of patches (N, d): every chart at every scale (N,)."""
        from .chart_prior import chart_patch_log_prob

        check_tensor("patches", patches, ndim=2)
        c = self.coords(patches.to(self.basis.dtype))
        return torch.cat([chart_patch_log_prob(self, chunk, None, compute_grad=False)[0] for chunk in c.split(batch)])

    @torch.no_grad()
    def fit_scales(self, coords: torch.Tensor, scales, n_iter: int = 30, prune: float = 1e-5, batch: int = 4096) -> list:
        """Fit alpha_{k,s} by EM on coordinates (N, n) for the contrast scales `scales`; returns the mean
        log-likelihood per iteration. Pairs whose weight ends below `prune` are dropped (weights renormalised)."""
        check_tensor("coords", coords, ndim=2)
        scales = torch.as_tensor(scales, dtype=torch.float64)
        if scales.dim() != 1 or len(scales) < 1 or not bool((scales > 0).all()):
            raise ValueError(f"scales must be a non-empty 1-D list of positive numbers, got {scales.tolist()}")
        n = self.dim - 1
        mix = self.mixture
        dtype = mix.log_alpha.dtype
        # (N, K, S) chart log-densities at every scale, computed once
        table = torch.stack([
            torch.cat([mix.chart_log_probs((chunk / float(s)).to(dtype)) for chunk in coords.split(batch)]).to(torch.float64)
            - n * math.log(float(s)) for s in scales], dim=-1)
        table = torch.nan_to_num(table, nan=-math.inf)  # the kernel's NaN (singular J^T J far off a chart)
        K, S = table.shape[1:]
        log_alpha = torch.full((K, S), -math.log(K * S), dtype=torch.float64)
        history = []
        for _ in range(n_iter):
            joint = (table + log_alpha).reshape(len(table), -1)
            total = torch.logsumexp(joint, dim=1)
            history.append(float(total.mean()))
            w = torch.exp(joint - total[:, None]).mean(0).reshape(K, S)
            log_alpha = torch.log(w.clamp_min(1e-300))
        alpha = log_alpha.exp()
        alpha = torch.where(alpha >= prune, alpha, torch.zeros_like(alpha))
        alpha = alpha / alpha.sum()
        self.scales = scales.to(self.basis.dtype)
        self.scale_log_alpha = torch.log(alpha).to(self.basis.dtype)
        return history

    # -- the selector --------------------------------------------------------------------------
    @torch.no_grad()
    def fit_selector(self, coords: torch.Tensor, batch: int = 4096) -> None:
        """Fit the per-chart selector Gaussians to coordinates (N, n): chart k's Gaussian is the mean and
        covariance of the rescaled points c / s, weighted by the responsibilities of the pairs (k, s)."""
        from .chart_prior import pair_responsibilities

        check_tensor("coords", coords, ndim=2)
        x = coords.to(torch.float64)
        n = x.shape[1]
        K = self.n_charts
        sums = torch.zeros(K, dtype=torch.float64)
        firsts = torch.zeros(K, n, dtype=torch.float64)
        seconds = torch.zeros(K, n, n, dtype=torch.float64)
        pairs = self.pairs()
        for chunk in x.split(batch):
            w = pair_responsibilities(self, chunk.to(self.basis.dtype)).to(torch.float64)  # (B, P)
            for p, (k, j) in enumerate(pairs.tolist()):
                scaled = chunk / float(self.scales[j])
                wp = w[:, p]
                sums[k] += wp.sum()
                firsts[k] += wp @ scaled
                seconds[k] += (scaled * wp[:, None]).T @ scaled
        mass = sums.clamp_min(1e-12)
        means = firsts / mass[:, None]
        covs = seconds / mass[:, None, None] - means[:, :, None] * means[:, None, :]
        floor = SELECTOR_FLOOR * float(torch.diagonal(covs, dim1=1, dim2=2).mean().clamp_min(1e-12))
        covs = 0.5 * (covs + covs.mT) + floor * torch.eye(n, dtype=torch.float64)
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

    def selector_gmm(self, floor: float = 1e-6):
        """The selector as an EPLL GMM on the patches (patchreg.priors.GMM, remove_mean=True): one component per
        kept (chart, scale) pair, weight alpha_{k,s}, mean B s mu_k and covariance B s^2 Sigma_k B^T + floor I
        (the floor keeps the constant direction invertible, as the GMM's covariance floor).

        The chart model's own Gaussian summary: `epll_restore` with it measures what the charts add over
        their clusters' Gaussians (bench/chart_zstep_ablation.py).
        """
        from .gmm import GMM

        if not self.has_selector:
            raise ValueError("this chart model has no selector: call fit_selector(coords) (training does it)")
        if not floor > 0:
            raise ValueError(f"floor must be > 0, got {floor}")
        k, j = self.pairs().unbind(1)
        s = self.scales.to(torch.float64)[j]
        basis = self.basis.to(torch.float64)
        gmm = GMM(len(k), self.patch_size, self.channels, remove_mean=True)
        cov = s[:, None, None] ** 2 * (basis @ self.selector_covariances()[k] @ basis.T)
        gmm.covariances = cov + floor * torch.eye(self.dim, dtype=torch.float64)
        gmm.means = s[:, None] * (self.selector_means.to(torch.float64)[k] @ basis.T)
        weights = self.scale_log_alpha.to(torch.float64)[k, j].exp()
        gmm.weights = weights / weights.sum()
        return gmm

    def _selector_eigen(self):
        """(eigenvalues (K, n), eigenvectors (K, n, n)) of the selector covariances, float64, cached."""
        key = (self.selector_prec_chol.data_ptr(), self.selector_prec_chol.dtype)
        if getattr(self, "_eigen_key", None) != key:
            self._eigen = torch.linalg.eigh(self.selector_covariances())
            self._eigen_key = key
        return self._eigen

    def selector_params(self, dtype, extra_variance: float = 0.0):
        """(factor (P, n, n), log_const (P,), means (P, n)) of the selector over the kept pairs, in the GMM
        op's form: pair (k, s) is N(s mu_k, s^2 Sigma_k + extra_variance I) with weight alpha_{k,s}.

        With Sigma_k = V diag(lam) V^T the precision factor is V diag(s^2 lam + v)^-1/2 (any square factor
        works for the op), so a new noise level costs a scaling, not P Cholesky factorizations.
        """
        if not self.has_selector:
            raise ValueError("this chart model has no selector: call fit_selector(coords) (training does it)")
        k, j = self.pairs().unbind(1)
        s = self.scales.to(torch.float64)[j]
        n = self.dim - 1
        lam, vecs = self._selector_eigen()
        var = s[:, None] ** 2 * lam.clamp_min(0)[k] + extra_variance  # (P, n)
        factor = vecs[k] * var.rsqrt()[:, None, :]
        log_weight = self.scale_log_alpha.to(torch.float64)[k, j]
        log_const = log_weight - 0.5 * n * math.log(2 * math.pi) - 0.5 * var.log().sum(-1)
        means = s[:, None] * self.selector_means.to(torch.float64)[k]
        return factor.to(dtype).contiguous(), log_const.to(dtype).contiguous(), means.to(dtype).contiguous()

    def _selector_scale_terms(self, dtype, device):
        """Cached terms of the selector scores at extra_variance 0: (U (K, n, n) with U_k U_k^T = Sigma_k^-1 (the
        stored triangular factor, whose zeros the GMM op skips), G (n, K) with column k = Sigma_k^-1 mu_k,
        t2t (2, S) = (1/s^2, 1/s), C (K, S): log alpha_{k,s} + log N(0; 0, s^2 Sigma_k) - mu_k^T Sigma_k^-1 mu_k / 2
        (-inf for dropped pairs), pair_column (P,) = k S + j)."""
        key = (self.selector_prec_chol.data_ptr(), self.selector_means.data_ptr(), self.scales.data_ptr(),
               self.scale_log_alpha.data_ptr(), dtype, str(device))
        if getattr(self, "_scale_terms_key", None) != key:
            k, j = self.pairs().unbind(1)
            K, S, n = self.n_charts, self.scales.numel(), self.dim - 1
            U = self.selector_prec_chol.to(torch.float64)
            mu = self.selector_means.to(torch.float64)
            white = (U.mT @ mu[:, :, None])[:, :, 0]  # U_k^T mu_k
            G = (U @ white[:, :, None])[:, :, 0].T  # (n, K)
            logdet_prec = torch.linalg.slogdet(U).logabsdet * 2  # log det Sigma_k^-1
            s = self.scales.to(torch.float64)
            C = torch.full((K, S), -math.inf, dtype=torch.float64)
            C[k, j] = (self.scale_log_alpha.to(torch.float64)[k, j] - 0.5 * n * math.log(2 * math.pi)
                       - n * torch.log(s[j]) + 0.5 * logdet_prec[k] - 0.5 * (white**2).sum(1)[k])
            t2t = torch.stack([s ** -2, 1 / s])
            self._scale_terms = tuple(v.to(device=device, dtype=dtype).contiguous() for v in (U, G, t2t, C)) + \
                ((k * S + j).to(device),)
            self._scale_terms_key = key
        return self._scale_terms

    def _selector_terms(self, coords: torch.Tensor):
        """(-q_k / 2 (N, K), l_k (N, K)) with q_k = c^T Sigma_k^-1 c (the fused GMM op on K zero-mean
        components) and l_k = c^T Sigma_k^-1 mu_k: what the selector scores of all pairs are made of."""
        from ..ops.gmm import gmm_log_prob

        U, G, _, C, _ = self._selector_scale_terms(coords.dtype, coords.device)
        K = C.shape[0]
        coords = coords.contiguous()
        half_q = gmm_log_prob(coords, U, coords.new_zeros(K), coords.new_zeros(K, coords.shape[1]))
        return half_q, coords @ G

    def _selector_table(self, coords: torch.Tensor) -> torch.Tensor:
        """(N, K, S) selector log-likelihoods of every (chart, scale) at extra_variance 0; -inf for dropped pairs.

        Pair (k, s) is N(s mu_k, s^2 Sigma_k), so its quadratic form is
        (c - s mu_k)^T (s^2 Sigma_k)^-1 (c - s mu_k) = q_k / s^2 - 2 l_k / s + mu_k^T Sigma_k^-1 mu_k
        (`_selector_terms`): K n^2 + K n multiply-adds per point instead of P n^2 for the P pairs' Gaussians.
        """
        _, _, t2t, C, _ = self._selector_scale_terms(coords.dtype, coords.device)
        half_q, lin = self._selector_terms(coords)
        N, K = half_q.shape
        out = half_q[:, :, None] * t2t[0] + lin[:, :, None] * t2t[1]  # -q_k / (2 s^2) + l_k / s
        return out.add_(C)

    def selector_scores(self, coords: torch.Tensor, extra_variance: float = 0.0) -> torch.Tensor:
        """(N, P) selector log-likelihoods of every kept pair (k, s): log alpha_{k,s} + log N(c; s mu_k,
        s^2 Sigma_k + extra_variance I), the values of gmm_log_prob(coords, *selector_params(dtype, extra_variance)).

        At extra_variance 0 (the chart prior) computed per chart, not per pair (`_selector_table`; rounds
        differently from the per-pair form); otherwise by the GMM op on the P pairs' Gaussians.
        """
        from ..ops.gmm import gmm_log_prob

        if not self.has_selector:
            raise ValueError("this chart model has no selector: call fit_selector(coords) (training does it)")
        check_tensor("coords", coords, ndim=2)
        if extra_variance != 0:
            return gmm_log_prob(coords.contiguous(), *self.selector_params(coords.dtype, extra_variance))
        column = self._selector_scale_terms(coords.dtype, coords.device)[-1]
        return self._selector_table(coords).view(coords.shape[0], -1).index_select(1, column)

    def selector_top(self, coords: torch.Tensor, m: int, extra_variance: float = 0.0, chunk: int = 2048) -> torch.Tensor:
        """(N, m) int64 indices into pairs() of each point's m best pairs by `selector_scores` (the order within a
        row is not specified), in chunks of rows.

        At extra_variance 0 in two stages: each chart's best score over its scales (a running maximum, so the
        (N, K, S) table is never built), the m best charts by it, then the m best of those charts' pairs. The m
        best pairs lie in the m best charts (a pair outside them has m charts, hence m pairs, above it), so
        this is the top m of every pair up to the order of ties.
        """
        check_tensor("coords", coords, ndim=2)
        check_int("m", m, 1)
        if not self.has_selector:
            raise ValueError("this chart model has no selector: call fit_selector(coords) (training does it)")
        if extra_variance != 0:
            return torch.cat([self.selector_scores(part, extra_variance).topk(m, dim=1).indices
                              for part in coords.split(chunk)])
        _, _, t2t, C, column = self._selector_scale_terms(coords.dtype, coords.device)
        K, S = C.shape
        if m > len(column):
            raise ValueError(f"m must be <= the number of pairs {len(column)}, got {m}")
        pair_of = torch.full((K * S,), -1, dtype=torch.int64, device=coords.device)
        pair_of[column] = torch.arange(len(column), device=coords.device)
        mc = min(m, K)
        inv_s2, inv_s = t2t[0].tolist(), t2t[1].tolist()
        CT = C.T.contiguous()  # (S, K)
        out = []
        for part in coords.split(chunk):
            half_q, lin = self._selector_terms(part)
            best = torch.add(CT[0], half_q, alpha=inv_s2[0]).add_(lin, alpha=inv_s[0])
            step = torch.empty_like(best)
            for j in range(1, S):
                torch.add(CT[j], half_q, alpha=inv_s2[j], out=step).add_(lin, alpha=inv_s[j])
                torch.maximum(best, step, out=best)
            charts = best.topk(mc, dim=1).indices  # (R, mc)
            cand = (C[charts] + half_q.gather(1, charts)[:, :, None] * t2t[0]
                    + lin.gather(1, charts)[:, :, None] * t2t[1])  # (R, mc, S)
            flat = cand.view(len(part), -1).topk(m, dim=1).indices  # into (mc, S)
            out.append(pair_of[charts.gather(1, flat // S) * S + flat % S])
        top = torch.cat(out)
        if bool((top < 0).any()):  # only when fewer than m pairs have a finite score
            raise ValueError("the selector found fewer finite-score pairs than m; pass a smaller top_charts")
        return top

    # -- checkpoints -----------------------------------------------------------------------------
    def patch_header(self) -> dict:
        return {"patch_size": self.patch_size, "channels": self.channels, "coordinates": "mean_free_helmert"}

    def extra_tensors(self) -> dict:
        out = {"patch/basis": self.basis, "patch/scales": self.scales, "patch/scale_log_alpha": self.scale_log_alpha}
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
        if "patch/scales" in tensors:
            model.scales = tensors["patch/scales"].to(dtype)
            model.scale_log_alpha = tensors["patch/scale_log_alpha"].to(dtype)
        if "patch/selector/means" in tensors:
            model.selector_means = tensors["patch/selector/means"].to(dtype)
            model.selector_prec_chol = tensors["patch/selector/prec_chol"].to(dtype)
            model.selector_log_const = tensors["patch/selector/log_const"].to(dtype)
        model.history = header.get("history") or header.get("training", {}).get("history", [])
        return model.to(dtype)


def train_patch_charts(images, patch_size: int, family: str = "fif", n_charts: int = 32, latent_dim: int = 8,
                       width: int = 64, n_blocks: int = 2, config=None, out=None, resume: bool = False,
                       progress: bool = True, selector_points: int = 50_000, seed: int = 0,
                       scales=None, scale_points: int = 20_000) -> PatchCharts:
    """Train a PatchCharts model on random patches streamed from `images` (list of gray (H, W) arrays).

    Patches are drawn uniformly from all positions with the training stream's generator, so a run
    checkpointed every `config.checkpoint_every` steps resumes on the same patches. After training,
    alpha and the per-chart sigmas are set by maximum likelihood (finalize), the contrast-scale weights
    by EM on `scale_points` patches (`fit_scales`, default scales DEFAULT_SCALES) and the selector on
    `selector_points` patches of the same images (other seeds); `out` then holds the whole state.
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
    scales = DEFAULT_SCALES if scales is None else scales
    model.fit_scales(draw(scale_points, torch.Generator().manual_seed(config.seed + 3)), scales)
    coords = draw(selector_points, torch.Generator().manual_seed(config.seed + 2))
    model.fit_selector(coords)
    model.history = history
    from .. import distributed

    if out is not None and distributed.current_world().is_main:  # add the selector to the resumable state train_mixture wrote
        tensors, header = io.load_checkpoint(out, CHARTS_KIND)
        tensors.update(model.extra_tensors())
        io.save_checkpoint(out, CHARTS_KIND, tensors, {k: v for k, v in header.items() if k not in ("kind", "format")})
    return model
