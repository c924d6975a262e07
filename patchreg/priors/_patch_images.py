"""Checks and random patch positions shared by the patch priors' regularizers (PatchNR, chart prior)."""

from __future__ import annotations

import torch

from .._checks import check_tensor


def check_patch_image(x, patch_size: int, channels: int, what: str, finite: bool = False) -> None:
    """x must be (B, C, H, W) with C = channels and H, W >= patch_size; `what` names the prior in errors."""
    check_tensor("x", x, ndim=4)
    _, C, H, W = x.shape
    if C != channels:
        raise ValueError(f"x has {C} channels (dim 1) but the {what} models {channels}-channel patches")
    if H < patch_size or W < patch_size:
        raise ValueError(f"x is {H}x{W}, smaller than the {what}'s {patch_size}x{patch_size} patches")
    if finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"x contains {int((~torch.isfinite(x)).sum())} NaN or infinite values")


def random_positions(generator: torch.Generator, batch: int, n: int, height: int, width: int, patch_size: int):
    """(batch, n, 2) int64 top-left corners, uniform over the valid ones, drawn on the CPU from `generator`."""
    rows = torch.randint(height - patch_size + 1, (batch, n), generator=generator)
    cols = torch.randint(width - patch_size + 1, (batch, n), generator=generator)
    return torch.stack([rows, cols], dim=-1)
