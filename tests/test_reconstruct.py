"""Variational reconstruction with Adam and L-BFGS (patchreg.reconstruct).

Convex problems with closed-form minimisers check both solvers; a quadratic smoothness
prior checks that deblurring improves on the start image.
"""

from __future__ import annotations

import math

import pytest
import torch

import patchreg.physics as P
from patchreg.metrics import psnr
from patchreg.reconstruct import reconstruct

DOUBLE = torch.float64


def _clean_image(size=32):
    """A smooth test image in [0, 1]: the Shepp-Logan phantom, lightly blurred."""
    phantom = torch.from_numpy(P.shepp_logan(size))[None, None]
    return P.Blur(std=0.7).A(phantom).clamp(0, 1)


def squared_norm(x):
    """R(x) = ||x||^2 per image."""
    return (x**2).flatten(1).sum(1)


class Smoothness:
    """R(x) = ||D x||^2 per image, D the circular forward differences in both directions."""

    channels = 1

    def nll(self, x):
        dy = torch.roll(x, -1, dims=-2) - x
        dx = torch.roll(x, -1, dims=-1) - x
        return (dy**2 + dx**2).flatten(1).sum(1)

    @staticmethod
    def eigenvalues(H, W):
        """Eigenvalues of D^T D on the rfft2 grid."""
        wy = 2 - 2 * torch.cos(2 * math.pi * torch.arange(H, dtype=DOUBLE) / H)
        wx = 2 - 2 * torch.cos(2 * math.pi * torch.arange(W // 2 + 1, dtype=DOUBLE) / W)
        return wy[:, None] + wx[None, :]


def _deblurring_problem(sigma=0.01, seed=0):
    x = _clean_image()
    physics = P.Blur(std=1.5, noise_model=P.GaussianNoise(sigma))
    return x, physics, P.simulate(x, physics, seed=seed)


def _tikhonov_deblur(y, physics, lam, sigma):
    """argmin ||Ax - y||^2 / (2 sigma^2) + lam ||Dx||^2: (A*A / sigma^2 + 2 lam D*D) x = A*y / sigma^2."""
    H, W = y.shape[-2:]
    transfer = physics.transfer_function(H, W)
    numerator = torch.fft.rfft2(y) * transfer.conj() / sigma**2
    denominator = transfer.abs() ** 2 / sigma**2 + 2 * lam * Smoothness.eigenvalues(H, W)
    return torch.fft.irfft2(numerator / denominator, s=(H, W))


# ---------------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("solver, steps, lr, tol", [("lbfgs", 50, None, 1e-10), ("adam", 500, 0.01, 1e-6)])
def test_denoising_with_norm_prior_reaches_the_closed_form(solver, steps, lr, tol):
    # ||x - y||^2 / (2 sigma^2) + lam ||x||^2 is minimal at x = y / (1 + 2 lam sigma^2).
    sigma, lam = 0.1, 3.0
    physics = P.Denoising(P.GaussianNoise(sigma))
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=DOUBLE)
    y = P.simulate(x, physics, seed=1)
    estimate, history = reconstruct(y, physics, squared_norm, lam, solver=solver, steps=steps, lr=lr, progress=False)
    assert torch.allclose(estimate, y / (1 + 2 * lam * sigma**2), atol=tol, rtol=0)
    assert history["loss"][-1] < history["loss"][0]


def test_lbfgs_deblurring_reaches_the_tikhonov_solution():
    sigma, lam = 0.01, 200.0
    x, physics, y = _deblurring_problem(sigma)
    estimate, history = reconstruct(y, physics, Smoothness(), lam, solver="lbfgs", steps=200, progress=False)
    exact = _tikhonov_deblur(y, physics, lam, sigma)
    assert torch.allclose(estimate, exact, atol=1e-5, rtol=0)
    assert min(history["loss"]) < history["loss"][0] and len(history["loss"]) <= 250  # 1.25 * steps evaluations


def test_adam_deblurring_improves_psnr_over_the_start_image():
    sigma, lam = 0.01, 200.0
    x, physics, y = _deblurring_problem(sigma)
    start = physics.initial_guess(y)
    estimate, history = reconstruct(
        y, physics, Smoothness(), lam, solver="adam", steps=150, lr=0.02, clamp=(0.0, 1.0), reference=x, progress=False
    )
    exact = _tikhonov_deblur(y, physics, lam, sigma)
    assert psnr(estimate, x)[0] > psnr(start, x)[0] + 1.0
    assert abs(psnr(estimate, x)[0] - psnr(exact.clamp(0, 1), x)[0]) < 0.5
    assert len(history["psnr"]) == 150 and history["psnr"][-1] > history["psnr"][0]
    assert float(estimate.min()) >= 0 and float(estimate.max()) <= 1


def test_poisson_ct_reconstruction_converges_and_improves_on_fbp():
    x = _clean_image(24)
    noise = P.PoissonNoise(photons=1000.0, attenuation=0.05)
    physics = P.Tomography(24, n_angles=16, noise_model=noise)
    y = P.simulate(x, physics, seed=0)
    prior, lam = Smoothness(), 30.0
    estimate, _ = reconstruct(y, physics, prior, lam, solver="lbfgs", steps=60, progress=False)

    def gradient_norm(image):
        image = image.clone().requires_grad_(True)
        (noise.nll(physics.A(image), y) + lam * prior.nll(image)).sum().backward()
        return float(image.grad.norm())

    assert gradient_norm(estimate) < 1e-3 * gradient_norm(physics.initial_guess(y))
    assert psnr(estimate, x)[0] > psnr(physics.fbp(y), x)[0] + 5.0  # ramp FBP amplifies the noise
    assert psnr(estimate, x)[0] > psnr(physics.initial_guess(y), x)[0] + 0.3  # Hann FBP


# ---------------------------------------------------------------------------------- start images and interfaces
def test_default_start_images_come_from_the_physics():
    x = _clean_image(16)
    for physics in (P.SuperResolution(2), P.Tomography(16, 8), P.Blur(std=1.0)):
        y = physics.A(x)
        estimate, history = reconstruct(y, physics, None, 0.0, steps=0, progress=False)
        assert torch.equal(estimate, physics.initial_guess(y))
        assert history["loss"] == []
    given = torch.full_like(x, 0.5)
    estimate, _ = reconstruct(P.Blur(std=1.0).A(x), P.Blur(std=1.0), None, 0.0, x0=given, steps=0, progress=False)
    assert torch.equal(estimate, given) and estimate is not given


class DuckPhysics:
    """Only A and A_adjoint, and a noise model without a likelihood (like a DeepInverse physics)."""

    noise_model = staticmethod(lambda y, generator=None: y)

    def A(self, x):
        return 2.0 * x

    def A_adjoint(self, y):
        return 2.0 * y


def test_any_object_with_A_and_A_adjoint_is_accepted():
    # 0.5 ||2x - y||^2 + lam ||x||^2 is minimal at x = 2 y / (4 + 2 lam).
    y = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0), dtype=DOUBLE)
    estimate, _ = reconstruct(y, DuckPhysics(), squared_norm, 0.5, solver="lbfgs", steps=30, progress=False)
    assert torch.allclose(estimate, 2 * y / 5, atol=1e-10)


