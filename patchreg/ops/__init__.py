"""Public operators; each module holds one family (checks, dispatch, fake and autograd)."""

from .patches import aggregate_patches, aggregate_patches_at, extract_patches, extract_patches_at

__all__ = ["aggregate_patches", "aggregate_patches_at", "extract_patches", "extract_patches_at"]
