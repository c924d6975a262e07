"""The chart prior: R(x) = -sum_i log p(P_i x) with p a chart mixture on image patches (PatchCharts).

Per call of `ChartPrior.nll(x)`:
1. the patches P_i x (all overlapping ones with `stride`, or `n_patches` random ones per image
   redrawn every call, as PatchNR) are named by the flat offsets of their top-left pixels; their
   mean-free coordinates c_i (patchreg.priors.patch_charts) are never stored whole: the selector gathers
   them in chunks of SELECT_CHUNK patches and the fused chart kernel reads each (patch, pair) entry's
   patch straight from x (`charts_log_prob_image`, `chart_image_log_prob`). Charts the kernel does not
   cover take the extracted patch matrix instead (`chart_patch_log_prob`);
2. the selector (one Gaussian per chart, scaled to every (chart, scale) pair) ranks the pairs for every
   patch and keeps the `top_charts` best (PatchCharts.selector_top: the pairs' scores come from K
   per-chart quadratic forms by the fused GMM op, the best charts first, then their best pairs);
   top_charts=None keeps every pair, which is then exact;
3. each kept pair is evaluated exactly by the fused chart kernel (`charts_log_prob_fused`, value
   and d log p_k / dc in one pass): the (patch, pair) entries are sorted by chart and gathered once,
   so every chart is one kernel call on a contiguous slice; the m values and gradients per patch
   are combined by a logsumexp over its m kept pairs (no (N, K, n) or (N, K, width) tensor is ever
   alive; the large work buffers are kept by ChartPrior between calls);
   Charts the fused kernel does not cover (the VAE family's coupling-network charts, Alberti et al.) are
   evaluated chart by chart by their own differentiable `log_prob`, the gradient by autograd
   (`_run_generic_chart`): the same density and selection, without the kernel's speed;
4. the gradient goes back to the image through the coordinates' basis and the fused aggregation
   (the adjoint of extraction: `aggregate_patches`, or `aggregate_patches_at` for random positions).
With the reference backend (patchreg.use_backend("reference")) the same steps run in pure PyTorch.

Dropping charts changes log p by at most log(1 + sum of the dropped charts' mass): with the
selector's ranking the dropped charts' posterior mass is small; bench/chart_prior_speed.py
measures the error in log p and tests/test_chart_prior.py checks exactness with every chart kept.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_int, check_tensor
from ..ops.charts import check_precision, charts_log_prob_fused, charts_log_prob_image
from ..ops.gmm import gmm_log_prob
from ..ops.patches import aggregate_patches, aggregate_patches_at, extract_patches, extract_patches_at
from ..reference.charts import charts_image_points
from ._patch_images import check_patch_image, random_positions
from .patch_charts import PatchCharts

__all__ = ["ChartPrior", "chart_denoise_patches", "chart_image_log_prob", "chart_patch_log_prob", "charts_restore",
           "select_charts"]

REDUCTIONS = ("mean", "sum")
SELECT_CHUNK = 8192  # rows per block of the chart selection (its (rows, K) terms stay in cache)
ENTRY_BUDGET = 1 << 24  # kept values (log-densities and gradients) per chunk of rows in chart_patch_log_prob
# True: rank the pairs as before 2026-12-03, by the GMM op on every pair's own Gaussian (P n^2 per patch instead
# of K n^2); the same ranking up to rounding, kept only so bench/chart_prior_speed.py can time the old baseline
_SELECT_BY_PAIRS = False
# False: fused charts score the extracted (N, C p^2) patch matrix as before 2026-12-06 instead of letting the kernel
# read the image (the same numbers up to rounding); kept only so bench/chart_prior_speed.py can time the old path
_READ_FROM_IMAGE = True


def select_charts(model: PatchCharts, coords: torch.Tensor, top_charts: int | None, extra_variance: float = 0.0):
    """(N, m) int64: the `top_charts` best (chart, scale) pairs of each patch (indices into model.pairs()) by
    the selector's log-likelihood (`PatchCharts.selector_top`); None when every pair is kept (top_charts None
    or >= the number of pairs)."""
    P = model.pairs().shape[0]
    if top_charts is None or top_charts >= P:
        return None
    if _SELECT_BY_PAIRS:
        scores = gmm_log_prob(coords.detach().contiguous(), *model.selector_params(coords.dtype, extra_variance))
        return scores.topk(top_charts, dim=1).indices
    return model.selector_top(coords.detach(), top_charts, extra_variance, chunk=SELECT_CHUNK)


class _Stacked(dict):
    """The stacked chart weights (the dict of stack_mlp_charts) that also keeps each chart's one-chart slices."""

    def chart(self, k: int) -> dict:
        slices = self.__dict__.setdefault("_slices", {})
        if k not in slices:
            slices[k] = {name: v[k : k + 1] for name, v in self.items()}
        return slices[k]


