"""Blur: circular convolution with a Gaussian or any given kernel.

Boundary rule: periodic (circular). The image is treated as one period of a periodic
signal, so A is a circulant matrix, A* is the circular correlation with the same kernel,
and both the direct path (circular padding + conv2d) and the FFT path (pointwise product
with the kernel's transfer function) are exact adjoint pairs of the same operator.

Kernel convention: the kernel's centre tap is k[kh // 2, kw // 2]; then
(A x)[i, j] = sum_{a, b} k[a, b] x[(i - a + kh // 2) mod H, (j - b + kw // 2) mod W].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._checks import check_int, check_tensor
from ._base import LinearPhysics, check_image

METHODS = ("auto", "direct", "fft")
# Kernels with more taps than this use the FFT path under method="auto": on the CPU the FFT
# path is faster from 5x5 kernels on (bench/results/physics.md).
DIRECT_MAX_TAPS = 9


def gaussian_kernel(std: float, size: int | None = None, dtype=torch.float64) -> torch.Tensor:
    """Isotropic Gaussian kernel with standard deviation `std` pixels, normalised to sum 1.

    size defaults to 2 * ceil(3 std) + 1 (odd, centred).
    """
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not std > 0 or not math.isfinite(std):
        raise ValueError(f"std must be a finite number > 0, got {std!r}")
    if size is None:
        size = 2 * math.ceil(3 * std) + 1
    check_int("size", size, 1)
    offsets = torch.arange(size, dtype=dtype) - size // 2
    profile = torch.exp(-(offsets**2) / (2.0 * std**2))
    kernel = profile[:, None] * profile[None, :]
    return kernel / kernel.sum()


class Blur(LinearPhysics):
    """Circular convolution of every channel with one 2-D kernel.

    Give either `kernel` (a (kh, kw) tensor) or `std` (a Gaussian of that standard deviation
    in pixels). method: "direct" (circular padding + conv2d), "fft" (rfft2 product) or "auto"
    (direct for kernels of at most DIRECT_MAX_TAPS taps that fit in the image, else FFT).
    """

    def __init__(self, kernel: torch.Tensor | None = None, std: float | None = None, method: str = "auto",
                 noise_model=None):
        super().__init__(noise_model)
        if (kernel is None) == (std is None):
            raise ValueError("give exactly one of kernel and std")
        if kernel is None:
            kernel = gaussian_kernel(std)
        check_tensor("kernel", kernel, ndim=2)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.kernel = kernel.detach().to(torch.float64)
        self.method = method
        self._transfer_cache: dict = {}

    # -- path selection -------------------------------------------------------------------
    def _fits(self, H: int, W: int) -> bool:
        kh, kw = self.kernel.shape
        return kh <= H and kw <= W

    def _use_fft(self, H: int, W: int) -> bool:
        if self.method == "fft":
            return True
        if self.method == "direct":
            if not self._fits(H, W):
                raise ValueError(
                    f"method='direct' needs the kernel {tuple(self.kernel.shape)} to fit in the image ({H}, {W}); "
                    "use method='fft'"
                )
            return False
        return self.kernel.numel() > DIRECT_MAX_TAPS or not self._fits(H, W)

    # -- direct path ----------------------------------------------------------------------
    def _circular_conv(self, t: torch.Tensor, adjoint: bool) -> torch.Tensor:
        B, C, H, W = t.shape
        kh, kw = self.kernel.shape
        ch, cw = kh // 2, kw // 2
        k = self.kernel.to(device=t.device, dtype=t.dtype)
        if adjoint:  # correlation with k: output pixel m reads t[m + a - ch]
            pad = (cw, kw - 1 - cw, ch, kh - 1 - ch)
            weight = k
        else:  # convolution: conv2d correlates, so flip the kernel
            pad = (kw - 1 - cw, cw, kh - 1 - ch, ch)
            weight = torch.flip(k, dims=(0, 1))
        padded = F.pad(t.reshape(B * C, 1, H, W), pad, mode="circular")
        return F.conv2d(padded, weight[None, None]).reshape(B, C, H, W)

    # -- FFT path -------------------------------------------------------------------------
    def transfer_function(self, H: int, W: int, dtype=torch.float64, device=None) -> torch.Tensor:
        """rfft2 of the kernel wrapped onto an (H, W) grid with its centre at (0, 0).

        A x = irfft2(rfft2(x) * transfer), A* y = irfft2(rfft2(y) * conj(transfer)); also the
        eigenvalues of the circulant A, for closed-form solves of (A*A + beta I) x = b.
        """
        key = (H, W, dtype, device)
        if key not in self._transfer_cache:
            kh, kw = self.kernel.shape
            rows = (torch.arange(kh) - kh // 2) % H
            cols = (torch.arange(kw) - kw // 2) % W
            wrapped = torch.zeros(H, W, dtype=torch.float64)
            wrapped.index_put_((rows[:, None].expand(kh, kw), cols[None, :].expand(kh, kw)), self.kernel,
                               accumulate=True)
            self._transfer_cache[key] = torch.fft.rfft2(wrapped).to(device=device, dtype=_complex_of(dtype))
        return self._transfer_cache[key]

    def _fft_conv(self, t: torch.Tensor, adjoint: bool) -> torch.Tensor:
        H, W = t.shape[-2:]
        transfer = self.transfer_function(H, W, t.dtype, t.device)
        if adjoint:
            transfer = transfer.conj()
        return torch.fft.irfft2(torch.fft.rfft2(t) * transfer, s=(H, W))

    # -- operator -------------------------------------------------------------------------
    def _apply(self, t: torch.Tensor, adjoint: bool) -> torch.Tensor:
        H, W = t.shape[-2:]
        if self._use_fft(H, W):
            return self._fft_conv(t, adjoint)
        return self._circular_conv(t, adjoint)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        check_image("x", x)
        return self._apply(x, adjoint=False)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        check_image("y", y)
        return self._apply(y, adjoint=True)

    def measurement_shape(self, image_shape) -> tuple[int, ...]:
        return tuple(image_shape)

    def __repr__(self) -> str:
        return f"Blur(kernel {tuple(self.kernel.shape)}, method={self.method!r}, noise_model={self.noise_model!r})"


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64
