"""Patch priors: the Gaussian mixture of EPLL (`GMM`, `epll_restore`) and PatchNR's flow."""

from .epll import epll_restore
from .flow import PatchFlow
from .gmm import GMM
from .patchnr import PatchNR

__all__ = ["GMM", "PatchFlow", "PatchNR", "epll_restore"]