def test_explicit_noise_model_overrides_the_physics_one():
    # With GaussianNoise(sigma) the data term is ||2x - y||^2 / (2 sigma^2): x = 2y / (4 + 2 lam sigma^2).
    y = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(0), dtype=DOUBLE)
    estimate, _ = reconstruct(
        y, DuckPhysics(), squared_norm, 0.5, noise=P.GaussianNoise(2.0), solver="lbfgs", steps=30, progress=False
    )
    assert torch.allclose(estimate, 2 * y / (4 + 2 * 0.5 * 4.0), atol=1e-10)


# ---------------------------------------------------------------------------------- bad input
def test_bad_arguments_are_rejected():
    x, physics, y = _deblurring_problem()
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        reconstruct(y, physics, Smoothness(), -1.0, progress=False)
    with pytest.raises(ValueError, match="lam"):
        reconstruct(y, physics, Smoothness(), float("nan"), progress=False)
    with pytest.raises(ValueError, match="solver"):
        reconstruct(y, physics, Smoothness(), 1.0, solver="sgd", progress=False)
    with pytest.raises(ValueError, match="steps"):
        reconstruct(y, physics, Smoothness(), 1.0, steps=-1, progress=False)
    with pytest.raises(ValueError, match="clamp"):
        reconstruct(y, physics, Smoothness(), 1.0, clamp=(1.0, 0.0), progress=False)
    with pytest.raises(TypeError, match="prior"):
        reconstruct(y, physics, "tv", 1.0, progress=False)
    with pytest.raises(ValueError, match="reference"):
        reconstruct(y, physics, Smoothness(), 1.0, reference=x[..., :8], progress=False)


def test_shape_and_channel_mismatches_are_rejected():
    x, physics, y = _deblurring_problem()
    tomography = P.Tomography(32, 10)
    with pytest.raises(ValueError, match="n_angles, n_detectors"):
        reconstruct(y, tomography, Smoothness(), 1.0, progress=False)  # an image is not a sinogram
    with pytest.raises(ValueError, match="physics maps the start image"):
        reconstruct(y[..., :16], P.SuperResolution(2), None, 0.0, x0=x, progress=False)
    with pytest.raises(ValueError, match="2 channels but the prior models 1"):
        reconstruct(torch.cat([y, y], dim=1), physics, Smoothness(), 1.0, progress=False)
    with pytest.raises(ValueError, match="one value per image"):
        reconstruct(y, physics, lambda v: v.flatten(1), 1.0, steps=1, progress=False)
