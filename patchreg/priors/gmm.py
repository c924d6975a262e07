"""Gaussian mixture model of image patches (the prior of EPLL, Zoran & Weiss 2011).

`GMM` holds K components with full covariances over d = C*p*p dimensional patches, optionally
after removing each patch's mean (its DC component), as Zoran & Weiss do. Parameters are kept
in float64 (weights (K), means (K, d), covariances (K, d, d)); likelihoods are evaluated in the
dtype of the data through the fused op `patchreg.ops.gmm.gmm_log_prob`.

Fitting (`GMM.fit`) is EM streamed over mini-batches: patches are never all in memory, the
sufficient statistics are accumulated in float64, and the model is checkpointed atomically after
every iteration so training can resume. See `fit` for the initialisation and covariance floor.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed, io
from .._checks import check_int, check_tensor
from ..ops.gmm import gmm_log_prob
from ..ops.patches import extract_patches

__all__ = ["GMM", "kmeans_plus_plus"]

CHECKPOINT_KIND = "gmm"


class GMM(torch.nn.Module):
    """Gaussian mixture over (C, p, p) patches flattened in `extract_patches` order.

    Attributes (buffers, float64): weights (K,), means (K, d), covariances (K, d, d).
    With remove_mean=True every patch has its mean subtracted before it is evaluated or fitted;
    the covariances are then singular along the constant patch and only the covariance floor
    keeps them invertible (as in Zoran & Weiss's model).
    """

    def __init__(self, n_components: int, patch_size: int, channels: int = 1, remove_mean: bool = True):
        super().__init__()
        self.n_components = check_int("n_components", n_components, 1)
        self.patch_size = check_int("patch_size", patch_size, 1)
        self.channels = check_int("channels", channels, 1)
        self.remove_mean = bool(remove_mean)
        d = self.dim
        self.register_buffer("weights", torch.full((n_components,), 1.0 / n_components, dtype=torch.float64))
        self.register_buffer("means", torch.zeros(n_components, d, dtype=torch.float64))
        self.register_buffer("covariances", torch.eye(d, dtype=torch.float64).repeat(n_components, 1, 1))
        # Fit settings and progress, stored in checkpoints.
        self.hyperparameters: dict = {}
        self.history: list[float] = []

    @property
    def dim(self) -> int:
        """Patch dimension d = channels * patch_size^2."""
        return self.channels * self.patch_size**2

    def extra_repr(self) -> str:
        return (
            f"n_components={self.n_components}, patch_size={self.patch_size}, "
            f"channels={self.channels}, remove_mean={self.remove_mean}"
        )

    # --- parameters in the form of the fused op ---------------------------------------------

    def component_params(self, extra_variance: float = 0.0, dtype=None, device=None):
        """(prec_chol (K, d, d), log_const (K,), means (K, d)) for covariances Sigma_k + extra_variance I.

        prec_chol U_k = L_k^-T (upper triangular, Sigma_k = L_k L_k^T), computed in float64 and
        then cast to `dtype` (default float64). EPLL passes extra_variance = 1/beta.
        """
        dtype = dtype or torch.float64
        device = device or self.means.device
        cov = self.covariances
        if extra_variance:
            cov = cov + extra_variance * torch.eye(self.dim, dtype=cov.dtype, device=cov.device)
        with _serial_linalg(cov.device):
            chol, info = torch.linalg.cholesky_ex(cov)
            if bool((info != 0).any()):
                bad = int(info.nonzero()[0, 0])
                raise ValueError(f"covariances[{bad}] is not positive definite; refit or raise the covariance floor")
            eye = torch.eye(self.dim, dtype=cov.dtype, device=cov.device).expand_as(cov)
            prec_chol = torch.linalg.solve_triangular(chol, eye, upper=False).transpose(1, 2)
        logdet_u = -torch.diagonal(chol, dim1=1, dim2=2).log().sum(-1)
        log_const = self.weights.log() - 0.5 * self.dim * math.log(2 * math.pi) + logdet_u
        return tuple(t.to(dtype=dtype, device=device).contiguous() for t in (prec_chol, log_const, self.means))

    def _prepare(self, patches: torch.Tensor) -> torch.Tensor:
        if patches.shape[-1] != self.dim:
            raise ValueError(
                f"patches have dimension {patches.shape[-1]} (last dim) but the GMM models "
                f"{self.channels}x{self.patch_size}x{self.patch_size} patches (d={self.dim})"
            )
        if self.remove_mean:
            patches = patches - patches.mean(dim=-1, keepdim=True)
        return patches

    # --- likelihoods -------------------------------------------------------------------------

    def log_prob(self, patches: torch.Tensor) -> torch.Tensor:
        """Mixture log-density of patches (..., d) -> (...); differentiable w.r.t. the patches."""
        check_tensor("patches", patches)
        flat = self._prepare(patches).reshape(-1, self.dim)
        params = self.component_params(dtype=flat.dtype, device=flat.device)
        loglik, _, _ = gmm_log_prob(flat.contiguous(), *params, mixture=True, compute_grad=False)
        return loglik.reshape(patches.shape[:-1])

    def component_log_prob(self, patches: torch.Tensor) -> torch.Tensor:
        """log(w_k N(x; mu_k, Sigma_k)) for every component: (..., d) -> (..., K)."""
        check_tensor("patches", patches)
        flat = self._prepare(patches).reshape(-1, self.dim)
        params = self.component_params(dtype=flat.dtype, device=flat.device)
        return gmm_log_prob(flat.contiguous(), *params).reshape(*patches.shape[:-1], self.n_components)

    def patch_nll(self, patches: torch.Tensor) -> torch.Tensor:
        """-log p of each patch (..., d) -> (...)."""
        return -self.log_prob(patches)

    def nll(self, x: torch.Tensor, reduction: str = "mean", stride: int = 1) -> torch.Tensor:
        """Negative log-likelihood of all overlapping patches of images x (B, C, H, W) -> (B,).

        reduction="mean" (default) averages -log p over the patches of each image, so a
        regularisation weight does not depend on the image size; "sum" adds them (EPLL's
        energy, whose weight must then scale like 1 / number of patches). Differentiable in x.
        """
        check_tensor("x", x, ndim=4)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if x.shape[1] != self.channels:
            raise ValueError(f"x has {x.shape[1]} channels (dim 1) but the GMM models {self.channels}")
        patches = extract_patches(x, self.patch_size, stride)
        nll = -self.log_prob(patches)  # (B, L); mean removal happens in log_prob
        return nll.mean(dim=1) if reduction == "mean" else nll.sum(dim=1)

    def twin_groups(self, atol: float = 1e-9) -> list[list[int]]:
        """Groups of components with the same mean and covariance (to atol, max abs difference).

        Such twins are one Gaussian whose weight is split: EM keeps them identical (their
        responsibilities stay proportional to their weights), so they waste components. A fit by
        this version starts every component from its own k-means centre (see `fit`); older
        checkpoints can hold twins.
        """
        flat = torch.cat([self.means, self.covariances.flatten(1)], dim=1)
        close = torch.cdist(flat, flat, p=float("inf")) <= atol
        groups, seen = [], set()
        for k in range(self.n_components):
            if k in seen:
                continue
            members = close[k].nonzero().flatten().tolist()
            seen.update(members)
            if len(members) > 1:
                groups.append(members)
        return groups

    # --- checkpoints ---------------------------------------------------------------------------

    def config(self) -> dict:
        return {
            "n_components": self.n_components,
            "patch_size": self.patch_size,
            "channels": self.channels,
            "remove_mean": self.remove_mean,
            "hyperparameters": self.hyperparameters,
            "history": self.history,
        }

    def save(self, path) -> Path:
        """Atomically write the model (safetensors + JSON header, kind "gmm")."""
        tensors = {"weights": self.weights, "means": self.means, "covariances": self.covariances}
        return io.save_checkpoint(path, CHECKPOINT_KIND, tensors, self.config())

    @classmethod
    def load(cls, path, patch_size: int | None = None, map_location="cpu") -> "GMM":
        """Read a GMM checkpoint; patch_size (if given) must match the stored one."""
        tensors, header = io.load_checkpoint(path, CHECKPOINT_KIND)
        try:
            model = cls(header["n_components"], header["patch_size"], header["channels"], header["remove_mean"])
        except KeyError as exc:
            raise ValueError(f"{path}: GMM checkpoint header lacks {exc}") from None
        if patch_size is not None and patch_size != model.patch_size:
            raise ValueError(
                f"{path} holds a GMM on {model.patch_size}x{model.patch_size} patches, "
                f"but patch_size={patch_size} was requested"
            )
        model._set_parameters(tensors, source=str(path))
        model.hyperparameters = dict(header.get("hyperparameters") or {})
        model.history = list(header.get("history") or [])
        return model.to(map_location)

    def _set_parameters(self, tensors: dict, source: str) -> None:
        K, d = self.n_components, self.dim
        expected = {"weights": (K,), "means": (K, d), "covariances": (K, d, d)}
        for key, shape in expected.items():
            if key not in tensors:
                raise ValueError(f"{source}: GMM checkpoint lacks the tensor {key!r}")
            if tuple(tensors[key].shape) != shape:
                raise ValueError(f"{source}: {key} has shape {tuple(tensors[key].shape)}, expected {shape}")
            getattr(self, key).copy_(tensors[key].to(torch.float64))

    # --- EM fitting ----------------------------------------------------------------------------

    def fit(
        self,
        source,
        n_iter: int = 30,
        patches_per_iter: int | None = None,
        batch_size: int = 8192,
        tol: float = 1e-4,
        covariance_floor: float = 1e-6,
        init_size: int | None = None,
        kmeans_iter: int = 10,
        seed: int = 0,
        checkpoint=None,
        resume: bool = False,
        progress: bool = True,
    ) -> "GMM":
        """Fit by EM streamed over mini-batches of patches.

        source: a tensor/array of patches (N, d) (visited in batches of `batch_size` every
            iteration); or a patch stream: an iterable of (n, d) batches such as
            `patchreg.data.PatchSampler`. From a stream each iteration takes `patches_per_iter`
            patches (required when the stream is infinite); a stream with `reset()` is rewound
            first, so every iteration sees the same patches (plain EM on a fixed sample that is
            never held in memory), other streams give fresh patches each iteration.
        Initialisation: k-means++ seeding and `kmeans_iter` Lloyd steps on the first
            `init_size` patches (default max(500 K, 10000)); means and covariances of the
            k-means clusters. A cluster too small for a covariance (at most d patches) keeps its
            k-means centre as its mean and takes the covariance of all init patches, so no two
            components start identical (identical components stay identical under EM).
        covariance_floor: every covariance eigenvalue is raised to at least this (in [0, 1]
            pixel units squared); it keeps the covariances invertible, notably along the
            constant patch when remove_mean=True.
        Stops after n_iter iterations or when the mean log-likelihood per patch improves by
            less than tol. checkpoint: path written atomically after every iteration; with
            resume=True an existing checkpoint there is loaded and training continues from it.
        seed: seeds the initialisation (and nothing else is random).
        Under torch.distributed (an initialised process group of N > 1 ranks, e.g. torchrun),
            `source` is this rank's shard: the initialisation runs on the first `init_size`
            patches of the shards concatenated in rank order, every E-step's sufficient
            statistics are all-reduced in float64, and rank 0 broadcasts the parameters and
            alone writes `checkpoint` and shows progress; N ranks thus fit the model one process
            fits on the shards concatenated (up to float64 summation order).
            `patches_per_iter` is per rank.
        """
        n_iter = check_int("n_iter", n_iter, 1)
        batch_size = check_int("batch_size", batch_size, 1)
        if not (covariance_floor > 0):
            raise ValueError(f"covariance_floor must be > 0, got {covariance_floor}")
        if tol < 0:
            raise ValueError(f"tol must be >= 0, got {tol}")
        stream = _PatchStream(source, self.dim, batch_size, patches_per_iter)
        world = distributed.current_world()
        progress = progress and world.is_main
        init_size = init_size or max(500 * self.n_components, 10000)
        self.hyperparameters = {
            "n_iter": n_iter,
            "patches_per_iter": stream.per_iter,
            "batch_size": batch_size,
            "tol": tol,
            "covariance_floor": covariance_floor,
            "kmeans_iter": kmeans_iter,
            "init_size": init_size,
            "seed": seed,
        }
        if world.distributed:
            self.hyperparameters.update(world_size=world.world_size, patches_per_iter_per_rank=stream.per_iter)
            self.hyperparameters["patches_per_iter"] = int(
                distributed.all_reduce_sum(torch.tensor([float(stream.per_iter)], dtype=torch.float64))[0]
            )
        start = 0
        # Rank 0 decides (only its file system need hold the checkpoint) and broadcasts the outcome.
        resuming = distributed.broadcast_object(bool(resume and checkpoint is not None and Path(checkpoint).is_file()))
        if resuming:
            start = self._resume_from(checkpoint) if world.is_main else 0
            if world.distributed:
                start = self._share_state(start)
            if self.hyperparameters.get("converged"):
                return self
        else:
            self.history = []
            first = distributed.gather_rows(stream.first(init_size))[:init_size]
            init = self._prepare(first.to(torch.float64))
            self._initialize(init, kmeans_iter, covariance_floor, seed)
            distributed.broadcast_tensors(self._parameter_tensors())
        bar = tqdm(range(start, n_iter), desc="EM", disable=not progress, initial=start, total=n_iter)
        for iteration in bar:
            stats = self._e_step(stream, progress)
            self.history.append(stats.mean_loglik)
            self._m_step(stats, covariance_floor)
            distributed.broadcast_tensors(self._parameter_tensors())  # every rank holds rank 0's M-step
            converged = len(self.history) > 1 and abs(self.history[-1] - self.history[-2]) < tol
            converged = distributed.broadcast_object(converged)  # all ranks stop together
            self.hyperparameters.update(iterations_done=iteration + 1, converged=converged)
            if checkpoint is not None and world.is_main:
                self.save(checkpoint)
            bar.set_postfix(loglik=f"{stats.mean_loglik:.4f}")
            if converged:
                break
        return self

    def _parameter_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.weights, self.means, self.covariances

    def _share_state(self, start: int) -> int:
        """Rank 0's resumed parameters, history and progress on every rank; returns the start iteration."""
        distributed.broadcast_tensors(self._parameter_tensors())
        shared = distributed.broadcast_object((start, self.history, self.hyperparameters.get("iterations_done"),
                                               self.hyperparameters.get("converged")))
        start, self.history, done, converged = shared
        self.hyperparameters.update(iterations_done=done, converged=converged)
        return start

    def _resume_from(self, checkpoint) -> int:
        other = GMM.load(checkpoint)
        mine = (self.n_components, self.patch_size, self.channels, self.remove_mean)
        theirs = (other.n_components, other.patch_size, other.channels, other.remove_mean)
        if mine != theirs:
            raise ValueError(
                f"cannot resume from {checkpoint}: it holds (n_components, patch_size, channels, "
                f"remove_mean)={theirs}, this model has {mine}"
            )
        self._set_parameters(
            {"weights": other.weights, "means": other.means, "covariances": other.covariances}, str(checkpoint)
        )
        self.history = other.history
        done = int(other.hyperparameters.get("iterations_done", len(self.history)))
        # The initialisation happened in the run that wrote the checkpoint: keep its record, not this call's default.
        self.hyperparameters.update(iterations_done=done, converged=bool(other.hyperparameters.get("converged")),
                                    init_size=other.hyperparameters.get("init_size"))
        return done

    def _initialize(self, x: torch.Tensor, kmeans_iter: int, floor: float, seed: int) -> None:
        """k-means++ / Lloyd on x (n, d) float64, then per-cluster weights, means and covariances."""
        K, d = self.n_components, self.dim
        if x.shape[0] < K:
            raise ValueError(f"need at least n_components={K} patches to initialise, got {x.shape[0]}")
        generator = torch.Generator().manual_seed(seed)
        centers = kmeans_plus_plus(x, K, generator)
        for _ in range(kmeans_iter):
            labels = torch.cdist(x, centers).argmin(dim=1)
            counts = torch.bincount(labels, minlength=K).to(x.dtype)
            sums = torch.zeros_like(centers).index_add_(0, labels, x)
            filled = counts > 0
            centers[filled] = sums[filled] / counts[filled, None]
        labels = torch.cdist(x, centers).argmin(dim=1)
        resp = torch.nn.functional.one_hot(labels, K).to(x.dtype)
        stats = _Statistics.zeros(K, d, x.device)
        stats.add(x, resp, loglik_sum=0.0)
        # Clusters too small for a covariance keep their own centre (a shared fallback mean would
        # make them exact twins for ever) and borrow the covariance of all the init patches.
        global_cov = torch.cov(x.T).reshape(d, d)
        self._m_step(stats, floor, fallback_mean=centers, fallback_cov=global_cov)

    def _e_step(self, stream: "_PatchStream", progress: bool) -> "_Statistics":
        stats = _Statistics.zeros(self.n_components, self.dim, self.means.device)
        batches = stream.epoch()
        bar = tqdm(batches, desc="E-step", leave=False, disable=not progress, total=stream.batches_per_iter)
        for batch in bar:
            x = self._prepare(batch.to(self.means.device))
            params = self.component_params(dtype=x.dtype, device=x.device)
            stats.add_log_densities(x.to(torch.float64), gmm_log_prob(x.contiguous(), *params))
        stats.all_reduce()
        if stats.count == 0:
            raise ValueError("the patch source yielded no patches")
        return stats

    def _m_step(self, stats: "_Statistics", floor: float, fallback_mean: torch.Tensor | None = None,
                fallback_cov: torch.Tensor | None = None) -> None:
        K, d = self.n_components, self.dim
        nk = stats.resp_sum
        # Components with fewer than d patches' worth of responsibility keep their old
        # mean/covariance (or take the fallbacks): their statistics cannot define a covariance.
        alive = nk > max(d, 1e-10 * stats.count)
        means = stats.first / nk.clamp(min=1e-300)[:, None]
        second = stats.second_matrix() / nk.clamp(min=1e-300)[:, None, None]
        cov = second - means[:, :, None] * means[:, None, :]
        old_means = self.means if fallback_mean is None else fallback_mean
        new_means = torch.where(alive[:, None], means, old_means)
        old_cov = self.covariances if fallback_cov is None else fallback_cov.expand(K, d, d)
        new_cov = torch.where(alive[:, None, None], cov, old_cov)
        self.means.copy_(new_means)
        self.covariances.copy_(floor_eigenvalues(new_cov, floor))
        weights = (nk / stats.count).clamp(min=1e-12)
        self.weights.copy_(weights / weights.sum())


@contextlib.contextmanager
def _serial_linalg(device):
    """One CPU thread for batched LAPACK calls on K small matrices.

    Their parallel loop does ~0.01 ms of work per matrix; measured on the 2-core machine with
    other jobs running, 2 threads made solve_triangular on (200, 36, 36) 400x slower (1.7 s).
    """
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def floor_eigenvalues(cov: torch.Tensor, floor: float) -> torch.Tensor:
    """Symmetrise and raise every eigenvalue of the (K, d, d) covariances to at least `floor`."""
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    with _serial_linalg(cov.device):
        evals, evecs = torch.linalg.eigh(cov)
    return (evecs * evals.clamp(min=floor).unsqueeze(-2)) @ evecs.transpose(-1, -2)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): k centres drawn from the rows of x (n, d)."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centers = [x[first]]
    dist2 = (x - x[first]).square().sum(dim=1)
    for _ in range(1, k):
        total = dist2.sum()
        if total <= 0:  # fewer distinct points than k: pick uniformly among the rest
            index = int(torch.randint(n, (1,), generator=generator))
        else:
            index = int(torch.multinomial((dist2 / total).cpu(), 1, generator=generator))
        centers.append(x[index])
        dist2 = torch.minimum(dist2, (x - x[index]).square().sum(dim=1))
    return torch.stack(centers).clone()


