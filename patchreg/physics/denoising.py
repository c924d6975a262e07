"""Denoising: the identity operator (measurements are the noisy image itself)."""

from __future__ import annotations

import torch

from ._base import LinearPhysics, check_image


class Denoising(LinearPhysics):
    """A = identity on (B, C, H, W) images; pair it with a noise model such as GaussianNoise."""

    def A(self, x: torch.Tensor) -> torch.Tensor:
        check_image("x", x)
        return x

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        check_image("y", y)
        return y

    def measurement_shape(self, image_shape) -> tuple[int, ...]:
        return tuple(image_shape)

    def __repr__(self) -> str:
        return f"Denoising(noise_model={self.noise_model!r})"
