"""Public patch operators: argument checks, backend dispatch, fake and autograd registration.

Kernels: csrc/patches_cpu.cpp, csrc/patches_cuda.cu. Reference: patchreg/reference/patches.py.
Tests: tests/test_patches.py. Benchmarks: bench/bench_patches.py.
"""

from __future__ import annotations

import torch

from .. import _extension, reference
from .._checks import check_image_size, check_int, check_same_device, check_tensor
from ..backend import use_extension

__all__ = ["extract_patches", "aggregate_patches", "extract_patches_at", "aggregate_patches_at"]


def _check_image(x, patch_size: int, stride: int | None) -> None:
    check_tensor("x", x, ndim=4)
    check_int("patch_size", patch_size, 1)
    if stride is not None:
        check_int("stride", stride, 1)
    H, W = x.shape[-2:]
    if patch_size > H or patch_size > W:
        raise ValueError(f"patch_size={patch_size} is larger than the image (H={H}, W={W})")


def extract_patches(x: torch.Tensor, patch_size: int, stride: int = 1, remove_mean: bool = False):
    """All overlapping patches of a batch of images.

    x: (B, C, H, W) float32/float64. Returns (B, L, C*p*p) with L = nH*nW, the patch order and
    element order of `F.unfold(x, p, stride=s).transpose(1, 2)`. With remove_mean=True each
    patch has its mean (over all C*p*p entries) subtracted, and (patches, means) is returned,
    means of shape (B, L).
    """
    _check_image(x, patch_size, stride)
    if use_extension():
        patches, means = torch.ops.patchreg.extract_patches(x, patch_size, stride, remove_mean)
    else:
        patches, means = reference.extract_patches(x, patch_size, stride, remove_mean)
    return (patches, means) if remove_mean else patches


def aggregate_patches(
    patches: torch.Tensor,
    image_size,
    patch_size: int,
    stride: int = 1,
    normalize: bool = False,
    remove_mean: bool = False,
):
    """Adjoint of `extract_patches`: sum overlapping patches back into (B, C, H, W) images.

    normalize=True divides each pixel by the number of patches covering it (EPLL's averaging;
    then it is no longer the adjoint). remove_mean=True is the adjoint of extraction with
    remove_mean=True: each patch is projected onto zero mean before summation.
    """
    check_tensor("patches", patches, ndim=3)
    H, W = check_image_size(image_size)
    check_int("patch_size", patch_size, 1)
    check_int("stride", stride, 1)
    if patch_size > H or patch_size > W:
        raise ValueError(f"patch_size={patch_size} is larger than image_size=({H}, {W})")
    nH, nW = reference.grid_size(H, patch_size, stride), reference.grid_size(W, patch_size, stride)
    if patches.shape[1] != nH * nW:
        raise ValueError(
            f"image_size=({H}, {W}) with patch_size={patch_size}, stride={stride} has {nH * nW} "
            f"patches, but patches has {patches.shape[1]} (dim 1)"
        )
    if patches.shape[2] % (patch_size * patch_size) != 0 or patches.shape[2] == 0:
        raise ValueError(
            f"patches.shape[2]={patches.shape[2]} is not C*patch_size^2 for patch_size={patch_size}"
        )
    if use_extension():
        return torch.ops.patchreg.aggregate_patches(
            patches, H, W, patch_size, stride, normalize, remove_mean
        )
    return reference.aggregate_patches(patches, H, W, patch_size, stride, normalize, remove_mean)


def _check_positions(positions, batch: int, height: int, width: int, patch_size: int, like) -> None:
    check_tensor("positions", positions, ndim=3, float_dtype=False)
    if positions.dtype != torch.int64:
        raise TypeError(f"positions.dtype must be torch.int64, got {positions.dtype}")
    if positions.shape[0] != batch or positions.shape[2] != 2:
        raise ValueError(f"positions must have shape ({batch}, N, 2), got {tuple(positions.shape)}")
    check_same_device("x" if like.dim() == 4 else "patches", like, "positions", positions)
    # Data-dependent bound check: eager only (the kernels check it again, also under compile).
    if positions.numel() and not torch.compiler.is_compiling():
        rows, cols = positions[..., 0], positions[..., 1]
        if bool((positions < 0).any()) or int(rows.max()) > height - patch_size or int(cols.max()) > width - patch_size:
            raise ValueError(
                f"positions out of bounds: need 0 <= row <= {height - patch_size} and "
                f"0 <= col <= {width - patch_size} for a {patch_size}x{patch_size} patch in a "
                f"{height}x{width} image; got rows in [{int(rows.min())}, {int(rows.max())}], "
                f"cols in [{int(cols.min())}, {int(cols.max())}]"
            )