# Responsibilities at most this are dropped from the EM statistics: a live component has at least d
# patches of responsibility, and the pairs dropped add less than 1e-12 patch each (at most n * 1e-12,
# 2e-6 patches at n = 2M). Natural 8x8 patches keep about 21 of 200 components above it (all 200 are
# above 0), so the second moments cost a tenth of the dense product. 0 keeps every pair.
RESP_FLOOR = 1e-12


class _Statistics:
    """EM sufficient statistics in float64: sum r_nk, sum r_nk x_n, sum r_nk x_n x_n^T, over the pairs
    (n, k) with r_nk > resp_floor (RESP_FLOOR), all three from the same pairs so they stay consistent."""

    def __init__(self, resp_sum, first, second, resp_floor: float = RESP_FLOOR):
        self.resp_sum, self.first, self.second = resp_sum, first, second
        self.resp_floor = resp_floor
        self.count = 0
        self.loglik_sum = 0.0

    @classmethod
    def zeros(cls, K: int, d: int, device, resp_floor: float = RESP_FLOOR) -> "_Statistics":
        f64 = torch.float64
        return cls(torch.zeros(K, dtype=f64, device=device), torch.zeros(K, d, dtype=f64, device=device),
                   torch.zeros(K, d, d, dtype=f64, device=device), resp_floor)

    def add(self, x: torch.Tensor, resp: torch.Tensor, loglik_sum: float) -> None:
        """Accumulate a batch x (n, d) float64 with responsibilities resp (n, K) float64."""
        self.count += x.shape[0]
        self.loglik_sum += loglik_sum
        resp = torch.where(resp > self.resp_floor, resp, 0.0)
        self.resp_sum += resp.sum(dim=0)
        self.first += resp.T @ x
        _add_second_moments(self.second, x, resp)

    def add_log_densities(self, x: torch.Tensor, comp: torch.Tensor) -> None:
        """Accumulate a batch x (n, d) float64 from its weighted component log-densities comp (n, K),
        log w_k + log N(x_n; mu_k, Sigma_k) in any float dtype: the same statistics as `add` with
        resp = softmax(comp) in float64, but with the float64 work done on the kept pairs only.

        A pair can pass the floor only if comp_nk > max_k comp_nk + log(floor), since the log-likelihood is
        at least the row's maximum; those candidates (about 22 of K = 200 for 8x8 patches) are selected in
        comp's dtype, and the log-likelihood, the responsibilities and the floor's test are float64 on them.
        The pairs left out weigh under K * floor in a row's log-likelihood (exactly nothing with floor 0)."""
        n, K = comp.shape
        if x.shape[0] != n:
            raise ValueError(f"x has {x.shape[0]} rows but comp has {n}")
        peak = comp.max(dim=1).values
        log_floor = math.log(self.resp_floor) if self.resp_floor > 0 else -math.inf
        candidate = comp > (peak + log_floor)[:, None] if self.resp_floor > 0 else torch.isfinite(comp)
        comp_idx, row_idx = candidate.T.nonzero(as_tuple=True)  # grouped by component, rows ascending
        peak64 = peak.to(torch.float64)
        shifted = comp[row_idx, comp_idx].to(torch.float64) - peak64[row_idx]
        mass = torch.zeros(n, dtype=torch.float64, device=x.device).index_add_(0, row_idx, shifted.exp())
        loglik = peak64 + mass.log()
        resp = torch.exp(shifted + (peak64 - loglik)[row_idx])
        kept = resp > self.resp_floor
        if not bool(kept.all()):
            comp_idx, row_idx, resp = comp_idx[kept], row_idx[kept], resp[kept]
        self.count += n
        self.loglik_sum += float(loglik.sum())
        counts = torch.bincount(comp_idx, minlength=K)
        self.resp_sum.index_add_(0, comp_idx, resp)
        root = resp.sqrt_()
        start = 0
        for k, count in enumerate(counts.tolist()):
            if count:
                rows, weight = row_idx[start : start + count], root[start : start + count]
                group = x.index_select(0, rows).mul_(weight[:, None])
                self.first[k].addmv_(group.T, weight)
                self.second[k].addmm_(group.T, group)
                start += count

    def all_reduce(self) -> None:
        """Sum the statistics of every rank, in float64 (a no-op for one process)."""
        if not distributed.current_world().distributed:
            return
        for tensor in (self.resp_sum, self.first, self.second):
            distributed.all_reduce_sum(tensor)
        scalars = torch.tensor([float(self.count), self.loglik_sum], dtype=torch.float64, device=self.first.device)
        distributed.all_reduce_sum(scalars)
        self.count, self.loglik_sum = int(scalars[0]), float(scalars[1])

    def second_matrix(self) -> torch.Tensor:
        return 0.5 * (self.second + self.second.transpose(1, 2))  # exactly symmetric for the eigen-floor

    @property
    def mean_loglik(self) -> float:
        return self.loglik_sum / max(self.count, 1)


