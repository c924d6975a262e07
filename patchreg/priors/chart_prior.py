"""The chart prior: R(x) = -sum_i log p(P_i x) with p a chart mixture on image patches (PatchCharts).

Per call of `ChartPrior.nll(x)`:
1. the patches P_i x (all overlapping ones with `stride`, or `n_patches` random ones per image
   redrawn every call, as PatchNR) are extracted by the fused patch op and mapped to their mean-free
   coordinates c_i (patchreg.priors.patch_charts);
2. the selector (one Gaussian per chart, the fused GMM kernel) ranks the K charts for every patch
   and keeps the `top_charts` best; top_charts=None keeps all K, which is then exact;
3. each kept chart is evaluated exactly by the fused chart kernel (`charts_log_prob_fused`, value
   and d log p_k / dc in one pass), one chart at a time over the patches that kept it, so no
   (N, K, n) or (N, K, width) tensor is ever alive; the per-patch log p and its gradient are
   accumulated by a streaming logsumexp;
4. the gradient goes back to the image through the coordinates' basis and the fused aggregation
   (the adjoint of extraction, via autograd of `extract_patches`).
With the reference backend (patchreg.use_backend("reference")) the same steps run in pure PyTorch.

Dropping charts changes log p by at most log(1 + sum of the dropped charts' mass): with the
selector's ranking the dropped charts' posterior mass is small; bench/chart_prior_speed.py
measures the error in log p and tests/test_chart_prior.py checks exactness with every chart kept.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_int, check_tensor
from ..ops.charts import charts_log_prob_fused
from ..ops.gmm import gmm_log_prob
from ..ops.patches import extract_patches, extract_patches_at
from .patch_charts import PatchCharts

__all__ = ["ChartPrior", "chart_denoise_patches", "chart_patch_log_prob", "charts_restore", "select_charts"]

REDUCTIONS = ("mean", "sum")


def select_charts(model: PatchCharts, coords: torch.Tensor, top_charts: int | None, extra_variance: float = 0.0):
    """(N, m) int64: the `top_charts` charts of each patch by the selector's log-likelihood; None/K: all."""
    K = model.n_charts
    if top_charts is None or top_charts >= K:
        return None
    params = model.selector_params(coords.dtype, extra_variance)
    scores = gmm_log_prob(coords.contiguous(), *params)  # (N, K)
    return scores.topk(top_charts, dim=1).indices


def _stacked_params(model: PatchCharts, dtype) -> dict:
    from ..charts.stacked import stack_mlp_charts

    return {k: v.to(dtype).contiguous() for k, v in stack_mlp_charts(model.mixture).items()}


def chart_patch_log_prob(model: PatchCharts, coords: torch.Tensor, top_charts: int | None = 2,
                         compute_grad: bool = True, extra_variance: float = 0.0, params: dict | None = None,
                         selection: torch.Tensor | None = None):
    """(log p (N,), d log p / dc (N, n) or None) for mean-free patch coordinates c (N, n), detached.

    extra_variance: added to every chart's sigma^2 (the density of a patch seen through Gaussian
    noise of that variance; the HQS solver passes 1/beta). selection: precomputed (N, m) chart
    indices (else from `select_charts`). params: the stacked chart weights in coords' dtype (cached
    by ChartPrior).
    """
    coords = coords.detach().contiguous()
    N, n = coords.shape
    mixture = model.mixture
    K = model.n_charts
    params = params if params is not None else _stacked_params(model, coords.dtype)
    log_alpha = mixture.log_alpha.detach().to(coords.dtype)
    sigma2 = (mixture.sigma.detach().to(torch.float64) ** 2).expand(K) + extra_variance
    if selection is None:
        selection = select_charts(model, coords, top_charts, extra_variance)
    # streaming logsumexp over the kept charts: running max, scaled sum and scaled gradient sum
    run_max = coords.new_full((N,), -math.inf)
    run_sum = coords.new_zeros(N)
    run_grad = coords.new_zeros(N, n) if compute_grad else None
    for k in range(K):
        rows = torch.arange(N, device=coords.device) if selection is None else (selection == k).any(1).nonzero()[:, 0]
        if rows.numel() == 0:
            continue
        one = {name: v[k : k + 1] for name, v in params.items()}
        total, _, grad = charts_log_prob_fused(coords.index_select(0, rows), one, log_alpha[k : k + 1],
                                               math.sqrt(float(sigma2[k])), compute_grad=compute_grad)
        old_max = run_max.index_select(0, rows)
        new_max = torch.maximum(old_max, total)
        keep = torch.exp(old_max - new_max)
        add = torch.exp(total - new_max)
        run_sum.index_copy_(0, rows, run_sum.index_select(0, rows) * keep + add)
        run_max.index_copy_(0, rows, new_max)
        if compute_grad:
            run_grad.index_copy_(0, rows, run_grad.index_select(0, rows) * keep[:, None] + grad * add[:, None])
    log_p = run_max + torch.log(run_sum)
    return log_p, (run_grad / run_sum[:, None] if compute_grad else None)


