"""Pure-PyTorch reference implementations of every patchreg op (no argument checks here)."""

from .charts import charts_image_points, charts_log_prob, charts_log_prob_image
from .patches import (
    aggregate_patches,
    aggregate_patches_at,
    coverage_count,
    extract_patches,
    extract_patches_at,
    grid_size,
)

__all__ = [
    "aggregate_patches",
    "aggregate_patches_at",
    "charts_image_points",
    "charts_log_prob",
    "charts_log_prob_image",
    "coverage_count",
    "extract_patches",
    "extract_patches_at",
    "grid_size",
]