class _PerChart(dict):
    """The params of charts the fused kernel does not cover (family "vae", or other networks): empty, so every
    chart is evaluated by its own differentiable log_prob (`_run_generic_chart`)."""


def is_fusable(model: PatchCharts) -> bool:
    """Whether the fused chart kernel covers model's charts (FIF charts with built-in ResidualMLP networks)."""
    from ..charts.fif_chart import FreeFormChart
    from ..charts.architectures import ResidualMLP

    return all(isinstance(c, FreeFormChart) and isinstance(c.encoder, ResidualMLP) and isinstance(c.decoder, ResidualMLP)
               for c in model.mixture.charts)


def _stacked_params(model: PatchCharts, dtype) -> dict:
    """The stacked chart weights in dtype for the fused kernel, or an empty _PerChart when it does not apply."""
    from ..charts.stacked import stack_mlp_charts

    if not is_fusable(model):
        return _PerChart()
    return _Stacked({k: v.to(dtype).contiguous() for k, v in stack_mlp_charts(model.mixture).items()})


GENERIC_CHUNK = 4096  # rows per pass of the per-chart path (its Jacobians are (rows, n, d))


def _run_generic_chart(model: PatchCharts, x, k, sigma, compute_grad):
    """Chart k's own log_prob (any family) on x (R, n) with per-row off-manifold std sigma (R,): the same
    (log p_k(x), d log p_k / dx) as the fused kernel, by autograd, in chunks, in the charts' dtype."""
    chart = model.mixture.charts[k]
    net_dtype = model.mixture.log_alpha.dtype
    total = x.new_empty(len(x))
    grad = x.new_empty(x.shape) if compute_grad else None
    for rows in torch.arange(len(x), device=x.device).split(GENERIC_CHUNK):
        xs = x[rows].to(net_dtype).requires_grad_(compute_grad)
        with torch.enable_grad() if compute_grad else torch.no_grad():
            lp = chart.log_prob(xs, model.mixture.prior, sigma[rows].to(net_dtype))
            if compute_grad:
                (g,) = torch.autograd.grad(lp.sum(), xs)
                grad[rows] = g.to(x.dtype)
        total[rows] = lp.detach().to(x.dtype)
    return total, grad


class _PairTable:
    """Per kept (chart, scale) pair: chart (P,), scale (P,), 1/scale (P,) and log alpha_{k,s} - n log s (P,)."""

    def __init__(self, model: PatchCharts, dtype, device):
        pairs = model.pairs().to(device)
        self.chart = pairs[:, 0]
        self.scale = model.scales.to(device=device, dtype=dtype)[pairs[:, 1]]
        self.inv_scale = 1.0 / self.scale
        self.const = model.pair_log_weights().to(device=device, dtype=dtype)
        self.size = pairs.shape[0]


def _chart_entries(model: PatchCharts, N: int, selection, device):
    """Per chart k with work: (k, rows (R,), slots (R,), pair indices (R,)), the (patch, kept pair) entries of
    chart k at any scale. Within one slot a patch appears at most once (a slot holds one pair per patch)."""
    pairs = model.pairs().to(device)
    P = pairs.shape[0]
    if selection is None:  # every pair of every patch: slot = pair index
        selection = torch.arange(P, device=device).expand(N, P)
    chart_of = pairs[:, 0][selection]  # (N, m)
    for k in range(model.n_charts):
        rows, slots = (chart_of == k).nonzero(as_tuple=True)
        if rows.numel():
            yield k, rows, slots, selection[rows, slots]


class _ImagePoints:
    """Points the fused chart op reads straight from an image (`charts_log_prob_image`): point e is
    scale[e] * basis^T (the patch whose top-left pixel is image.flatten()[offsets[e]]). Indexing selects
    points; materialize() builds them as an (R, n) tensor for the paths without the image op."""

    def __init__(self, image, offsets, basis, scale, patch_size):
        self.image, self.offsets, self.basis, self.scale, self.patch_size = image, offsets, basis, scale, patch_size

    def __len__(self):
        return self.offsets.shape[0]

    def __getitem__(self, sel):
        return _ImagePoints(self.image, self.offsets[sel], self.basis, self.scale[sel], self.patch_size)

    def materialize(self) -> torch.Tensor:
        return charts_image_points(self.image, self.offsets, self.basis, self.scale, self.patch_size)


