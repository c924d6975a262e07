"""Parallel-beam tomography: a Radon transform with an exact adjoint, and filtered back-projection.

Geometry: unit pixels centred on the origin, x to the right, y upwards (row 0 is the top).
For angle theta the detector coordinate of a point is t = x cos(theta) + y sin(theta);
detector bins are `detector_spacing` apart and centred on t = 0. The line integral along
each ray is discretised by Joseph's method: the ray is stepped one pixel row (or column,
whichever it crosses more steeply) at a time, the image is linearly interpolated between
the two nearest pixels of that row (zero outside the image), and every sample is weighted
by the ray length per step, 1 / max(|cos|, |sin|).

The transform is a fixed sparse matrix built once per geometry; A applies it and A* applies
its transpose (both stored in CSR), so <A x, y> = <x, A* y> holds to rounding error.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.sparse
import torch

from .._checks import check_int
from ._base import LinearPhysics, check_image

FILTERS = ("ramp", "hann")


class Tomography(LinearPhysics):
    """Parallel-beam Radon transform of (B, C, H, W) images into (B, C, n_angles, n_detectors) sinograms.

    image_size: int or (H, W). n_angles angles evenly spaced over [angle_start, angle_start +
    angle_range) radians (endpoint excluded); angle_range < pi gives limited-angle CT.
    n_detectors defaults to enough bins of `detector_spacing` pixels to cover the diagonal.

    Cost: the matrix has about 2 * n_angles * H * W nonzeros (256 x 256 with 180 angles: 21M,
    0.25 GB per direction in float64, about 8 s to build on the 2-core dev machine; float32
    copies are added on first float32 use). Build one operator per geometry and reuse it.
    """

    def __init__(self, image_size, n_angles: int, angle_range: float = math.pi, angle_start: float = 0.0,
                 n_detectors: int | None = None, detector_spacing: float = 1.0, noise_model=None):
        super().__init__(noise_model)
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
            raise TypeError(f"image_size must be an int or a pair (H, W), got {image_size!r}")
        self.image_size = (check_int("image_size[0]", image_size[0], 1), check_int("image_size[1]", image_size[1], 1))
        self.n_angles = check_int("n_angles", n_angles, 1)
        if not 0 < angle_range <= 2 * math.pi:
            raise ValueError(f"angle_range must be in (0, 2 pi] radians, got {angle_range}")
        if not detector_spacing > 0:
            raise ValueError(f"detector_spacing must be > 0, got {detector_spacing}")
        H, W = self.image_size
        if n_detectors is None:
            n_detectors = math.ceil(math.hypot(H, W) / detector_spacing) + 1
        self.n_detectors = check_int("n_detectors", n_detectors, 1)
        self.angle_range = float(angle_range)
        self.angle_start = float(angle_start)
        self.detector_spacing = float(detector_spacing)
        self.angles = angle_start + angle_range * np.arange(n_angles) / n_angles
        matrix = joseph_matrix(self.image_size, self.angles, self.n_detectors, self.detector_spacing)
        self._matrices = {"A": matrix, "At": matrix.T.tocsr()}
        self._torch_cache: dict = {}

    # -- sparse products ------------------------------------------------------------------
    def _sparse(self, which: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (which, dtype, device)
        if key not in self._torch_cache:
            self._torch_cache[key] = _to_torch_csr(self._matrices[which], dtype, device)
        return self._torch_cache[key]

    def _check_image(self, x: torch.Tensor) -> None:
        check_image("x", x)
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"x has size {tuple(x.shape[-2:])} but this Tomography is built for {self.image_size}")

    def _check_sinogram(self, y: torch.Tensor) -> None:
        check_image("y", y)
        if tuple(y.shape[-2:]) != (self.n_angles, self.n_detectors):
            raise ValueError(
                f"y has size {tuple(y.shape[-2:])} but sinograms here are (n_angles, n_detectors) = "
                f"({self.n_angles}, {self.n_detectors})"
            )

    def A(self, x: torch.Tensor) -> torch.Tensor:
        self._check_image(x)
        B, C = x.shape[:2]
        columns = _SparseProduct.apply(x.reshape(B * C, -1).T, self, "A")
        return columns.T.reshape(B, C, self.n_angles, self.n_detectors)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self._check_sinogram(y)
        B, C = y.shape[:2]
        columns = _SparseProduct.apply(y.reshape(B * C, -1).T, self, "At")
        return columns.T.reshape(B, C, *self.image_size)

    def measurement_shape(self, image_shape) -> tuple[int, ...]:
        return (*tuple(image_shape)[:2], self.n_angles, self.n_detectors)

    # -- filtered back-projection ---------------------------------------------------------
    def fbp(self, y: torch.Tensor, filter: str = "ramp") -> torch.Tensor:
        """Filtered back-projection: A* of the ramp-filtered sinogram, times the quadrature weight.

        filter: "ramp" (Ram-Lak, the band-limited spatial ramp of Kak & Slaney) or "hann"
        (ramp times a Hann window, less noise, less resolution). Exact for full-angle data up
        to discretisation; with a limited angle range the missing wedge shows as streaks.
        """
        self._check_sinogram(y)
        if filter not in FILTERS:
            raise ValueError(f"filter must be one of {FILTERS}, got {filter!r}")
        response = ramp_response(self.n_detectors, self.detector_spacing, filter, y.dtype, y.device)
        padded_length = 2 * (response.shape[-1] - 1)
        spectrum = torch.fft.rfft(y, n=padded_length, dim=-1) * response
        filtered = torch.fft.irfft(spectrum, n=padded_length, dim=-1)[..., : self.n_detectors]
        return self.A_adjoint(filtered) * self._fbp_weight()

    def _fbp_weight(self) -> float:
        """Quadrature weight of the back-projection sum.

        The angle step, times the detector spacing (A* spreads each ray over 1 / spacing
        pixels' worth of weight), divided by the number of times the angles cover [0, pi)
        when the range exceeds pi (exact for 2 pi; uniform weighting in between, no Parker
        weights).
        """
        angle_step = self.angle_range / self.n_angles
        redundancy = max(self.angle_range / math.pi, 1.0)
        return angle_step * self.detector_spacing / redundancy

    def initial_guess(self, y: torch.Tensor) -> torch.Tensor:
        """FBP with the Hann-windowed ramp: a start image robust to noise."""
        return self.fbp(y, filter="hann")

    def __repr__(self) -> str:
        return (
            f"Tomography(image_size={self.image_size}, n_angles={self.n_angles}, angle_range={self.angle_range:.4f}, "
            f"n_detectors={self.n_detectors}, noise_model={self.noise_model!r})"
        )


class _SparseProduct(torch.autograd.Function):
    """M @ dense with M a fixed sparse matrix of the operator; the gradient applies the transpose."""

    @staticmethod
    def forward(ctx, dense: torch.Tensor, op: Tomography, which: str) -> torch.Tensor:
        ctx.op, ctx.which = op, which
        matrix = op._sparse(which, dense.dtype, dense.device)
        return torch.sparse.mm(matrix, dense.contiguous())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        transpose = "At" if ctx.which == "A" else "A"
        return _SparseProduct.apply(grad, ctx.op, transpose), None, None


def _to_torch_csr(matrix: scipy.sparse.csr_matrix, dtype: torch.dtype, device) -> torch.Tensor:
    index_dtype = torch.int32 if matrix.nnz < 2**31 else torch.int64
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr).to(index_dtype),
            torch.from_numpy(matrix.indices).to(index_dtype),
            torch.from_numpy(matrix.data).to(dtype),
            size=matrix.shape,
            check_invariants=False,
        ).to(device)


def joseph_matrix(image_size, angles, n_detectors: int, detector_spacing: float) -> scipy.sparse.csr_matrix:
    """The (n_angles * n_detectors, H * W) Radon matrix by Joseph's method (float64, CSR).

    Built angle by angle straight into CSR arrays (rows of one angle are contiguous), which
    avoids a COO sort over all entries.
    """
    H, W = image_size
    detector = (np.arange(n_detectors) - (n_detectors - 1) / 2) * detector_spacing
    row_counts, cols, vals = [], [], []
    for theta in angles:
        bins, pixels, weights = _joseph_angle(H, W, detector, math.cos(theta), math.sin(theta))
        order = np.argsort(bins * (H * W) + pixels, kind="stable")
        row_counts.append(np.bincount(bins, minlength=n_detectors))
        cols.append(pixels[order].astype(np.int32))
        vals.append(weights[order])
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(row_counts))])
    return scipy.sparse.csr_matrix(
        (np.concatenate(vals), np.concatenate(cols), indptr), shape=(len(angles) * n_detectors, H * W)
    )


def _joseph_angle(H: int, W: int, detector: np.ndarray, c: float, s: float):
    """(detector bin, flat pixel index, weight) of every interpolation tap for one angle."""
    if abs(c) >= abs(s):  # the ray runs mostly vertically: step over rows, interpolate along x
        y = (H - 1) / 2 - np.arange(H)
        column = (detector[:, None] - y[None, :] * s) / c + (W - 1) / 2  # (n_det, H)
        bins, row, col, weight = _linear_taps(column, W)
        return bins, row * W + col, weight / abs(c)
    x = np.arange(W) - (W - 1) / 2
    row = (H - 1) / 2 - (detector[:, None] - x[None, :] * c) / s  # (n_det, W)
    bins, col, row, weight = _linear_taps(row, H)
    return bins, row * W + col, weight / abs(s)


def _linear_taps(position: np.ndarray, size: int):
    """Taps of linear interpolation at fractional `position` (n_det, n_steps) along an axis of `size`.

    Returns (detector bin, step index, pixel along the axis, weight), dropping taps outside
    the image (zero boundary) and taps of weight zero.
    """
    n_steps = position.shape[1]
    position = position.ravel()
    lower = np.floor(position)
    frac = position - lower
    lower = lower.astype(np.int64)
    bins, steps, along, weights = [], [], [], []
    for offset, weight in ((0, 1.0 - frac), (1, frac)):
        pixel = lower + offset
        flat = np.flatnonzero((pixel >= 0) & (pixel < size) & (weight > 0))
        bins.append(flat // n_steps)
        steps.append(flat % n_steps)
        along.append(pixel[flat])
        weights.append(weight[flat])
    return np.concatenate(bins), np.concatenate(steps), np.concatenate(along), np.concatenate(weights)


def ramp_response(n_detectors: int, spacing: float, filter: str, dtype, device) -> torch.Tensor:
    """Real rfft response of the band-limited ramp filter (Kak & Slaney), zero-padded to avoid wrap-around.

    The spatial filter h(0) = 1/(4 d^2), h(n odd) = -1/(pi n d)^2, h(n even) = 0 with d the
    detector spacing has frequency response |f| up to the Nyquist frequency; the result also
    includes the detector spacing as the quadrature weight of the convolution integral.
    """
    padded = max(64, 2 ** math.ceil(math.log2(2 * n_detectors)))
    n = np.concatenate([np.arange(0, padded // 2 + 1), np.arange(-padded // 2 + 1, 0)])
    h = np.zeros(padded)
    h[0] = 0.25
    odd = n % 2 == 1
    h[odd] = -1.0 / (math.pi * n[odd]) ** 2
    response = np.real(np.fft.rfft(h)) / spacing
    if filter == "hann":
        freq = np.fft.rfftfreq(padded)  # cycles per sample, 0..0.5
        response = response * 0.5 * (1.0 + np.cos(2 * math.pi * freq))
    return torch.from_numpy(response).to(dtype=dtype, device=device)
