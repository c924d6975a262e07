"""Pure-PyTorch reference of the patch operators (the kernels in csrc/patches_*.cpp|cu match it).

Same signatures and outputs as the ops in torch.ops.patchreg, without argument checks
(those live in patchreg.ops.patches and serve both paths). Everything is differentiable
through ordinary torch ops, so autograd and double backward work here for free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grid_size(size: int, patch_size: int, stride: int) -> int:
    """Number of patch positions along one axis: floor((size - p) / s) + 1."""
    return (size - patch_size) // stride + 1


def extract_patches(x: torch.Tensor, patch_size: int, stride: int, remove_mean: bool):
    """(B, C, H, W) -> patches (B, L, C*p*p) in F.unfold order, and means (B, L) or (B, 0)."""
    B, C = x.shape[:2]
    p = patch_size
    windows = x.unfold(2, p, stride).unfold(3, p, stride)  # (B, C, nH, nW, p, p), a view
    patches = windows.permute(0, 2, 3, 1, 4, 5).reshape(B, -1, C * p * p)
    if not remove_mean:
        return patches, x.new_zeros(B, 0)
    means = patches.mean(dim=-1)
    return patches - means.unsqueeze(-1), means


def coverage_count(height: int, width: int, patch_size: int, stride: int, like: torch.Tensor):
    """Number of patches covering each pixel, shape (H, W)."""
    def axis_count(size: int) -> torch.Tensor:
        starts = torch.arange(grid_size(size, patch_size, stride), device=like.device) * stride
        pix = torch.arange(size, device=like.device).unsqueeze(1)
        return ((pix >= starts) & (pix < starts + patch_size)).sum(dim=1).to(like.dtype)

    return axis_count(height).unsqueeze(1) * axis_count(width).unsqueeze(0)


def aggregate_patches(
    patches: torch.Tensor,
    height: int,
    width: int,
    patch_size: int,
    stride: int,
    normalize: bool,
    remove_mean: bool,
):
    """Adjoint of extract_patches: sum overlapping patches into a (B, C, H, W) image.

    remove_mean=True first projects each patch onto zero mean (the adjoint of extraction
    with remove_mean=True); normalize=True divides each pixel by how many patches cover it.
    """
    if remove_mean:
        patches = patches - patches.mean(dim=-1, keepdim=True)
    out = F.fold(patches.transpose(1, 2), (height, width), patch_size, stride=stride)
    if normalize:
        count = coverage_count(height, width, patch_size, stride, out)
        out = out / count.clamp(min=1)
    return out


def _flat_index(positions: torch.Tensor, width: int, patch_size: int) -> torch.Tensor:
    """Linear pixel index of every patch element: (B, N, 2) -> (B, N*p*p)."""
    offs = torch.arange(patch_size, device=positions.device)
    rows = positions[..., 0, None, None] + offs[:, None]
    cols = positions[..., 1, None, None] + offs[None, :]
    return (rows * width + cols).flatten(1)


def extract_patches_at(x: torch.Tensor, positions: torch.Tensor, patch_size: int):
    """Patches whose top-left corners are `positions` (B, N, 2) (row, col): (B, N, C*p*p)."""
    B, C, H, W = x.shape
    N = positions.shape[1]
    idx = _flat_index(positions, W, patch_size).unsqueeze(1).expand(B, C, -1)
    vals = x.reshape(B, C, H * W).gather(2, idx)  # (B, C, N*p*p)
    return vals.reshape(B, C, N, patch_size * patch_size).transpose(1, 2).reshape(B, N, -1)


def aggregate_patches_at(
    patches: torch.Tensor, positions: torch.Tensor, height: int, width: int, patch_size: int
):
    """Adjoint of extract_patches_at: add each patch back at its position (B, C, H, W)."""
    B, N, D = patches.shape
    C = D // (patch_size * patch_size)
    idx = _flat_index(positions, width, patch_size).unsqueeze(1).expand(B, C, -1)
    src = patches.reshape(B, N, C, -1).transpose(1, 2).reshape(B, C, -1)
    out = patches.new_zeros(B, C, height * width).scatter_add(2, idx, src)
    return out.reshape(B, C, height, width)
