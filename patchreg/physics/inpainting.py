"""Inpainting: multiplication by a pixel mask (1 = observed, 0 = missing)."""

from __future__ import annotations

import torch

from .._checks import check_tensor
from ._base import LinearPhysics, check_image


class Inpainting(LinearPhysics):
    """A x = mask * x, self-adjoint; unobserved pixels are measured as 0.

    mask: (H, W), (C, H, W) or (B, C, H, W) of zeros and ones (bool or float); it must match
    the image's trailing dimensions exactly (a (H, W) mask is shared by every channel and
    image, a (C, H, W) mask by every image).
    """

    def __init__(self, mask: torch.Tensor, noise_model=None):
        super().__init__(noise_model)
        check_tensor("mask", mask, float_dtype=False)
        if mask.dim() not in (2, 3, 4):
            raise ValueError(f"mask must be (H, W), (C, H, W) or (B, C, H, W), got shape {tuple(mask.shape)}")
        if mask.is_floating_point() and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must hold only zeros and ones")
        self.mask = mask.to(torch.bool)

    @classmethod
    def random(cls, image_size, missing: float, seed: int = 0, noise_model=None) -> "Inpainting":
        """A (H, W) mask with each pixel missing independently with probability `missing`."""
        if not 0.0 <= missing < 1.0:
            raise ValueError(f"missing must be in [0, 1), got {missing}")
        H, W = image_size
        generator = torch.Generator().manual_seed(seed)
        mask = torch.rand((H, W), generator=generator) >= missing
        return cls(mask, noise_model)

    def _check(self, name: str, t: torch.Tensor) -> None:
        check_image(name, t)
        m = self.mask.dim()
        if tuple(t.shape[-m:]) != tuple(self.mask.shape):
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but the mask has shape {tuple(self.mask.shape)}; "
                f"the last {m} dimensions must match"
            )

    def _apply(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.mask.to(device=t.device, dtype=t.dtype)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        self._check("x", x)
        return self._apply(x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self._check("y", y)
        return self._apply(y)

    def measurement_shape(self, image_shape) -> tuple[int, ...]:
        return tuple(image_shape)

    def __repr__(self) -> str:
        return f"Inpainting(mask shape={tuple(self.mask.shape)}, noise_model={self.noise_model!r})"