def _add_second_moments(second: torch.Tensor, x: torch.Tensor, resp: torch.Tensor) -> None:
    """second[k] += sum_n resp[n, k] x_n x_n^T over the nonzero resp only: per component, its points
    gathered (a few hundred of a batch) and one (sqrt(r) x)^T (sqrt(r) x) product. Gathering per
    component keeps the working set small; gathering every pair at once is slower (its memory traffic)."""
    resp_t = resp.T.contiguous()
    nonzero = resp_t > 0
    for k, count in enumerate(nonzero.sum(dim=1).tolist()):
        if count:
            rows = nonzero[k].nonzero().squeeze(1)
            group = x.index_select(0, rows).mul_(resp_t[k].index_select(0, rows).sqrt_()[:, None])
            second[k].addmm_(group.T, group)


class _PatchStream:
    """Uniform access to the patch sources `GMM.fit` accepts (see its docstring)."""

    def __init__(self, source, dim: int, batch_size: int, patches_per_iter: int | None):
        self.dim = dim
        self.batch_size = batch_size
        if isinstance(source, np.ndarray):
            source = torch.from_numpy(source)
        if isinstance(source, torch.Tensor):
            check_tensor("source", source, ndim=2)
            if source.shape[1] != dim:
                raise ValueError(f"source has patches of dimension {source.shape[1]}, the GMM needs d={dim}")
            self.tensor = source
            total = source.shape[0]
            self.per_iter = total if patches_per_iter is None else min(check_int("patches_per_iter", patches_per_iter, 1), total)
        elif isinstance(source, Iterable):
            self.tensor = None
            self.source = source
            if patches_per_iter is None:
                try:
                    patches_per_iter = len(source) * getattr(source, "batch_size")
                except (TypeError, AttributeError):
                    raise ValueError(
                        "patches_per_iter is required when the source is a stream of unknown length"
                    ) from None
            self.per_iter = check_int("patches_per_iter", patches_per_iter, 1)
        else:
            raise TypeError(
                f"source must be a tensor of patches (N, d) or an iterable of patch batches, got {type(source).__name__}"
            )
        self.batches_per_iter = -(-self.per_iter // batch_size)

    def _batches(self) -> Iterator[torch.Tensor]:
        if self.tensor is not None:
            for start in range(0, self.per_iter, self.batch_size):
                yield self.tensor[start : min(start + self.batch_size, self.per_iter)]
            return
        if hasattr(self.source, "reset"):
            self.source.reset()
        for batch in self.source:
            if not isinstance(batch, torch.Tensor):
                batch = torch.as_tensor(np.asarray(batch))
            if batch.numel() % self.dim != 0:
                raise ValueError(f"a batch of shape {tuple(batch.shape)} does not hold patches of dimension {self.dim}")
            yield batch.reshape(-1, self.dim)

    def epoch(self) -> Iterator[torch.Tensor]:
        """One EM iteration's patches, `per_iter` of them in batches of at most batch_size."""
        remaining = self.per_iter
        for batch in self._batches():
            take = batch[:remaining]
            remaining -= take.shape[0]
            for start in range(0, take.shape[0], self.batch_size):
                yield take[start : start + self.batch_size]
            if remaining == 0:
                return

    def first(self, n: int) -> torch.Tensor:
        """The first n patches of an iteration (fewer if the source is smaller), in one tensor."""
        chunks, have = [], 0
        for batch in self.epoch():
            chunks.append(batch[: n - have])
            have += chunks[-1].shape[0]
            if have >= n:
                break
        if not chunks:
            raise ValueError("the patch source yielded no patches")
        return torch.cat(chunks)
