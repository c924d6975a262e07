"""Argument checks shared by every public op: a clear ValueError/TypeError naming the argument."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64)


def check_tensor(name: str, t, ndim: int | None = None, float_dtype: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if float_dtype and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}.dtype must be torch.float32 or torch.float64, got {t.dtype}")


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_same_device(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_b} is on {b.device} but {name_a} is on {a.device}; move both to one device")


def check_image_size(image_size) -> tuple[int, int]:
    if not isinstance(image_size, (tuple, list, torch.Size)) or len(image_size) != 2:
        raise TypeError(f"image_size must be a pair (H, W) of ints, got {image_size!r}")
    return check_int("image_size[0]", image_size[0], 1), check_int("image_size[1]", image_size[1], 1)