class _PatchLogProb(torch.autograd.Function):
    """log p(c) per patch with the gradient from the fused kernel (no graph through the charts)."""

    @staticmethod
    def forward(ctx, coords, evaluate):
        log_p, grad = evaluate(coords, ctx.needs_input_grad[0])
        ctx.save_for_backward(grad if grad is not None else coords.new_empty(0))
        return log_p

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad_out[:, None] * grad, None


class ChartPrior:
    """R(x) per image for reconstruction: `nll(x)` -> (B,), differentiable in x.

    model: a trained PatchCharts (patchreg.priors.patch_charts; `PatchCharts.load(path)`).
    stride: patch stride of the all-patches mode. n_patches: None for all overlapping patches, else
    that many random patches per image and call (PatchNR's mode), from a stream seeded by `seed`.
    top_charts: charts evaluated exactly per patch (None: all K, exact). reduction: "mean" (default,
    lam independent of the image size) or "sum" (EPLL's energy).
    """

    def __init__(self, model: PatchCharts, stride: int = 1, n_patches: int | None = None, top_charts: int | None = 2,
                 reduction: str = "mean", seed: int = 0):
        if not isinstance(model, PatchCharts):
            raise TypeError(f"model must be a patchreg.priors.PatchCharts, got {type(model).__name__}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.model = model
        self.stride = check_int("stride", stride, 1)
        self.n_patches = None if n_patches is None else check_int("n_patches", n_patches, 1)
        self.top_charts = None if top_charts is None else check_int("top_charts", top_charts, 1)
        if self.top_charts is not None and self.top_charts < model.n_charts and not model.has_selector:
            raise ValueError("top_charts < K needs the model's selector (PatchCharts.fit_selector); pass top_charts=None")
        self.reduction = reduction
        self.seed = check_int("seed", seed, 0)
        self.patch_size, self.channels = model.patch_size, model.channels
        self._generator = torch.Generator()
        self._params: dict = {}
        self.reset()

    def reset(self) -> None:
        """Rewind the random-patch stream to `seed`."""
        self._generator.manual_seed(self.seed)

    def _check_image(self, x) -> None:
        check_tensor("x", x, ndim=4)
        B, C, H, W = x.shape
        p = self.patch_size
        if C != self.channels:
            raise ValueError(f"x has {C} channels (dim 1) but the chart prior models {self.channels}-channel patches")
        if H < p or W < p:
            raise ValueError(f"x is {H}x{W}, smaller than the prior's {p}x{p} patches")
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"x must be float32 or float64, got {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"x contains {int((~torch.isfinite(x)).sum())} NaN or infinite values")

    def _weights(self, dtype, device) -> dict:
        key = (dtype, str(device))
        if key not in self._params:
            self._params[key] = {k: v.to(device) for k, v in _stacked_params(self.model, dtype).items()}
        return self._params[key]

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """The patches the prior scores, (B, L, d), differentiable in x."""
        B, _, H, W = x.shape
        if self.n_patches is None:
            return extract_patches(x, self.patch_size, self.stride)
        p = self.patch_size
        rows = torch.randint(H - p + 1, (B, self.n_patches), generator=self._generator)
        cols = torch.randint(W - p + 1, (B, self.n_patches), generator=self._generator)
        return extract_patches_at(x, torch.stack([rows, cols], -1).to(x.device), p)

    def patch_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p of every scored patch of x, (B, L), differentiable in x."""
        self._check_image(x)
        patches = self.patches(x)
        B, L, d = patches.shape
        coords = self.model.coords(patches.reshape(B * L, d))
        params = self._weights(x.dtype, x.device)

        def evaluate(c, need_grad):
            return chart_patch_log_prob(self.model, c, self.top_charts, need_grad, params=params)

        return _PatchLogProb.apply(coords, evaluate).reshape(B, L)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """R(x) for each image of x (B, C, H, W): shape (B,), in x's dtype."""
        log_p = self.patch_log_prob(x)
        return -(log_p.mean(1) if self.reduction == "mean" else log_p.sum(1))

    __call__ = nll


# --- the splitting solver: per-patch MAP projection onto the learned manifold ---------------------

COMBINES = ("mean", "best")


@torch.no_grad()
def chart_denoise_patches(model: PatchCharts, patches: torch.Tensor, noise_var: float, top_charts: int | None = 2,
                          combine: str = "mean", params: dict | None = None) -> torch.Tensor:
    """Denoise patches (N, d) seen through Gaussian noise of variance `noise_var` under the chart prior.

    Per patch and kept chart k (the selector's top charts): the chart's responsibility under noise,
    alpha_k p_k(c) with sigma_k^2 + noise_var, and the estimate D_k(E_k(c)) + s_k (c - D_k(E_k(c))),
    s_k = sigma_k^2 / (sigma_k^2 + noise_var): the projection onto chart k's learned manifold (the
    encoder as the projection, Alberti et al.'s retraction) plus the Wiener-shrunk off-manifold part.
    combine="mean" averages the charts' estimates by responsibility (the posterior mean over charts),
    "best" takes the most responsible chart (EPLL's choice). The patch mean is kept.
    """
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    dtype = patches.dtype
    means = patches.mean(dim=1, keepdim=True)
    coords = model.coords(patches).contiguous()
    N, n = coords.shape
    K = model.n_charts
    mixture = model.mixture
    params = params if params is not None else _stacked_params(model, dtype)
    log_alpha = mixture.log_alpha.to(dtype)
    sigma2 = (mixture.sigma.to(torch.float64) ** 2).expand(K)
    selection = select_charts(model, coords, top_charts, noise_var)
    m = K if selection is None else selection.shape[1]
    scores = coords.new_full((N, m), -math.inf)
    estimates = coords.new_zeros(N, m, n)
    net_dtype = mixture.log_alpha.dtype  # the charts' networks run in the model's dtype
    for k in range(K):
        if selection is None:
            rows, slot = torch.arange(N, device=coords.device), torch.full((N,), k, device=coords.device)
        else:
            rows, slot = (selection == k).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        c = coords.index_select(0, rows)
        one = {name: v[k : k + 1] for name, v in params.items()}
        total, _, _ = charts_log_prob_fused(c, one, log_alpha[k : k + 1], math.sqrt(float(sigma2[k]) + noise_var),
                                            compute_grad=False)
        chart = mixture.charts[k]
        on_manifold = chart.decode(chart.encode(c.to(net_dtype))).to(dtype)
        shrink = float(sigma2[k]) / (float(sigma2[k]) + noise_var)
        scores[rows, slot] = total
        estimates[rows, slot] = on_manifold + shrink * (c - on_manifold)
    if combine == "best":
        out = estimates[torch.arange(N, device=coords.device), scores.argmax(1)]
    else:
        out = (torch.softmax(scores, dim=1)[..., None] * estimates).sum(1)
    return model.patches_from_coords(out, means)


def charts_restore(y: torch.Tensor, physics, model: PatchCharts, sigma: float, betas=None, lam: float | None = None,
                   x0: torch.Tensor | None = None, top_charts: int | None = 2, combine: str = "mean",
                   inner_iters: int = 1, stride: int = 1, prior_weight: str = "uniform", cg_iters: int = 50,
                   cg_tol: float = 1e-6, progress: bool = False) -> torch.Tensor:
    """Restore images from y with the chart prior by half-quadratic splitting (as `epll_restore`).

    physics, sigma, betas (default (1/sigma^2) [1, 4, 8, 16, 32]), lam (default d / sigma^2), x0,
    inner_iters, stride, prior_weight, cg_iters, cg_tol: as patchreg.priors.epll_restore. The z-step
    is `chart_denoise_patches` at noise variance 1/beta with `top_charts` and `combine`.
    """
    from .epll import default_betas
    from .hqs import half_quadratic_splitting

    check_tensor("y", y)
    if not isinstance(model, PatchCharts):
        raise TypeError(f"model must be a patchreg.priors.PatchCharts, got {type(model).__name__}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a finite number > 0 (noise std on the [0, 1] scale), got {sigma!r}")
    betas = default_betas(sigma) if betas is None else [float(b) for b in betas]
    if not betas or any(not b > 0 for b in betas):
        raise ValueError(f"betas must be a non-empty list of positive numbers, got {betas}")
    lam = model.dim / sigma**2 if lam is None else lam
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    check_int("inner_iters", inner_iters, 1)
    check_int("stride", stride, 1)
    top_charts = None if top_charts is None else check_int("top_charts", top_charts, 1)
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    if prior_weight not in ("uniform", "coverage"):
        raise ValueError(f"prior_weight must be 'uniform' or 'coverage', got {prior_weight!r}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"y contains {int((~torch.isfinite(y)).sum())} NaN or infinite values")
    params = _stacked_params(model, y.dtype)

    def denoise(patches, beta):
        return chart_denoise_patches(model, patches, 1.0 / beta, top_charts, combine, params)

    return half_quadratic_splitting(y, physics, denoise, model.patch_size, model.channels, betas, lam, x0=x0,
                                    inner_iters=inner_iters, stride=stride, prior_weight=prior_weight,
                                    cg_iters=cg_iters, cg_tol=cg_tol, progress=progress, desc="chart HQS",
                                    what="chart prior")
