"""Whitened operators and the Poisson weighted least squares of low-dose CT (patchreg.physics.whitened)."""

from __future__ import annotations

import math

import pytest
import torch

import patchreg.physics as P
from patchreg.priors import GMM, epll_restore
from patchreg.priors.hqs import weighted_problem


def _ct(noise=None):
    return P.Tomography((16, 16), 12, math.pi, noise_model=noise)


def test_whitened_adjoint_identity():
    g = torch.Generator().manual_seed(0)
    ct = _ct()
    x = torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64)
    y = torch.rand(ct.measurement_shape(x.shape), generator=g, dtype=torch.float64)
    op = P.Whitened(ct, torch.rand(y.shape, generator=g, dtype=torch.float64) * 3)
    assert torch.sum(op.A(x) * y).item() == pytest.approx(torch.sum(x * op.A_adjoint(y)).item(), rel=1e-10)


def test_whitened_data_term_is_the_weighted_least_squares():
    g = torch.Generator().manual_seed(1)
    ct = _ct()
    x = torch.rand(1, 1, 16, 16, generator=g, dtype=torch.float64)
    y = ct.A(torch.rand(1, 1, 16, 16, generator=g, dtype=torch.float64))
    w = torch.rand(y.shape, generator=g, dtype=torch.float64)
    op = P.Whitened(ct, w)
    assert torch.sum((op.A(x) - op.whiten(y)) ** 2).item() == pytest.approx(torch.sum(w * (ct.A(x) - y) ** 2).item())


def test_poisson_weights_are_the_inverse_variance_of_the_log_counts():
    noise = P.PoissonNoise(photons=2000.0, attenuation=0.05)
    a = torch.tensor([1.0, 10.0, 40.0], dtype=torch.float64).repeat(4000, 1)  # 4000 draws of 3 detectors
    y = noise(a, torch.Generator().manual_seed(0))
    empirical = y.var(dim=0)
    predicted = 1 / P.poisson_weights(noise, a[0])
    assert torch.allclose(empirical, predicted, rtol=0.1), (empirical, predicted)


def test_bad_weights_and_noise_are_named():
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        P.Whitened(_ct(), -torch.ones(1, 1, 12, 23))
    with pytest.raises(TypeError, match="noise must be a PoissonNoise"):
        P.poisson_weights(P.GaussianNoise(0.1), torch.ones(3))
    with pytest.raises(ValueError, match="the measurements have shape"):
        P.Whitened(_ct(), torch.ones(1, 1, 3, 3)).A(torch.ones(1, 1, 16, 16))


def test_weighted_problem_whitens_poisson_and_leaves_gaussian_alone():
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    gaussian = _ct(P.GaussianNoise(0.1))
    y = P.simulate(x, gaussian, seed=0)
    assert weighted_problem(gaussian, y) == (gaussian, y)
    poisson = _ct(P.PoissonNoise(4096.0))
    y = P.simulate(x, poisson, seed=0)
    op, yw = weighted_problem(poisson, y)
    assert isinstance(op, P.Whitened)
    w = P.poisson_weights(poisson.noise_model, y)
    torch.testing.assert_close(yw, w.sqrt() * y)


def test_uniform_weights_in_the_splitting_equal_a_scaled_data_weight():
    # lam/2 sum c (Ax - y)^2 is (lam c)/2 ||Ax - y||^2: the same EPLL estimate
    g = torch.Generator().manual_seed(3)
    gmm = GMM(2, 3)
    ct = _ct()
    y = ct.A(torch.rand(1, 1, 16, 16, generator=g, dtype=torch.float64))
    x0 = ct.A_adjoint(y) / 30
    c = 2.5
    op = P.Whitened(ct, torch.full(y.shape, c, dtype=torch.float64))
    weighted = epll_restore(op.whiten(y), op, gmm, 0.1, betas=[10.0, 40.0], lam=1.0, x0=x0, cg_iters=200, cg_tol=1e-12)
    scaled = epll_restore(y, ct, gmm, 0.1, betas=[10.0, 40.0], lam=c, x0=x0, cg_iters=200, cg_tol=1e-12)
    torch.testing.assert_close(weighted, scaled, rtol=1e-7, atol=1e-9)
