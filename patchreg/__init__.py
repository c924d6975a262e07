"""patchreg: learning the manifold of image patches and using it as a regularizer.

Patch operators run on fused C++/CUDA kernels (torch.ops.patchreg) or on a pure-PyTorch
reference (patchreg.reference); `set_backend` / `use_backend` choose between them.
"""

from . import metrics, physics, reference
from ._version import __version__
from .backend import extension_available, get_backend, set_backend, use_backend
from .ops import (
    aggregate_patches,
    aggregate_patches_at,
    extract_patches,
    extract_patches_at,
    gmm_log_prob,
    gmm_log_prob_image,
)
from .reconstruct import reconstruct

__all__ = [
    "__version__",
    "aggregate_patches",
    "aggregate_patches_at",
    "extension_available",
    "extract_patches",
    "extract_patches_at",
    "get_backend",
    "gmm_log_prob",
    "gmm_log_prob_image",
    "metrics",
    "physics",
    "reconstruct",
    "reference",
    "set_backend",
    "use_backend",
]
