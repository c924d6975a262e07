"""patchreg's patch priors as DeepInverse priors (`deepinv.optim.Prior`), for DeepInverse's algorithms.

    from patchreg.interop.deepinv import epll_prior
    prior = epll_prior("pretrained:gmm")           # or patchnr_prior(...), chart_prior(...)
    model = deepinv.optim.optim_builder("PGD", prior=prior, data_fidelity=deepinv.optim.L2(), ...)

`fn(x)` is the prior's negative log-likelihood per image, (B,), in nats per patch with the default
reduction "mean" (so DeepInverse's lambda plays the role of patchreg's lam); `grad(x)` its gradient in x
by one backward pass. `prox` is DeepInverse's default (inner gradient descent on fn).
The other direction needs no adapter: `patchreg.reconstruct` takes DeepInverse physics (A, A_adjoint)
as they are. Importing this module needs DeepInverse (`pip install deepinv`), which patchreg never imports
otherwise.
"""

from __future__ import annotations

try:
    from deepinv.optim import Prior
except ImportError as exc:  # deepinv is optional: say how to get it
    raise ImportError("patchreg.interop.deepinv needs DeepInverse: pip install deepinv (it is not a "
                      f"dependency of patchreg) [{exc}]") from exc
import torch

__all__ = ["PatchPrior", "epll_prior", "patchnr_prior", "chart_prior"]


class PatchPrior(Prior):
    """Any patchreg prior with `nll(x) -> (B,)` (GMM, PatchNR, ChartPrior) as a DeepInverse Prior.

    patchreg_prior: the wrapped object, kept as `.patchreg_prior`.
    """

    def __init__(self, patchreg_prior):
        if not callable(getattr(patchreg_prior, "nll", None)):
            raise TypeError(f"patchreg_prior must have nll(x) -> (B,), got {type(patchreg_prior).__name__}")
        super().__init__()
        self.patchreg_prior = patchreg_prior
        self.explicit_prior = True  # fn is the prior's value, not only a denoiser

    def fn(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Negative log-likelihood of each image of x (B, C, H, W) -> (B,)."""
        return self.patchreg_prior.nll(x)

    def grad(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """d fn / dx, one backward pass (no graph kept: DeepInverse's default asks for a double-backward graph)."""
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(self.fn(leaf).sum(), leaf)
        return gradient

    def reset(self) -> None:
        """Rewind the wrapped prior's random patch stream, if it has one (PatchNR, ChartPrior with n_patches)."""
        if callable(getattr(self.patchreg_prior, "reset", None)):
            self.patchreg_prior.reset()


def _load(model, loader):
    """A model object, or a checkpoint path / 'pretrained:NAME' loaded with `loader`."""
    if isinstance(model, torch.nn.Module) or not isinstance(model, (str, bytes)) and not hasattr(model, "__fspath__"):
        return model
    from ..pretrained import resolve_checkpoint

    return loader.load(resolve_checkpoint(model))


def epll_prior(gmm="pretrained:gmm", reduction: str = "mean", stride: int = 1) -> PatchPrior:
    """EPLL's GMM patch prior: fn(x) = mean (or sum) of -log p over the patches of each image (stride 1).

    gmm: a patchreg.priors.GMM, a checkpoint path or "pretrained:gmm".
    """
    from ..priors import GMM

    model = _load(gmm, GMM)
    if not isinstance(model, GMM):
        raise TypeError(f"gmm must be a patchreg GMM or its checkpoint, got {type(model).__name__}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")

    class _EPLL:
        channels = model.channels
        patch_size = model.patch_size

        @staticmethod
        def nll(x):
            return model.nll(x, reduction=reduction, stride=stride)

    prior = PatchPrior(_EPLL())
    prior.gmm = model
    return prior


def patchnr_prior(flow="pretrained:flow", n_patches: int = 40_000, seed: int = 0, **kwargs) -> PatchPrior:
    """PatchNR: fn(x) = mean -log p of `n_patches` random patches per image under the flow (redrawn per call).

    flow: a patchreg.priors.PatchFlow, a checkpoint path or "pretrained:flow"; kwargs go to PatchNR.
    """
    from ..priors import PatchFlow, PatchNR

    return PatchPrior(PatchNR(_load(flow, PatchFlow), n_patches=n_patches, seed=seed, **kwargs))


def chart_prior(charts="pretrained:charts", **kwargs) -> PatchPrior:
    """The chart-mixture prior (patchreg.priors.ChartPrior; kwargs: stride, n_patches, top_charts, reduction, seed).

    charts: a patchreg.priors.PatchCharts, a checkpoint path or "pretrained:charts".
    """
    from ..priors import ChartPrior, PatchCharts

    return PatchPrior(ChartPrior(_load(charts, PatchCharts), **kwargs))
