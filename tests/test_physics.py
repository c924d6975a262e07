"""Forward operators, noise models, simulation, CG and the phantom (patchreg.physics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch

import patchreg.physics as P
from patchreg.metrics import psnr

DOUBLE = torch.float64


def _rand(shape, seed=0, dtype=DOUBLE):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _randn(shape, seed=0, dtype=DOUBLE):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _adjoint_mismatch(op, image_shape, seed=0) -> float:
    x = _randn(image_shape, seed)
    y = _randn(op.A(x).shape, seed + 1)
    lhs = (op.A(x) * y).sum()
    rhs = (x * op.A_adjoint(y)).sum()
    return float(abs(lhs - rhs) / abs(lhs))


# ---------------------------------------------------------------------------------- adjoints
# Factories taking the image shape (B, C, H, W) the operator will be applied to.
OPERATORS = {
    "denoising": lambda shape: P.Denoising(),
    "blur-gauss-direct": lambda shape: P.Blur(std=1.3, method="direct"),
    "blur-gauss-fft": lambda shape: P.Blur(std=1.3, method="fft"),
    "blur-even-kernel-direct": lambda shape: P.Blur(kernel=_rand((4, 5), 3), method="direct"),
    "blur-even-kernel-fft": lambda shape: P.Blur(kernel=_rand((4, 5), 3), method="fft"),
    "sr2": lambda shape: P.SuperResolution(2),
    "sr4": lambda shape: P.SuperResolution(4, kernel_std=2.0),
    "sr2-no-blur": lambda shape: P.SuperResolution(2, kernel_std=0),
    "inpainting-shared-mask": lambda shape: P.Inpainting.random(shape[-2:], missing=0.4, seed=1),
    "inpainting-channel-mask": lambda shape: P.Inpainting(_rand(shape[1:], 4) > 0.5),
    "inpainting-image-mask": lambda shape: P.Inpainting(_rand(shape, 5) > 0.5),
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
@pytest.mark.parametrize("shape", [(1, 1, 16, 24), (3, 2, 16, 24), (2, 3, 12, 12)])
def test_adjoint_identity(name, shape):
    op = OPERATORS[name](shape)
    assert _adjoint_mismatch(op, shape) < 1e-10


@pytest.mark.parametrize(
    "image_size, n_angles, angle_range",
    [((16, 16), 12, math.pi), ((20, 13), 7, 2 * math.pi / 3), ((9, 9), 30, 2 * math.pi)],
)
def test_tomography_adjoint_identity(image_size, n_angles, angle_range):
    op = P.Tomography(image_size, n_angles, angle_range=angle_range)
    assert _adjoint_mismatch(op, (2, 3, *image_size)) < 1e-10


def test_adjoint_identity_on_sizes_other_than_the_first():
    # Blur caches transfer functions per size: a second size must not reuse the first.
    op = P.Blur(std=2.0, method="fft")
    assert _adjoint_mismatch(op, (2, 1, 32, 32)) < 1e-10
    assert _adjoint_mismatch(op, (2, 2, 21, 17)) < 1e-10


@pytest.mark.parametrize("name", ["blur-gauss-direct", "blur-gauss-fft", "sr2"])
def test_operators_are_differentiable(name):
    op = OPERATORS[name]((1, 1, 12, 12))
    x = _randn((1, 1, 12, 12)).requires_grad_(True)
    y = _randn(op.A(x).shape, 5).requires_grad_(True)
    assert torch.autograd.gradcheck(op.A, (x,), fast_mode=True)
    assert torch.autograd.gradcheck(op.A_adjoint, (y,), fast_mode=True)


def test_tomography_is_differentiable_with_the_transpose():
    op = P.Tomography((6, 5), 4)
    x = _randn((2, 1, 6, 5)).requires_grad_(True)
    y = _randn((2, 1, 4, op.n_detectors), 1).requires_grad_(True)
    assert torch.autograd.gradcheck(op.A, (x,), fast_mode=True)
    assert torch.autograd.gradcheck(op.A_adjoint, (y,), fast_mode=True)
    assert torch.autograd.gradgradcheck(op.A, (x,), fast_mode=True)


def test_float32_matches_float64():
    x = _rand((2, 1, 16, 16))
    for op in (P.Blur(std=1.0), P.SuperResolution(2), P.Tomography(16, 8)):
        assert torch.allclose(op.A(x.float()).double(), op.A(x), atol=1e-5)


# ---------------------------------------------------------------------------------- blur
def test_gaussian_kernel_is_normalised_symmetric_and_sized():
    k = P.gaussian_kernel(1.5)
    assert k.shape == (11, 11)
    assert torch.isclose(k.sum(), torch.tensor(1.0, dtype=DOUBLE))
    assert torch.equal(k, k.T) and torch.equal(k, k.flip(0))
    assert k.argmax() == 5 * 11 + 5
    assert P.gaussian_kernel(1.0, size=4).shape == (4, 4)


@pytest.mark.parametrize("std", [0, -1.0, float("nan")])
def test_gaussian_kernel_rejects_bad_std(std):
    with pytest.raises(ValueError, match="std"):
        P.gaussian_kernel(std)


def test_blur_fft_and_direct_agree():
    x = _randn((2, 3, 20, 17))
    for kernel in (P.gaussian_kernel(2.0), _rand((4, 6), 2), _rand((1, 3), 3)):
        direct, fft = P.Blur(kernel=kernel, method="direct"), P.Blur(kernel=kernel, method="fft")
        assert torch.allclose(direct.A(x), fft.A(x), atol=1e-12)
        assert torch.allclose(direct.A_adjoint(x), fft.A_adjoint(x), atol=1e-12)


def test_blur_matches_scipy_circular_convolution():
    x = _randn((1, 1, 15, 18))
    kernel = _rand((5, 3), 7)
    expected = scipy.ndimage.convolve(x[0, 0].numpy(), kernel.numpy(), mode="wrap")
    for method in ("direct", "fft"):
        assert np.allclose(P.Blur(kernel=kernel, method=method).A(x)[0, 0].numpy(), expected, atol=1e-12)


def test_blur_kernel_centre_convention_for_even_kernels():
    # The image of a delta at (0, 0) is the kernel with tap (kh//2, kw//2) at (0, 0), wrapped.
    kernel = _rand((4, 6), 1)
    delta = torch.zeros(1, 1, 10, 12, dtype=DOUBLE)
    delta[..., 0, 0] = 1
    expected = torch.roll(torch.nn.functional.pad(kernel, (0, 6, 0, 6)), shifts=(-2, -3), dims=(0, 1))
    for method in ("direct", "fft"):
        assert torch.allclose(P.Blur(kernel=kernel, method=method).A(delta)[0, 0], expected, atol=1e-12)


def test_blur_kernel_larger_than_image_wraps_with_fft():
    op = P.Blur(std=4.0)  # 25 x 25 taps on a 10 x 10 image
    x = _randn((1, 1, 10, 10))
    assert _adjoint_mismatch(op, (2, 1, 10, 10)) < 1e-10
    assert torch.isclose(op.A(x).sum(), x.sum())  # a normalised kernel keeps the mean
    with pytest.raises(ValueError, match="fit"):
        P.Blur(std=4.0, method="direct").A(x)


def test_blur_transfer_function_diagonalises_the_normal_operator():
    op = P.Blur(std=1.5)
    x = _randn((1, 1, 12, 12))
    transfer = op.transfer_function(12, 12)
    normal = torch.fft.irfft2(torch.fft.rfft2(x) * transfer.abs() ** 2, s=(12, 12))
    assert torch.allclose(op.A_adjoint(op.A(x)), normal, atol=1e-12)


def test_blur_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        P.Blur()
    with pytest.raises(ValueError, match="exactly one"):
        P.Blur(kernel=torch.ones(3, 3), std=1.0)
    with pytest.raises(ValueError, match="method"):
        P.Blur(std=1.0, method="spline")
    with pytest.raises(ValueError, match="kernel"):
        P.Blur(kernel=torch.ones(3))
    with pytest.raises(ValueError, match="x must be 4-D"):
        P.Blur(std=1.0).A(torch.ones(8, 8))


# ---------------------------------------------------------------------------------- super-resolution
def test_super_resolution_subsamples_the_blurred_image():
    x = _randn((2, 1, 16, 12))
    op = P.SuperResolution(4, kernel_std=1.0)
    expected = P.Blur(std=1.0).A(x)[..., ::4, ::4]
    assert op.A(x).shape == (2, 1, 4, 3)
    assert torch.allclose(op.A(x), expected)
    assert op.measurement_shape((2, 1, 16, 12)) == (2, 1, 4, 3)


def test_super_resolution_initial_guess_interpolates_the_samples():
    y = _rand((2, 3, 5, 6))
    for factor in (2, 4):
        up = P.SuperResolution(factor).initial_guess(y)
        assert up.shape == (2, 3, 5 * factor, 6 * factor)
        assert torch.allclose(up[..., ::factor, ::factor], y, atol=1e-12)
    constant = torch.full((1, 1, 4, 4), 0.3, dtype=DOUBLE)
    assert torch.allclose(P.SuperResolution(2).initial_guess(constant), torch.full((1, 1, 8, 8), 0.3, dtype=DOUBLE))


def test_super_resolution_bad_arguments():
    with pytest.raises(ValueError, match="factor"):
        P.SuperResolution(5)
    with pytest.raises(TypeError, match="factor"):
        P.SuperResolution(2.0)
    with pytest.raises(ValueError, match="multiple of the factor 4"):
        P.SuperResolution(4).A(torch.ones(1, 1, 10, 12))
    with pytest.raises(ValueError, match="at most one"):
        P.SuperResolution(2, kernel=torch.ones(3, 3), kernel_std=1.0)


# ---------------------------------------------------------------------------------- tomography
def test_tomography_axis_angles_are_column_and_row_sums():
    x = _randn((2, 1, 7, 7))
    op = P.Tomography(7, n_angles=2, n_detectors=7)  # angles 0 and pi/2
    sinogram = op.A(x)
    assert torch.allclose(sinogram[:, :, 0], x.sum(dim=-2), atol=1e-12)  # rays along y
    assert torch.allclose(sinogram[:, :, 1], x.sum(dim=-1).flip(-1), atol=1e-12)  # y points up


def test_tomography_projects_a_disc_to_its_chords():
    n, radius = 48, 15.0
    fine = 8  # supersampled indicator of a centred disc
    coords = (np.arange(n * fine) + 0.5) / fine - n / 2
    inside = (coords[:, None] ** 2 + coords[None, :] ** 2) <= radius**2
    disc = inside.reshape(n, fine, n, fine).mean(axis=(1, 3))
    op = P.Tomography(n, n_angles=10)
    sinogram = op.A(torch.from_numpy(disc)[None, None])[0, 0].numpy()
    t = (np.arange(op.n_detectors) - (op.n_detectors - 1) / 2)
    chord = 2 * np.sqrt(np.clip(radius**2 - t**2, 0, None))
    interior = np.abs(t) < radius - 3  # away from the partial-volume edge
    assert np.abs(sinogram[:, interior] - chord[interior]).max() < 0.2
    # Joseph sums interpolated samples: the mass per angle is kept up to a Riemann-sum error.
    assert np.abs(sinogram.sum(axis=1) - disc.sum()).max() < 2e-3 * disc.sum()


def test_fbp_reconstructs_the_phantom_from_full_angle_data():
    phantom = torch.from_numpy(P.shepp_logan(64))[None, None]
    op = P.Tomography(64, n_angles=90)
    sinogram = op.A(phantom)
    ramp = op.fbp(sinogram)
    assert psnr(ramp, phantom)[0] > 27.0
    assert psnr(op.fbp(sinogram, filter="hann"), phantom)[0] > 22.0
    assert abs(float(ramp.mean() / phantom.mean()) - 1) < 0.01
    limited = P.Tomography(64, n_angles=60, angle_range=math.pi / 2)
    assert psnr(limited.fbp(limited.A(phantom)), phantom)[0] < psnr(ramp, phantom)[0] - 5


@pytest.mark.parametrize(
    "geometry", [{"detector_spacing": 0.5}, {"detector_spacing": 0.7}, {"angle_range": 2 * math.pi}]
)
def test_fbp_scaling_holds_for_other_geometries(geometry):
    phantom = torch.from_numpy(P.shepp_logan(48))[None, None]
    op = P.Tomography(48, n_angles=90, **geometry)
    reconstruction = op.fbp(op.A(phantom))
    assert abs(float(reconstruction.mean() / phantom.mean()) - 1) < 0.01
    assert psnr(reconstruction, phantom)[0] > 27.0


def test_tomography_initial_guess_is_hann_fbp():
    op = P.Tomography(16, 10)
    y = op.A(_rand((1, 2, 16, 16)))
    assert torch.equal(op.initial_guess(y), op.fbp(y, filter="hann"))


def test_tomography_bad_arguments():
    op = P.Tomography((16, 12), 10)
    with pytest.raises(ValueError, match=r"built for \(16, 12\)"):
        op.A(torch.ones(1, 1, 12, 16))
    with pytest.raises(ValueError, match="n_angles, n_detectors"):
        op.A_adjoint(torch.ones(1, 1, 10, op.n_detectors + 1))
    with pytest.raises(ValueError, match="filter"):
        op.fbp(torch.ones(1, 1, 10, op.n_detectors), filter="shepp")
    with pytest.raises(ValueError, match="n_angles"):
        P.Tomography(16, 0)
    with pytest.raises(ValueError, match="angle_range"):
        P.Tomography(16, 10, angle_range=0.0)
    with pytest.raises(TypeError, match="image_size"):
        P.Tomography((16, 12, 3), 10)


# ---------------------------------------------------------------------------------- inpainting
def test_inpainting_masks_pixels():
    op = P.Inpainting.random((8, 8), missing=0.5, seed=3)
    x = _rand((2, 3, 8, 8))
    y = op.A(x)
    assert torch.equal(y[..., op.mask], x[..., op.mask])
    assert bool((y[..., ~op.mask] == 0).all())
    assert 0.2 < (~op.mask).double().mean() < 0.8
    assert torch.equal(P.Inpainting.random((8, 8), 0.5, seed=3).mask, op.mask)


def test_inpainting_bad_masks():
    with pytest.raises(ValueError, match="last 2 dimensions"):
        P.Inpainting(torch.ones(8, 8)).A(torch.ones(1, 1, 8, 9))
    with pytest.raises(ValueError, match="last 3 dimensions"):
        P.Inpainting(torch.ones(3, 8, 8)).A(torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match="zeros and ones"):
        P.Inpainting(torch.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="mask must be"):
        P.Inpainting(torch.ones(4))
    with pytest.raises(ValueError, match="missing"):
        P.Inpainting.random((4, 4), missing=1.0)


# ---------------------------------------------------------------------------------- noise and simulation
def test_gaussian_noise_statistics_and_nll():
    noise = P.GaussianNoise(0.1)
    clean = torch.zeros(4, 1, 64, 64, dtype=DOUBLE)
    noisy = noise(clean, torch.Generator().manual_seed(0))
    assert abs(float(noisy.std()) - 0.1) < 0.003
    assert abs(float(noisy.mean())) < 0.003
    nll = noise.nll(clean, noisy)
    assert nll.shape == (4,)
    assert torch.allclose(nll, (noisy**2).flatten(1).sum(1) / (2 * 0.01))


@pytest.mark.parametrize("sigma", [0, -0.1, float("inf")])
def test_gaussian_noise_rejects_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        P.GaussianNoise(sigma)


def test_poisson_noise_counts_and_nll_minimum():
    noise = P.PoissonNoise(photons=1000.0, attenuation=0.05)
    line_integrals = torch.full((2, 1, 50, 50), 10.0, dtype=DOUBLE)
    y = noise(line_integrals, torch.Generator().manual_seed(0))
    counts = noise.counts(y)
    expected = 1000.0 * math.exp(-0.5)
    assert abs(float(counts.mean()) - expected) < 0.02 * expected
    assert abs(float(counts.var()) - expected) < 0.1 * expected  # Poisson: variance = mean
    # The likelihood of the counts is maximal where the prediction reproduces them: Ax = y.
    Ax = y.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(noise.nll(Ax, y).sum(), Ax)
    assert grad.abs().max() < 1e-9
    assert bool((noise.nll(y + 0.1, y) > noise.nll(y, y)).all())


def test_poisson_noise_keeps_zero_counts_finite():
    noise = P.PoissonNoise(photons=1.0, attenuation=1.0)
    y = noise(torch.full((1, 1, 20, 20), 20.0, dtype=DOUBLE), torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(y).all())
    with pytest.raises(ValueError, match="photons"):
        P.PoissonNoise(photons=0)


def test_simulate_is_reproducible_from_the_seed():
    op = P.Blur(std=1.0, noise_model=P.GaussianNoise(0.05))
    x = _rand((2, 1, 16, 16))
    y1, y2, y3 = P.simulate(x, op, seed=4), P.simulate(x, op, seed=4), P.simulate(x, op, seed=5)
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    assert torch.allclose(P.simulate(x, P.Blur(std=1.0)), P.Blur(std=1.0).A(x))  # noiseless
    assert abs(float((y1 - op.A(x)).std()) - 0.05) < 0.01
    override = P.simulate(x, op, noise=P.GaussianNoise(0.5), seed=4)
    assert float((override - op.A(x)).std()) > 0.4
    assert torch.equal(op.noise(op.A(x), torch.Generator().manual_seed(4)), y1)


def test_noise_nll_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="Ax has shape"):
        P.GaussianNoise(0.1).nll(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 5))


# ---------------------------------------------------------------------------------- conjugate gradients
def test_conjugate_gradient_solves_blur_normal_equations():
    op = P.Blur(std=1.5)
    beta = 0.05
    b = _randn((3, 2, 16, 16))
    x = P.conjugate_gradient(lambda v: op.A_adjoint(op.A(v)) + beta * v, b, max_iter=200, tol=1e-12)
    transfer = op.transfer_function(16, 16)
    exact = torch.fft.irfft2(torch.fft.rfft2(b) / (transfer.abs() ** 2 + beta), s=(16, 16))
    assert torch.allclose(x, exact, atol=1e-9)


def test_conjugate_gradient_treats_batch_items_independently():
    # Item scales differ by 1e6; each stops on its own relative tolerance.
    diag = torch.linspace(1, 10, 20, dtype=DOUBLE)
    b = torch.stack([_randn((20,), 1), 1e6 * _randn((20,), 2), torch.zeros(20, dtype=DOUBLE)])
    x = P.conjugate_gradient(lambda v: v * diag, b, max_iter=50, tol=1e-10)
    assert torch.allclose(x, b / diag, rtol=1e-8, atol=0)
    x0 = torch.ones_like(b)
    assert torch.equal(P.conjugate_gradient(lambda v: v * diag, b, x0=x0, max_iter=0), x0)


def test_conjugate_gradient_bad_arguments():
    with pytest.raises(ValueError, match="x0 has shape"):
        P.conjugate_gradient(lambda v: v, torch.ones(2, 3), x0=torch.ones(2, 4))
    with pytest.raises(ValueError, match="max_iter"):
        P.conjugate_gradient(lambda v: v, torch.ones(2, 3), max_iter=-1)
    with pytest.raises(ValueError, match="tol"):
        P.conjugate_gradient(lambda v: v, torch.ones(2, 3), tol=-1.0)


# ---------------------------------------------------------------------------------- phantom
def test_shepp_logan_phantom():
    phantom = P.shepp_logan(64)
    assert phantom.shape == (64, 64) and phantom.dtype == np.float64
    assert phantom.min() >= 0 and phantom.max() <= 1 and phantom.max() > 0.9
    assert phantom[0, 0] == 0 and phantom[32, 32] > 0
    with pytest.raises(ValueError, match="size"):
        P.shepp_logan(1)
