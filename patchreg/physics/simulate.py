"""Simulated measurements: y = noise(A x) with a seeded generator."""

from __future__ import annotations

import torch

from .._checks import check_int
from ._base import check_image


def simulate(x: torch.Tensor, physics, noise=None, seed: int = 0) -> torch.Tensor:
    """Noisy measurements of the clean images x (B, C, H, W), reproducible from `seed`.

    noise: a noise model called as noise(y, generator); None uses physics.noise_model when
    the operator has one, else returns the clean A x.
    """
    check_image("x", x)
    check_int("seed", seed, 0)
    if noise is None:
        noise = getattr(physics, "noise_model", None)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    with torch.no_grad():
        y = physics.A(x)
        return y if noise is None else noise(y, generator)
