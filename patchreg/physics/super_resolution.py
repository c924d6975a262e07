"""Super-resolution: circular blur, then keeping every s-th pixel in each direction."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_int
from ._base import LinearPhysics, check_image
from .blur import Blur

FACTORS = (2, 3, 4, 8)


class SuperResolution(LinearPhysics):
    """A x = S(k * x): circular blur (see `Blur`) then subsampling x[..., ::s, ::s].

    factor: s, one of FACTORS; H and W of the image must be multiples of s. The blur is a
    Gaussian of `kernel_std` pixels (default s / 2, PatchNR's std 2 for s = 4; 0 means no
    blur) or the given `kernel`. A* = blur adjoint of zero-filled upsampling.
    """

    def __init__(self, factor: int, kernel: torch.Tensor | None = None, kernel_std: float | None = None,
                 method: str = "auto", noise_model=None):
        super().__init__(noise_model)
        check_int("factor", factor, 1)
        if factor not in FACTORS:
            raise ValueError(f"factor must be one of {FACTORS}, got {factor}")
        if kernel is not None and kernel_std is not None:
            raise ValueError("give at most one of kernel and kernel_std")
        self.factor = factor
        if kernel is None:
            kernel_std = factor / 2 if kernel_std is None else kernel_std
            if kernel_std == 0:
                kernel = torch.ones(1, 1, dtype=torch.float64)
                kernel_std = None
        self.blur = Blur(kernel=kernel, std=kernel_std, method=method)

    def _check_image(self, x: torch.Tensor) -> None:
        check_image("x", x)
        H, W = x.shape[-2:]
        if H % self.factor or W % self.factor:
            raise ValueError(f"x has size ({H}, {W}), not a multiple of the factor {self.factor}")

    def A(self, x: torch.Tensor) -> torch.Tensor:
        self._check_image(x)
        s = self.factor
        return self.blur.A(x)[..., ::s, ::s]

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        check_image("y", y)
        B, C, h, w = y.shape
        s = self.factor
        upsampled = y.new_zeros(B, C, h * s, w * s)
        upsampled[..., ::s, ::s] = y
        return self.blur.A_adjoint(upsampled)

    def measurement_shape(self, image_shape) -> tuple[int, ...]:
        B, C, H, W = image_shape
        return (B, C, H // self.factor, W // self.factor)

    def initial_guess(self, y: torch.Tensor) -> torch.Tensor:
        """Bicubic interpolation through the samples: high-res pixel s*i sits on low-res pixel i."""
        check_image("y", y)
        B, C, h, w = y.shape
        s = self.factor
        grid = torch.stack(torch.meshgrid(
            _sample_coordinates(w, s, y), _sample_coordinates(h, s, y), indexing="xy"), dim=-1)
        grid = grid.expand(B, h * s, w * s, 2)
        return F.grid_sample(y, grid, mode="bicubic", padding_mode="border", align_corners=True)

    def __repr__(self) -> str:
        return f"SuperResolution(factor={self.factor}, blur={self.blur!r}, noise_model={self.noise_model!r})"


def _sample_coordinates(n_low: int, s: int, like: torch.Tensor) -> torch.Tensor:
    """grid_sample coordinates (align_corners=True) of high-res pixels 0..n_low*s-1 on a low-res axis."""
    positions = torch.arange(n_low * s, dtype=like.dtype, device=like.device) / s
    if n_low == 1:
        return torch.zeros_like(positions)
    return 2.0 * positions / (n_low - 1) - 1.0