def _fused(x, one, sigma, compute_grad, precision):
    """The fused chart op on points x: an (R, n) tensor or _ImagePoints (read from the image by the kernel)."""
    zero = one["center"].new_zeros(1)
    if isinstance(x, _ImagePoints):
        return charts_log_prob_image(x.image, x.offsets, x.basis, x.scale, x.patch_size, one, zero, sigma,
                                     compute_grad=compute_grad, precision=precision, check_offsets=False)
    return charts_log_prob_fused(x, one, zero, sigma, compute_grad=compute_grad, precision=precision)


def _run_chart(model: PatchCharts, x, params, k, scales, extra_variance, compute_grad, precision="float32"):
    """Chart k's fused op on the rescaled points x = c / s (R, n): (log p_k(x) (R,), d log p_k / dx (R, n) or None).

    One kernel call for all scales of the chart when extra_variance is 0 (sigma_k in the chart's units is
    then the same at every scale); else one per scale (sigma_k^2 + extra_variance / s^2 depends on s).
    NaN (the kernel's answer where J^T J is singular, far off a chart) is left to the caller.
    """
    sigma2 = float(model.mixture.sigma.detach().to(torch.float64).expand(model.n_charts)[k]) ** 2
    if isinstance(params, _PerChart):
        if isinstance(x, _ImagePoints):
            x = x.materialize()
        var = x.new_full((len(x),), sigma2)
        if extra_variance != 0:
            var = var + extra_variance / scales.to(x.dtype) ** 2
        return _run_generic_chart(model, x, k, var.sqrt(), compute_grad)
    one = params.chart(k) if isinstance(params, _Stacked) else {name: v[k : k + 1] for name, v in params.items()}
    if extra_variance == 0:
        t, _, g = _fused(x, one, math.sqrt(sigma2), compute_grad, precision)
        return t, (g if compute_grad else None)
    like = one["center"]
    total = like.new_empty(len(x))
    grad = like.new_empty(len(x), like.shape[1]) if compute_grad else None
    for s in scales.unique().tolist():
        sel = (scales == s).nonzero()[:, 0]
        t, _, g = _fused(x[sel], one, math.sqrt(sigma2 + extra_variance / s**2), compute_grad, precision)
        total[sel] = t
        if compute_grad:
            grad[sel] = g
    return total, grad


def _evaluate_entries(model: PatchCharts, coords, params, k, rows, pair_idx, extra_variance, compute_grad):
    """Chart k's fused op on the entries: (log alpha_{k,s} - n log s + log p_k(c/s) (R,), d/dc (R, n) or None).

    NaN (the kernel's answer where J^T J is singular, far off a chart) becomes -inf with a zero gradient.
    """
    table = _PairTable(model, coords.dtype, coords.device)
    scales = table.scale[pair_idx]
    x = coords.index_select(0, rows) / scales[:, None]
    total, grad = _run_chart(model, x, params, k, scales, extra_variance, compute_grad)
    bad = torch.isnan(total)
    total = total.masked_fill(bad, -math.inf) + table.const[pair_idx]
    if compute_grad:
        grad = grad.masked_fill(bad[:, None], 0.0) / scales[:, None]
    return total, grad


