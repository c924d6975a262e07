"""The chart mixture: K charts, mixing weights alpha_k and off-manifold noise sigma.

  log p(x) = logsumexp_k [log alpha_k + log p_k(x)]     (p_k: the chart density, see chart.py)

Also: responsibilities (posterior chart probabilities), chart assignment (argmax), projection
onto the learned manifold (decode(encode(x)) in the assigned chart, iterated), and sampling
(k ~ alpha, z ~ p_Z, x = D_k(z) [+ sigma * noise]).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _checks
from .architectures import ARCHITECTURES, build_encoder_decoder
from .chart import ALIGNMENTS, Chart
from .fif_chart import FreeFormChart
from .latent_prior import CompactLatentPrior
from .vae_chart import InjectiveFlowChart

FAMILIES = ("vae", "fif")


class ChartMixture(nn.Module):
    def __init__(self, charts: list[Chart], sigma: float = 0.05, config: dict | None = None,
                 sigma_per_chart: bool = False):
        super().__init__()
        if len(charts) < 1:
            raise ValueError(f"a chart mixture needs K >= 1 charts, got {len(charts)}")
        dims = {(c.ambient_dim, c.latent_dim) for c in charts}
        if len(dims) != 1:
            raise ValueError(f"all charts must share (ambient_dim, latent_dim), got {sorted(dims)}")
        self.ambient_dim, self.latent_dim = dims.pop()
        self.charts = nn.ModuleList(charts)
        self.register_buffer("log_alpha", torch.full((len(charts),), -math.log(len(charts))))
        # one off-manifold noise level for all charts, or one per chart (natural-image patches: flat
        # and textured regions differ by orders of magnitude in their off-manifold variance)
        self.sigma_per_chart = bool(sigma_per_chart)
        shape = (len(charts),) if self.sigma_per_chart else ()
        self.register_buffer("log_sigma", torch.full(shape, math.log(sigma)))
        self.prior = CompactLatentPrior(self.latent_dim)
        self.config = dict(config or {})

    @property
    def n_charts(self) -> int:
        return len(self.charts)

    @property
    def sigma(self) -> torch.Tensor:
        """The off-manifold noise: a scalar, or (K,) with sigma_per_chart."""
        return self.log_sigma.exp()

    @staticmethod
    def _chart_sigma(sigma, k: int):
        """Chart k's sigma from a scalar or a (K,) tensor."""
        if torch.is_tensor(sigma) and sigma.dim() == 1:
            return sigma[k]
        return sigma

    def _check_x(self, x):
        _checks.check_tensor("x", x, ndim=2)
        if x.shape[1] != self.ambient_dim:
            raise ValueError(f"x must have shape (N, {self.ambient_dim}), got {tuple(x.shape)}")

    # -- density -------------------------------------------------------------------------
    def chart_log_probs(self, x: torch.Tensor, sigma=None, overlap_scale: float = 1.0) -> torch.Tensor:
        """(B, K): log p_k(x) for every chart."""
        self._check_x(x)
        sigma = self.sigma if sigma is None else sigma
        fused = self._fused_chart_log_probs(x, sigma, overlap_scale)
        if fused is not None:
            return fused
        return torch.stack([c.log_prob(x, self.prior, self._chart_sigma(sigma, k), overlap_scale)
                            for k, c in enumerate(self.charts)], dim=-1)

    def _fused_chart_log_probs(self, x: torch.Tensor, sigma, overlap_scale: float):
        """The fused kernel's log p_k(x) (patchreg.ops.charts) when it applies, else None.

        It applies to FIF charts with built-in ResidualMLP networks, the unscaled prior, on the
        CPU with the extension backend, and when no gradient is needed (the kernel has no
        parameter gradients; the differentiable per-chart path serves training losses).
        """
        from ..backend import use_extension
        from ..ops.charts import charts_log_prob_fused
        from .stacked import stack_mlp_charts

        if overlap_scale != 1.0 or not use_extension() or x.device.type != "cpu":
            return None
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return None
        if torch.is_tensor(sigma) and sigma.requires_grad and torch.is_grad_enabled():
            return None
        try:
            params = stack_mlp_charts(self)
        except TypeError:  # other chart families or architectures
            return None
        params = {k: v.to(x.dtype) for k, v in params.items()}
        log_alpha = self.log_alpha.detach().to(x.dtype)
        if torch.is_tensor(sigma) and sigma.dim() == 1:  # one sigma per chart: the op takes one, so chart by chart
            columns = []
            for k in range(self.n_charts):
                one = {name: v[k : k + 1] for name, v in params.items()}
                columns.append(charts_log_prob_fused(x, one, log_alpha[k : k + 1], float(sigma[k].detach()),
                                                     compute_grad=False)[1])
            return torch.cat(columns, dim=1)
        sigma = float(sigma) if not torch.is_tensor(sigma) else float(sigma.detach())
        _, chart_lp, _ = charts_log_prob_fused(x, params, log_alpha, sigma, compute_grad=False)
        return chart_lp

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(B,): log p(x) = logsumexp_k [log alpha_k + log p_k(x)]."""
        return torch.logsumexp(self.log_alpha + self.chart_log_probs(x), dim=-1)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K): posterior chart probabilities alpha_k p_k(x) / p(x); rows sum to 1."""
        return torch.softmax(self.log_alpha + self.chart_log_probs(x), dim=-1)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) int64: the most responsible chart of each point."""
        with torch.no_grad():
            return self.responsibilities(x).argmax(-1)

    # -- geometry ------------------------------------------------------------------------
    def project(self, x: torch.Tensor, n_iter: int = 1) -> torch.Tensor:
        """Points on the learned manifold: D_k(E_k(x)) in the assigned chart, repeated n_iter times."""
        self._check_x(x)
        _checks.check_int("n_iter", n_iter, 1)
        for _ in range(n_iter):
            labels = self.assign(x)
            out = torch.empty_like(x)
            for k, chart in enumerate(self.charts):
                sel = labels == k
                if sel.any():
                    out[sel] = chart.decode(chart.encode(x[sel]))
            x = out
        return x

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, noise: bool = False):
        """(x (n, ambient_dim), chart labels (n,)); noise=True adds the N(0, sigma^2 I) off-manifold noise."""
        _checks.check_int("n", n, 1)
        dtype = self.log_alpha.dtype
        labels = torch.multinomial(self.log_alpha.exp().cpu(), n, replacement=True, generator=generator)
        z = self.prior.sample(n, generator, dtype)
        x = torch.empty(n, self.ambient_dim, dtype=dtype)
        for k, chart in enumerate(self.charts):
            sel = labels == k
            if sel.any():
                x[sel] = chart.decode(chart.latent_from_prior(z[sel].to(self.log_alpha.device))).cpu()
        if noise:
            x = x + self.sigma.cpu() * torch.randn(x.shape, generator=generator, dtype=dtype)
        return x, labels


def build_mixture(family: str, n_charts: int, ambient_dim: int, latent_dim: int, architecture: str = "mlp",
                  width: int = 64, n_blocks: int = 2, sigma: float = 0.05, beta: float | None = None,
                  align: str | None = None, coupling_blocks: int = 5, sigma_per_chart: bool = False,
                  latent_blocks: int = 0) -> ChartMixture:
    """A ChartMixture of `n_charts` built-in charts; the returned model's `config` rebuilds it (checkpoints)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    _checks.check_int("n_charts", n_charts, 1)
    _checks.check_int("ambient_dim", ambient_dim, 2)
    _checks.check_int("latent_dim", latent_dim, 1)
    if latent_dim >= ambient_dim:
        raise ValueError(f"latent_dim must be < ambient_dim (a manifold of lower dimension), got d={latent_dim} >= n={ambient_dim}")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if family == "vae" and architecture != "mlp":
        raise ValueError("the vae family uses coupling networks (MLP subnets); architecture must be 'mlp'")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    _checks.check_int("latent_blocks", latent_blocks, 0)
    if latent_blocks and family != "vae":
        raise ValueError(f"latent_blocks (a latent flow) is for the vae family (Alberti et al.), got family {family!r}")
    align = align or ("center" if architecture == "conv" else "pca")
    if align not in ALIGNMENTS:
        raise ValueError(f"align must be one of {ALIGNMENTS}, got {align!r}")
    charts = []
    for _ in range(n_charts):
        if family == "vae":
            charts.append(InjectiveFlowChart(ambient_dim, latent_dim, width, coupling_blocks, latent_blocks=latent_blocks))
        else:
            enc, dec = build_encoder_decoder(architecture, ambient_dim, latent_dim, width, n_blocks)
            charts.append(FreeFormChart(enc, dec, ambient_dim, latent_dim, beta))
    config = dict(family=family, n_charts=n_charts, ambient_dim=ambient_dim, latent_dim=latent_dim,
                  architecture=architecture, width=width, n_blocks=n_blocks, sigma=sigma, beta=beta,
                  align=align, coupling_blocks=coupling_blocks)
    if sigma_per_chart:  # only recorded when set, so older checkpoints' configs still compare equal
        config["sigma_per_chart"] = True
    if latent_blocks:  # likewise
        config["latent_blocks"] = latent_blocks
    return ChartMixture(charts, sigma, config, sigma_per_chart=sigma_per_chart)
