"""The linear-operator interface every forward model shares, and input checks on images.

A physics object maps a batch of images x (B, C, H, W) to measurements y = A x. It exposes
`A`, `A_adjoint`, `__call__` (= A), `noise(y, generator)` (through its optional noise model),
`initial_guess(y)` (the start image a reconstruction uses) and `measurement_shape(image_shape)`.
All operators act on every channel alike and are differentiable with respect to x and y.
"""

from __future__ import annotations

import torch

from .._checks import check_tensor


def check_image(name: str, x) -> None:
    """x must be a float (B, C, H, W) tensor."""
    check_tensor(name, x, ndim=4)


class LinearPhysics:
    """Base class: a linear forward operator with an optional noise model.

    Subclasses implement `A`, `A_adjoint` and `measurement_shape`; `initial_guess` defaults to
    A* y. `noise_model` is any object called as `noise_model(y, generator)` (see
    `patchreg.physics.noise`); None means noiseless measurements.
    """

    def __init__(self, noise_model=None):
        if noise_model is not None and not callable(noise_model):
            raise TypeError(
                "noise_model must be callable as noise_model(y, generator), "
                f"got {type(noise_model).__name__}"
            )
        self.noise_model = noise_model

    def A(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def measurement_shape(self, image_shape) -> tuple[int, ...]:
        """Shape of A x for an image batch of shape `image_shape` (B, C, H, W)."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)

    def noise(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """y with this operator's noise model applied (y itself when there is none)."""
        if self.noise_model is None:
            return y
        return self.noise_model(y, generator)

    def initial_guess(self, y: torch.Tensor) -> torch.Tensor:
        """Start image for an iterative reconstruction: A* y unless a subclass knows better."""
        return self.A_adjoint(y)