def _buffer(workspace: dict | None, name: str, shape, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of `shape` in like's dtype and device: a view of workspace[name] (grown when too
    small, kept for the next call) or, without a workspace, a new tensor. Reusing the memory avoids the first-touch
    page faults of a fresh tens-of-MB allocation on every call (about 1 ms per MB on the 2-core benchmark machine)."""
    numel = math.prod(shape)
    if workspace is None:
        return like.new_empty(shape)
    buf = workspace.get(name)
    if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
        workspace[name] = buf = like.new_empty(numel)
    return buf[:numel].view(shape)


def _log_prob_rows(model: PatchCharts, coords, params, selection, table: _PairTable, extra_variance, compute_grad,
                   workspace=None, precision="float32"):
    """chart_patch_log_prob on one chunk of rows, with an explicit selection (N, m) (None: every pair).

    coords: the rows' mean-free coordinates (N, n), or _ImagePoints at scale 1 (the rows read from the image).
    The N m (patch, kept pair) entries are sorted by chart; their rescaled points c / s are gathered once into
    one (N m, n) buffer (from an image: only their offsets and scales, the kernel reads the patches), so chart
    k's entries are one contiguous slice for its kernel call, whose outputs go to the matching slices of the
    sorted results; per slot, one gather brings the gradients back to patch order.
    """
    from_image = isinstance(coords, _ImagePoints)
    like = coords.image if from_image else coords
    N, n = len(coords), (coords.basis.shape[1] if from_image else coords.shape[1])
    device = like.device
    if selection is None:  # every pair of every patch: slot = pair index
        selection = torch.arange(table.size, device=device).expand(N, table.size)
    m = selection.shape[1]
    E = N * m
    pair_of = selection.reshape(-1)  # entry e = row * m + slot
    chart_of = table.chart[pair_of]
    key = chart_of.to(torch.uint8 if model.n_charts <= 256 else torch.int32)  # a narrow key sorts faster
    order = torch.argsort(key, stable=True)  # the entries grouped by chart
    counts = torch.bincount(chart_of, minlength=model.n_charts).tolist()
    pair_sorted = pair_of.index_select(0, order)
    if from_image:
        x = _ImagePoints(coords.image, coords.offsets.index_select(0, order // m), coords.basis,
                         table.inv_scale.index_select(0, pair_sorted), coords.patch_size)
    else:
        x = torch.index_select(coords, 0, order // m, out=_buffer(workspace, "x", (E, n), coords))
        x.mul_(table.inv_scale.index_select(0, pair_sorted)[:, None])
    scales_sorted = table.scale.index_select(0, pair_sorted) if extra_variance != 0 else None
    total_sorted = like.new_empty(E)
    grad_sorted = _buffer(workspace, "grad", (E, n), like) if compute_grad else None
    start = 0
    for k, count in enumerate(counts):
        if count == 0:
            continue
        part = slice(start, start + count)
        start += count
        total, grad = _run_chart(model, x[part], params, k, None if scales_sorted is None else scales_sorted[part],
                                 extra_variance, compute_grad, precision)
        total_sorted[part] = total
        if compute_grad:
            grad_sorted[part] = grad
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(E, device=device)
    totals = total_sorted.index_select(0, inverse).view(N, m)
    bad = torch.isnan(totals)
    any_bad = bool(bad.any())
    if any_bad:  # NaN: -inf with a zero gradient
        totals.masked_fill_(bad, -math.inf)
    totals += table.const[selection]
    log_p = torch.logsumexp(totals, dim=1)
    if not compute_grad:
        return log_p, None
    # d log p / dc = sum over slots of softmax weight * (d log p_k / dx at c / s) / s
    safe = torch.where(torch.isfinite(log_p), log_p, torch.zeros_like(log_p))
    weights = torch.exp(totals - safe[:, None]).mul_(table.inv_scale[selection])
    inverse = inverse.view(N, m)
    slot = _buffer(workspace, "slot", (N, n), like)  # one slot's gradients at a time: no second (N m, n)
    grad = like.new_zeros(N, n)
    for j in range(m):
        torch.index_select(grad_sorted, 0, inverse[:, j], out=slot)
        if any_bad:
            slot.masked_fill_(bad[:, j, None], 0.0)
        grad.addcmul_(slot, weights[:, j : j + 1])
    return log_p, grad


def chart_patch_log_prob(model: PatchCharts, coords: torch.Tensor, top_charts: int | None = 2,
                         compute_grad: bool = True, extra_variance: float = 0.0, params: dict | None = None,
                         selection: torch.Tensor | None = None, workspace: dict | None = None,
                         precision: str = "float32"):
    """(log p (N,), d log p / dc (N, n) or None) for mean-free patch coordinates c (N, n), detached.

    log p(c) = logsumexp over the kept (chart, scale) pairs of log alpha_{k,s} - n log s + log p_k(c / s).
    extra_variance: added to every pair's off-manifold variance (the density of a patch seen through
    Gaussian noise of that variance). selection: precomputed (N, m) pair indices (else `select_charts`).
    params: the stacked chart weights in coords' dtype (cached by ChartPrior). workspace: a dict in which
    the large work buffers are kept between calls (ChartPrior passes one), or None. precision: "float32" or
    "bfloat16" (the fused kernel's bfloat16 tangent GEMMs, `charts_log_prob_fused`).
    Rows are processed in chunks of at most ENTRY_BUDGET kept values; within a chunk, one fused kernel call
    per chart (all its kept entries and scales at once) gives the chunk's (rows, m) pair log-densities and
    (rows, m, n) gradients (m = kept pairs per patch, not K), then a logsumexp over the m slots. Nothing of
    size (N, K, n) exists.
    """
    coords = coords.detach().contiguous()
    N, n = coords.shape
    params = params if params is not None else _stacked_params(model, coords.dtype)
    table = _PairTable(model, coords.dtype, coords.device)
    if selection is None:
        selection = select_charts(model, coords, top_charts, extra_variance)
    m = table.size if selection is None else selection.shape[1]
    rows = max(1, ENTRY_BUDGET // (m * (n + 1 if compute_grad else 1)))
    parts = [_log_prob_rows(model, coords[i : i + rows], params, None if selection is None else selection[i : i + rows],
                            table, extra_variance, compute_grad, workspace, precision) for i in range(0, N, rows)]
    if len(parts) == 1:
        return parts[0]
    log_p = torch.cat([p[0] for p in parts])
    return log_p, (torch.cat([p[1] for p in parts]) if compute_grad else None)


def chart_image_log_prob(model: PatchCharts, image: torch.Tensor, offsets: torch.Tensor, top_charts: int | None = 2,
                         compute_grad: bool = True, params: dict | None = None, workspace: dict | None = None,
                         precision: str = "float32"):
    """chart_patch_log_prob for the patches of image (I, C, H, W) whose top-left pixels are image.flatten()[offsets]
    (offsets (N,) int64, valid: ChartPrior builds them from positions): (log p (N,), d log p / dc (N, n) or None).

    The fused kernel reads the patches from the image (`charts_log_prob_image`), so neither the (N, C p^2) patch
    matrix nor the (N m, n) matrix of rescaled points is built; the selector's coordinates are gathered in chunks
    of SELECT_CHUNK rows. Charts the kernel does not cover take the patch matrix (chart_patch_log_prob).
    """
    image = image.detach().contiguous()
    params = params if params is not None else _stacked_params(model, image.dtype)
    basis = model.basis.to(device=image.device, dtype=image.dtype).contiguous()
    p = model.patch_size
    if not isinstance(params, _Stacked):
        coords = charts_image_points(image, offsets, basis, image.new_ones(len(offsets)), p)
        return chart_patch_log_prob(model, coords, top_charts, compute_grad, params=params, workspace=workspace,
                                    precision=precision)
    table = _PairTable(model, image.dtype, image.device)
    N, n = len(offsets), basis.shape[1]
    ones = image.new_ones(N)
    selection = None
    if top_charts is not None and top_charts < table.size:
        selection = torch.cat([select_charts(model, charts_image_points(image, o, basis, ones[: len(o)], p), top_charts)
                               for o in offsets.split(SELECT_CHUNK)])
    m = table.size if selection is None else selection.shape[1]
    rows = max(1, ENTRY_BUDGET // (m * (n + 1 if compute_grad else 1)))
    parts = [_log_prob_rows(model, _ImagePoints(image, offsets[i : i + rows], basis, ones[i : i + rows], p), params,
                            None if selection is None else selection[i : i + rows], table, 0.0, compute_grad,
                            workspace, precision) for i in range(0, N, rows)]
    if len(parts) == 1:
        return parts[0]
    log_p = torch.cat([q[0] for q in parts])
    return log_p, (torch.cat([q[1] for q in parts]) if compute_grad else None)


@torch.no_grad()
def pair_responsibilities(model: PatchCharts, coords: torch.Tensor) -> torch.Tensor:
    """(N, P) posterior probabilities of the kept (chart, scale) pairs (every pair evaluated exactly)."""
    coords = coords.contiguous()
    params = _stacked_params(model, coords.dtype)
    N = coords.shape[0]
    table = coords.new_full((N, model.pairs().shape[0]), -math.inf)
    for k, rows, slots, pair_idx in _chart_entries(model, N, None, coords.device):
        total, _ = _evaluate_entries(model, coords, params, k, rows, pair_idx, 0.0, False)
        table[rows, slots] = total
    return torch.softmax(table, dim=1)


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


class _ImageLogProb(torch.autograd.Function):
    """log p of the scored patches of x (B, C, H, W), read by the fused kernel; the gradient goes back through
    the coordinates' basis and the fused aggregation (the adjoint of extraction)."""

    @staticmethod
    def forward(ctx, x, evaluate, scatter):
        log_p, grad = evaluate(x.detach(), ctx.needs_input_grad[0])
        ctx.save_for_backward(grad if grad is not None else x.new_empty(0))
        ctx.scatter = scatter
        return log_p

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return ctx.scatter(grad_out[:, None] * grad), None, None


class ChartPrior:
    """R(x) per image for reconstruction: `nll(x)` -> (B,), differentiable in x.

    model: a trained PatchCharts (patchreg.priors.patch_charts; `PatchCharts.load(path)`).
    stride: patch stride of the all-patches mode. n_patches: None for all overlapping patches, else
    that many random patches per image and call (PatchNR's mode), from a stream seeded by `seed`.
    top_charts: charts evaluated exactly per patch (None: all K, exact). reduction: "mean" (default,
    lam independent of the image size) or "sum" (EPLL's energy). precision: "float32" (default) or "bfloat16":
    the fused kernel's decoder tangents in bfloat16 on AMX (float32 images, a CPU with AMX-BF16; about 1e-3
    nats in log p, bench/chart_prior_speed.py), the rest float32.
    """

    def __init__(self, model: PatchCharts, stride: int = 1, n_patches: int | None = None, top_charts: int | None = 2,
                 reduction: str = "mean", seed: int = 0, precision: str = "float32"):
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
        self.precision = check_precision(precision)
        self.patch_size, self.channels = model.patch_size, model.channels
        self._generator = torch.Generator()
        self._params: dict = {}
        self._workspace: dict = {}  # work buffers of chart_patch_log_prob, reused between calls
        self._grid: dict = {}  # the all-patches mode's positions and offsets per image shape
        self.reset()

    def reset(self) -> None:
        """Rewind the random-patch stream to `seed`."""
        self._generator.manual_seed(self.seed)

    def _check_image(self, x) -> None:
        check_patch_image(x, self.patch_size, self.channels, "chart prior", finite=True)
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"x must be float32 or float64, got {x.dtype}")
        if self.precision == "bfloat16" and x.dtype != torch.float32:
            raise TypeError(f"x must be float32 for precision='bfloat16', got {x.dtype}")

    def _weights(self, dtype, device) -> dict:
        key = (dtype, str(device))
        if key not in self._params:
            params = _stacked_params(self.model, dtype)
            self._params[key] = params if isinstance(params, _PerChart) else \
                _Stacked({k: v.to(device) for k, v in params.items()})
        return self._params[key]

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """The patches the prior scores, (B, L, d), differentiable in x."""
        B, _, H, W = x.shape
        if self.n_patches is None:
            return extract_patches(x, self.patch_size, self.stride)
        positions = random_positions(self._generator, B, self.n_patches, H, W, self.patch_size)
        return extract_patches_at(x, positions.to(x.device), self.patch_size)

    def _positions(self, x: torch.Tensor):
        """(positions (B, L, 2), offsets (B L,) into x.flatten()) of the patches scored in this call."""
        B, C, H, W = x.shape
        if self.n_patches is not None:
            positions = random_positions(self._generator, B, self.n_patches, H, W, self.patch_size).to(x.device)
        else:
            key = (tuple(x.shape), str(x.device))
            if key in self._grid:
                return self._grid[key]
            p, s = self.patch_size, self.stride
            rows = torch.arange(0, H - p + 1, s, device=x.device)
            cols = torch.arange(0, W - p + 1, s, device=x.device)
            grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(1, -1, 2)
            positions = grid.expand(B, -1, -1)
        offsets = (torch.arange(B, device=x.device)[:, None] * (C * H * W) + positions[..., 0] * W
                   + positions[..., 1]).reshape(-1)
        if self.n_patches is None:
            self._grid = {key: (positions, offsets)}  # the last shape only
        return positions, offsets

    def patch_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p of every scored patch of x, (B, L), differentiable in x.

        Fused charts: the kernel reads the patches from x (chart_image_log_prob); other charts: from the
        extracted patch matrix (chart_patch_log_prob)."""
        self._check_image(x)
        params = self._weights(x.dtype, x.device)
        if isinstance(params, _Stacked) and _READ_FROM_IMAGE:
            return self._image_log_prob(x, params)
        patches = self.patches(x)
        B, L, d = patches.shape
        coords = self.model.coords(patches.reshape(B * L, d))

        def evaluate(c, need_grad):
            return chart_patch_log_prob(self.model, c, self.top_charts, need_grad, params=params,
                                        workspace=self._workspace, precision=self.precision)

        return _PatchLogProb.apply(coords, evaluate).reshape(B, L)

    def _image_log_prob(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        B, _, H, W = x.shape
        positions, offsets = self._positions(x)
        L = positions.shape[1]
        basis_t = self.model.basis.to(device=x.device, dtype=x.dtype).T

        def evaluate(image, need_grad):
            return chart_image_log_prob(self.model, image, offsets, self.top_charts, need_grad, params=params,
                                        workspace=self._workspace, precision=self.precision)

        def scatter(grad_coords):  # d/dx of sum_i g_i log p(P_i x) from g_i d log p / dc_i (B L, n)
            grad_patches = (grad_coords @ basis_t).view(B, L, -1)
            if self.n_patches is None:
                return aggregate_patches(grad_patches, (H, W), self.patch_size, self.stride)
            return aggregate_patches_at(grad_patches, positions, (H, W), self.patch_size)

        return _ImageLogProb.apply(x, evaluate, scatter).reshape(B, L)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """R(x) for each image of x (B, C, H, W): shape (B,), in x's dtype."""
        log_p = self.patch_log_prob(x)
        return -(log_p.mean(1) if self.reduction == "mean" else log_p.sum(1))

    __call__ = nll


