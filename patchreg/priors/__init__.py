"""Patch priors: the Gaussian mixture of EPLL (`GMM`, `epll_restore`), PatchNR's flow, and the chart
prior (`PatchCharts`, `ChartPrior`, `charts_restore`)."""

from .chart_prior import ChartPrior, chart_denoise_patches, charts_restore
from .epll import epll_restore
from .flow import PatchFlow
from .gmm import GMM
from .patch_charts import PatchCharts, mean_free_basis, train_patch_charts
from .patchnr import PatchNR

__all__ = ["GMM", "ChartPrior", "PatchCharts", "PatchFlow", "PatchNR", "chart_denoise_patches", "charts_restore",
           "epll_restore", "mean_free_basis", "train_patch_charts"]