def extract_patches_at(x: torch.Tensor, positions: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Patches with top-left corners at `positions` (B, N, 2) int64 (row, col): (B, N, C*p*p)."""
    _check_image(x, patch_size, None)
    _check_positions(positions, x.shape[0], x.shape[2], x.shape[3], patch_size, x)
    if use_extension():
        return torch.ops.patchreg.extract_patches_at(x, positions, patch_size)
    return reference.extract_patches_at(x, positions, patch_size)


def aggregate_patches_at(
    patches: torch.Tensor, positions: torch.Tensor, image_size, patch_size: int
) -> torch.Tensor:
    """Exact adjoint of `extract_patches_at`: add each patch into a zero image at its position.

    Deterministic on CPU. On CUDA the sum uses atomicAdd, so float32 results can differ in the
    last bits between runs when patches overlap (float64 likewise, at ~1e-16 relative).
    """
    check_tensor("patches", patches, ndim=3)
    H, W = check_image_size(image_size)
    check_int("patch_size", patch_size, 1)
    if patch_size > H or patch_size > W:
        raise ValueError(f"patch_size={patch_size} is larger than image_size=({H}, {W})")
    if patches.shape[2] % (patch_size * patch_size) != 0 or patches.shape[2] == 0:
        raise ValueError(
            f"patches.shape[2]={patches.shape[2]} is not C*patch_size^2 for patch_size={patch_size}"
        )
    _check_positions(positions, patches.shape[0], H, W, patch_size, patches)
    if positions.shape[1] != patches.shape[1]:
        raise ValueError(
            f"positions has {positions.shape[1]} patches (dim 1) but patches has {patches.shape[1]}"
        )
    if use_extension():
        return torch.ops.patchreg.aggregate_patches_at(patches, positions, H, W, patch_size)
    return reference.aggregate_patches_at(patches, positions, H, W, patch_size)


# --- registration of fake (shape) functions and autograd, once the library is loaded ----------


def _register() -> None:
    lib = "patchreg::"

    @torch.library.register_fake(lib + "extract_patches")
    def _(x, patch_size, stride, remove_mean):
        B, C, H, W = x.shape
        L = reference.grid_size(H, patch_size, stride) * reference.grid_size(W, patch_size, stride)
        patches = x.new_empty(B, L, C * patch_size * patch_size)
        return patches, x.new_empty(B, L if remove_mean else 0)

    @torch.library.register_fake(lib + "aggregate_patches")
    def _(patches, height, width, patch_size, stride, normalize, remove_mean):
        B, _, D = patches.shape
        return patches.new_empty(B, D // (patch_size * patch_size), height, width)

    @torch.library.register_fake(lib + "extract_patches_at")
    def _(x, positions, patch_size):
        B, C = x.shape[:2]
        return x.new_empty(B, positions.shape[1], C * patch_size * patch_size)

    @torch.library.register_fake(lib + "aggregate_patches_at")
    def _(patches, positions, height, width, patch_size):
        B, _, D = patches.shape
        return patches.new_empty(B, D // (patch_size * patch_size), height, width)

    # extract_patches: backward is the adjoint aggregation.
    def extract_setup(ctx, inputs, output):
        x, patch_size, stride, remove_mean = inputs
        ctx.geom = (x.shape[2], x.shape[3], patch_size, stride, remove_mean)
        ctx.patches_shape = output[0].shape

    def extract_backward(ctx, grad_patches, grad_means):
        H, W, p, s, remove_mean = ctx.geom
        if grad_patches is None:
            grad_patches = grad_means.new_zeros(ctx.patches_shape)
        if remove_mean and grad_means is not None:
            # d(mean)/dx spreads grad_means / (C p^2) over each patch: fold it into the patch grad.
            d = grad_patches.shape[-1]
            grad_patches = grad_patches - grad_patches.mean(-1, keepdim=True) + grad_means.unsqueeze(-1) / d
            remove_mean = False
        grad_x = torch.ops.patchreg.aggregate_patches(grad_patches, H, W, p, s, False, remove_mean)
        return grad_x, None, None, None

    torch.library.register_autograd(
        lib + "extract_patches", extract_backward, setup_context=extract_setup
    )

    # aggregate_patches: backward is extraction (of grad / count when normalized).
    def aggregate_setup(ctx, inputs, output):
        _, height, width, patch_size, stride, normalize, remove_mean = inputs
        ctx.geom = (height, width, patch_size, stride, normalize, remove_mean)

    def aggregate_backward(ctx, grad_out):
        H, W, p, s, normalize, remove_mean = ctx.geom
        if normalize:
            grad_out = grad_out / reference.coverage_count(H, W, p, s, grad_out).clamp(min=1)
        grad_patches, _ = torch.ops.patchreg.extract_patches(grad_out, p, s, remove_mean)
        return grad_patches, None, None, None, None, None, None

    torch.library.register_autograd(
        lib + "aggregate_patches", aggregate_backward, setup_context=aggregate_setup
    )

    def extract_at_setup(ctx, inputs, output):
        x, positions, patch_size = inputs
        ctx.save_for_backward(positions)
        ctx.geom = (x.shape[2], x.shape[3], patch_size)

    def extract_at_backward(ctx, grad):
        (positions,) = ctx.saved_tensors
        H, W, p = ctx.geom
        return torch.ops.patchreg.aggregate_patches_at(grad, positions, H, W, p), None, None

    torch.library.register_autograd(
        lib + "extract_patches_at", extract_at_backward, setup_context=extract_at_setup
    )

    def aggregate_at_setup(ctx, inputs, output):
        _, positions, _, _, patch_size = inputs
        ctx.save_for_backward(positions)
        ctx.patch_size = patch_size

    def aggregate_at_backward(ctx, grad):
        (positions,) = ctx.saved_tensors
        out = torch.ops.patchreg.extract_patches_at(grad, positions, ctx.patch_size)
        return out, None, None, None, None

    torch.library.register_autograd(
        lib + "aggregate_patches_at", aggregate_at_backward, setup_context=aggregate_at_setup
    )


_extension.on_load(_register)