# --- the splitting solver: per-patch MAP projection onto the learned manifold ---------------------

COMBINES = ("mean", "best")
# the latent Gaussian of the tangent step has tangent_scale times the latent prior's variance; 3 was
# the best of 0.3, 1, 3, 10 on validation images at sigma 25 (bench/chart_prior_tuning.py)
TANGENT_SCALE = 3.0
DENOISE_CHUNK = 8192  # rows per tangent step (bounds its memory)
WEIGHT_FLOOR = 1e-3  # combine="mean": pairs below this responsibility are skipped (the rest renormalised)


@torch.no_grad()
def _tangent_map_step(chart, c, var, latent_var):
    """D(z1), z1 one Gauss-Newton step from z0 = E(c) for the MAP of z under c ~ N(D(z), var), z ~ N(0, latent_var I).

    var (R, 1): the off-manifold plus noise variance per row. Shrinks the on-manifold (tangent) part of
    the noise toward the chart's centre, which the projection D(E(c)) alone keeps.
    """
    z0 = chart.encode(c)
    d0, jac = chart.decode_with_jacobian(z0)  # (R, n), (R, n, d)
    d = z0.shape[1]
    eye = torch.eye(d, dtype=c.dtype, device=c.device)
    gram = jac.mT @ jac / var[:, :, None] + eye / latent_var
    rhs = (jac.mT @ (c - d0)[:, :, None]).squeeze(-1) / var - z0 / latent_var
    z1 = z0 + torch.linalg.solve(gram, rhs)
    return chart.decode(z1)


