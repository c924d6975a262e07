"""Pure-PyTorch reference implementations of every patchreg op (no argument checks here)."""

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
    "coverage_count",
    "extract_patches",
    "extract_patches_at",
    "grid_size",
]
