"""Public operators; each module holds one family (checks, dispatch, fake and autograd)."""

from .charts import charts_log_prob_fused
from .gmm import gmm_log_prob, gmm_log_prob_image
from .patches import aggregate_patches, aggregate_patches_at, extract_patches, extract_patches_at

__all__ = ["charts_log_prob_fused", "gmm_log_prob", "gmm_log_prob_image", "aggregate_patches", "aggregate_patches_at", "extract_patches", "extract_patches_at"]