@torch.no_grad()
def chart_denoise_patches(model: PatchCharts, patches: torch.Tensor, noise_var: float, top_charts: int | None = 2,
                          combine: str = "mean", params: dict | None = None, tangent_step: bool = True,
                          tangent_scale: float = TANGENT_SCALE) -> torch.Tensor:
    """Denoise patches (N, d) seen through Gaussian noise of variance `noise_var` under the chart prior.

    Per patch and kept (chart k, scale s) pair (the selector's top pairs): the pair's responsibility under
    noise by the selector's Gaussian N(s mu_k, s^2 Sigma_k + noise_var I) (the cheap score, as EPLL's
    z-step, so one network pass per chart and no Jacobian), and the estimate
    s [D_k(E_k(c/s)) + w (c/s - D_k(E_k(c/s)))], w = sigma_k^2 / (sigma_k^2 + noise_var / s^2): the
    projection onto chart k's learned manifold at that contrast (the encoder as the projection,
    Alberti et al.'s retraction) plus the Wiener-shrunk off-manifold part.
    combine="mean" averages the charts' estimates by responsibility (the posterior mean over charts),
    "best" takes the most responsible chart (EPLL's choice). The patch mean is kept.
    """
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    dtype = patches.dtype
    means = patches.mean(dim=1, keepdim=True)
    coords = model.coords(patches).contiguous()
    N, n = coords.shape
    mixture = model.mixture
    pairs = model.pairs().to(coords.device)
    # responsibilities of the pairs under the noise: the selector's Gaussians at covariance
    # s^2 Sigma_k + noise_var I (as EPLL's z-step scores its components), top `top_charts` kept
    params = model.selector_params(dtype, noise_var)
    scores = gmm_log_prob(coords, *params)  # (N, P)
    m = scores.shape[1] if top_charts is None else min(top_charts, scores.shape[1])
    top_scores, selection = scores.topk(m, dim=1)
    weights = torch.softmax(top_scores, dim=1) if combine == "mean" else \
        torch.nn.functional.one_hot(top_scores.argmax(1), m).to(dtype)
    out = torch.zeros_like(coords)
    kept_mass = coords.new_zeros(N)
    sigma = mixture.sigma.detach().to(torch.float64).expand(model.n_charts)
    net_dtype = mixture.log_alpha.dtype  # the charts' networks run in the model's dtype
    for k, rows, slots, pair_idx in _chart_entries(model, N, selection, coords.device):
        w = weights[rows, slots]
        keep = w > WEIGHT_FLOOR  # pairs that cannot move the average are not evaluated
        rows, slots, pair_idx, w = rows[keep], slots[keep], pair_idx[keep], w[keep]
        chart = mixture.charts[k]
        # in chunks: the tangent step's forward-mode intermediates are (rows, width, d)
        for part in torch.arange(rows.numel(), device=rows.device).split(DENOISE_CHUNK):
            r, wp = rows[part], w[part]
            scale = model.scales.to(dtype)[pairs[pair_idx[part], 1]][:, None]
            c = coords.index_select(0, r) / scale
            if tangent_step:
                var = float(sigma[k]) ** 2 + noise_var / scale.to(net_dtype) ** 2
                on_manifold = _tangent_map_step(chart, c.to(net_dtype), var,
                                                tangent_scale * model.latent_variance()).to(dtype)
            else:
                on_manifold = chart.decode(chart.encode(c.to(net_dtype))).to(dtype)
            shrink = float(sigma[k]) ** 2 / (float(sigma[k]) ** 2 + noise_var / scale**2)
            out.index_add_(0, r, wp[:, None] * scale * (on_manifold + shrink * (c - on_manifold)))
            kept_mass.index_add_(0, r, wp)
    return model.patches_from_coords(out / kept_mass[:, None], means)


