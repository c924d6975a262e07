"""patchreg priors inside DeepInverse (patchreg.interop.deepinv) and DeepInverse physics in patchreg.reconstruct.

DeepInverse is optional (not a patchreg dependency): everything but the import-error test skips without it.
"""

from __future__ import annotations

import pytest
import torch

from patchreg.metrics import psnr
from patchreg.priors import GMM
from patchreg.reconstruct import reconstruct


dinv = pytest.importorskip("deepinv")
interop = pytest.importorskip("patchreg.interop.deepinv")


@pytest.fixture(scope="module")
def gmm():
    from patchreg.pretrained import resolve_checkpoint

    return GMM.load(resolve_checkpoint("pretrained:gmm"))


@pytest.fixture(scope="module")
def camera():
    import skimage.data

    return torch.from_numpy(skimage.data.camera()[200:232, 200:232] / 255.0).float()[None, None]


def _random_gmm() -> GMM:
    g = torch.Generator().manual_seed(0)
    model = GMM(3, 3)
    a = torch.randn(3, 9, 9, generator=g, dtype=torch.float64)
    model.covariances.copy_(a @ a.transpose(1, 2) / 9 + 0.05 * torch.eye(9, dtype=torch.float64))
    model.means.copy_(0.1 * torch.randn(3, 9, generator=g, dtype=torch.float64))
    return model


def test_epll_prior_fn_and_grad_are_the_gmm_nll_and_its_gradient():
    model = _random_gmm()
    prior = interop.epll_prior(model)
    assert isinstance(prior, dinv.optim.Prior) and prior.explicit_prior
    x = torch.rand(2, 1, 10, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(prior.fn(x), model.nll(x), rtol=1e-12, atol=0)
    grad = prior.grad(x)
    # against central differences of fn along a random direction, in float64
    v = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    eps = 1e-6
    numeric = (prior.fn(x + eps * v) - prior.fn(x - eps * v)) / (2 * eps)
    torch.testing.assert_close((grad * v).flatten(1).sum(1), numeric, rtol=1e-6, atol=1e-9)
    assert not x.requires_grad and not grad.requires_grad
    sum_prior = interop.epll_prior(model, reduction="sum")
    torch.testing.assert_close(sum_prior.fn(x), model.nll(x, reduction="sum"))
    with pytest.raises(ValueError, match="reduction must be"):
        interop.epll_prior(model, reduction="max")


def test_patchnr_and_chart_priors_give_one_value_and_a_gradient_per_image():
    from patchreg.pretrained import resolve_checkpoint
    from patchreg.priors import ChartPrior, PatchCharts, PatchFlow, PatchNR

    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    flow = PatchFlow.load(resolve_checkpoint("pretrained:flow"))
    charts = PatchCharts.load(resolve_checkpoint("pretrained:charts"))
    cases = [(interop.patchnr_prior(flow, n_patches=64, seed=4), PatchNR(flow, n_patches=64, seed=4)),
             (interop.chart_prior(charts, top_charts=2), ChartPrior(charts, top_charts=2))]
    for prior, reference in cases:
        value = prior.fn(x)
        assert value.shape == (2,) and torch.isfinite(value).all()
        torch.testing.assert_close(value, reference.nll(x))
        prior.reset()
        leaf = x.clone().requires_grad_(True)
        reference.reset()
        expected = torch.autograd.grad(reference.nll(leaf).sum(), leaf)[0]
        torch.testing.assert_close(prior.grad(x), expected)
    with pytest.raises(TypeError, match="nll"):
        interop.PatchPrior(object())


def test_deepinv_gradient_descent_denoises_with_the_epll_prior(gmm, camera):
    g = torch.Generator().manual_seed(0)
    noisy = camera + 0.1 * torch.randn(camera.shape, generator=g)
    physics = dinv.physics.Denoising(dinv.physics.GaussianNoise(0.1))
    lam = 0.1**2 * 27**2 / 36  # EPLL's MAP weight sigma^2 n_patches / d for the mean patch NLL
    model = dinv.optim.optim_builder("GD", prior=interop.epll_prior(gmm), data_fidelity=dinv.optim.L2(),
                                     max_iter=30, params_algo={"stepsize": 0.1, "lambda": lam}, early_stop=False)
    estimate = model(noisy, physics)
    # measured: 19.8 dB -> 27.3 dB
    assert float(psnr(estimate, camera)[0]) > float(psnr(noisy, camera)[0]) + 5


def test_deepinv_blur_in_patchreg_reconstruct(gmm, camera):
    from deepinv.physics.functional.blur import gaussian_blur

    blur = dinv.physics.Blur(filter=gaussian_blur(sigma=(1.0, 1.0)), padding="circular")
    y = blur(camera) + 0.01 * torch.randn(camera.shape, generator=torch.Generator().manual_seed(0))
    estimate, history = reconstruct(y, blur, gmm, 27**2 / 36 * 1e-4, solver="lbfgs", steps=40, progress=False)
    assert history["loss"][-1] < history["loss"][0]
    assert float(psnr(estimate, camera)[0]) > float(psnr(y, camera)[0]) + 1.0


def test_deepinv_tomography_in_patchreg_reconstruct(gmm, camera):
    ct = dinv.physics.Tomography(angles=30, img_width=32, circle=False, normalize=True)
    clean = ct(camera)
    y = clean + 0.01 * clean.abs().max() * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    plain, _ = reconstruct(y, ct, None, 0.0, solver="lbfgs", steps=60, progress=False)
    estimate, _ = reconstruct(y, ct, gmm, 0.01, solver="lbfgs", steps=60, progress=False)
    # measured: least squares 24.2 dB, with the EPLL prior 30.9 dB
    assert float(psnr(estimate, camera)[0]) > float(psnr(plain, camera)[0]) + 3