def charts_restore(y: torch.Tensor, physics, model: PatchCharts, sigma: float, betas=None, lam: float | None = None,
                   x0: torch.Tensor | None = None, top_charts: int | None = 1, combine: str = "mean",
                   inner_iters: int = 1, stride: int = 1, prior_weight: str = "uniform", cg_iters: int = 50,
                   cg_tol: float = 1e-6, progress: bool = False, tangent_scale: float = TANGENT_SCALE) -> torch.Tensor:
    """Restore images from y with the chart prior by half-quadratic splitting (as `epll_restore`).

    physics, sigma, betas (default (1/sigma^2) [1, 4, 8, 16, 32]), lam (default d / sigma^2), x0,
    inner_iters, stride, prior_weight, cg_iters, cg_tol: as patchreg.priors.epll_restore. The z-step
    is `chart_denoise_patches` at noise variance 1/beta with `top_charts` (default 1: on validation at
    sigma 25, 0.03 dB below 2 pairs at 0.6x the time) and `combine`.
    """
    from .hqs import check_hqs_settings, half_quadratic_splitting

    check_tensor("y", y)
    if not isinstance(model, PatchCharts):
        raise TypeError(f"model must be a patchreg.priors.PatchCharts, got {type(model).__name__}")
    betas, lam = check_hqs_settings(sigma, betas, lam, model.dim, inner_iters, stride, prior_weight)
    top_charts = None if top_charts is None else check_int("top_charts", top_charts, 1)
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    if isinstance(tangent_scale, bool) or not isinstance(tangent_scale, (int, float)) or not tangent_scale > 0:
        raise ValueError(f"tangent_scale must be a number > 0, got {tangent_scale!r}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"y contains {int((~torch.isfinite(y)).sum())} NaN or infinite values")
    params = _stacked_params(model, y.dtype)

    def denoise(patches, beta):
        return chart_denoise_patches(model, patches, 1.0 / beta, top_charts, combine, params,
                                     tangent_scale=tangent_scale)

    return half_quadratic_splitting(y, physics, denoise, model.patch_size, model.channels, betas, lam, x0=x0,
                                    inner_iters=inner_iters, stride=stride, prior_weight=prior_weight,
                                    cg_iters=cg_iters, cg_tol=cg_tol, progress=progress, desc="chart HQS",
                                    what="chart prior")
