"""EPLL restoration with a GMM patch prior: z-step, x-step variants, denoising quality, bad inputs."""

from __future__ import annotations

import pytest
import torch

import patchreg
from patchreg.data import load_bundled
from patchreg.physics.denoising import Denoising
from patchreg.physics.inpainting import Inpainting
from patchreg.priors import GMM, epll_restore
from patchreg.priors.epll import default_betas, wiener_denoise_patches

F64 = torch.float64
PATCH = 5


def psnr(x, ref):
    return float(10 * torch.log10(1.0 / (x - ref).square().mean()))


@pytest.fixture(scope="module")
def small_gmm():
    """A 12-component GMM on 5x5 mean-removed patches of one training photo (fits in ~1 s)."""
    image = torch.from_numpy(load_bundled("train")[0]).float()[None, None]
    patches = patchreg.extract_patches(image, PATCH, stride=2)[0]
    idx = torch.randperm(patches.shape[0], generator=torch.Generator().manual_seed(0))[:20000]
    return GMM(12, PATCH, remove_mean=True).fit(patches[idx], n_iter=8, batch_size=4096, seed=0, progress=False)


@pytest.fixture(scope="module")
def clean():
    """Two 48x48 crops of a test photo, (2, 1, 48, 48) float32."""
    image = torch.from_numpy(load_bundled("test")[0]).float()
    return torch.stack([image[100:148, 100:148], image[200:248, 60:108]])[:, None]


def noisy(x, sigma, seed=0):
    return x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


def test_epll_denoising_improves_psnr(small_gmm, clean):
    sigma = 25 / 255
    y = noisy(clean, sigma)
    x = epll_restore(y, None, small_gmm, sigma)
    assert x.shape == y.shape and x.dtype == y.dtype
    for b in range(2):
        assert psnr(x[b], clean[b]) > psnr(y[b], clean[b]) + 5.0
    # Batched run equals one image at a time (no cross-talk between images).
    single = epll_restore(y[1:], Denoising(), small_gmm, sigma)
    torch.testing.assert_close(single, x[1:], rtol=1e-5, atol=1e-5)


def test_wiener_step_is_the_posterior_mean():
    """One component: z = (Sigma^-1 + I/s2)^-1 (Sigma^-1 mu + x/s2), the Gaussian posterior mean."""
    model = GMM(1, 2, remove_mean=False)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g, dtype=F64)
    model.covariances.copy_((a @ a.T / 4 + 0.1 * torch.eye(4, dtype=F64))[None])
    model.means.copy_(torch.randn(1, 4, generator=g, dtype=F64))
    x = torch.randn(10, 4, generator=g, dtype=F64)
    noise_var = 0.3
    prec = torch.linalg.inv(model.covariances[0])
    post_cov = torch.linalg.inv(prec + torch.eye(4, dtype=F64) / noise_var)
    expected = (post_cov @ (prec @ model.means[0, :, None] + x.T / noise_var)).T
    torch.testing.assert_close(wiener_denoise_patches(x, model, noise_var), expected)


def test_wiener_step_picks_the_most_likely_component_under_inflated_covariance():
    model = GMM(2, 1, channels=2, remove_mean=False)
    model.means.copy_(torch.tensor([[0.0, 0.0], [3.0, 3.0]], dtype=F64))
    model.covariances.copy_(torch.stack([torch.eye(2, dtype=F64) * 0.01, torch.eye(2, dtype=F64) * 4.0]))
    model.weights.copy_(torch.tensor([0.5, 0.5], dtype=F64))
    x = torch.tensor([[0.5, 0.5]], dtype=F64)
    # Without noise the broad component explains x better; with noise 1 the narrow one does.
    # Its Wiener estimate then shrinks x towards (0, 0) by 0.01 / 1.01.
    z = wiener_denoise_patches(x, model, 1.0)
    torch.testing.assert_close(z, x * 0.01 / 1.01)
    z_small_noise = wiener_denoise_patches(x, model, 1e-4)
    assert float((z_small_noise - x).abs().max()) < 1e-3


def test_inpainting_closed_form_matches_cg_and_fills_holes(small_gmm, clean):
    sigma = 0.01
    physics = Inpainting.random((48, 48), missing=0.3, seed=1)
    y = physics.A(noisy(clean, sigma))
    # Holes need a schedule that starts from a large effective noise level (0.3 here).
    betas = [2.0**i / 0.3**2 for i in range(6)]
    x = epll_restore(y, physics, small_gmm, sigma, betas=betas)
    hole = ~physics.mask
    observed_mean = y.sum(dim=(2, 3), keepdim=True) / physics.mask.sum()
    err_mean_fill = (observed_mean.expand_as(y) - clean)[..., hole].square().mean()
    err_epll = (x - clean)[..., hole].square().mean()
    assert err_epll < 0.05 * err_mean_fill

    class MaskOperator:  # a generic A / A_adjoint: forces the conjugate-gradient x-step
        def A(self, v):
            return v * physics.mask

        A_adjoint = A

    x0 = torch.where(physics.mask, y, observed_mean)  # the default start of the inpainting path
    x_cg = epll_restore(y, MaskOperator(), small_gmm, sigma, betas=betas, x0=x0, cg_iters=300, cg_tol=1e-10)
    torch.testing.assert_close(x_cg, x, rtol=1e-3, atol=2e-3)


def test_cg_x_step_equals_closed_form_for_denoising(small_gmm, clean):
    sigma = 15 / 255
    y = noisy(clean, sigma, seed=3).double()

    class Identity:
        def A(self, v):
            return v

        A_adjoint = A

    closed = epll_restore(y, Denoising(), small_gmm, sigma, betas=default_betas(sigma)[:2])
    cg = epll_restore(y, Identity(), small_gmm, sigma, betas=default_betas(sigma)[:2], cg_iters=100, cg_tol=1e-12)
    torch.testing.assert_close(cg, closed, rtol=1e-8, atol=1e-8)


def test_default_betas():
    sigma = 0.1
    assert default_betas(sigma) == pytest.approx([100.0, 400.0, 800.0, 1600.0, 3200.0])


def test_epll_bad_inputs(small_gmm, clean):
    y = clean[:1]
    with pytest.raises(ValueError, match="sigma must be a number > 0"):
        epll_restore(y, None, small_gmm, 0.0)
    with pytest.raises(ValueError, match="sigma must be a number > 0"):
        epll_restore(y, None, small_gmm, -0.1)
    with pytest.raises(ValueError, match="lam must be > 0"):
        epll_restore(y, None, small_gmm, 0.1, lam=-1.0)
    with pytest.raises(ValueError, match="betas"):
        epll_restore(y, None, small_gmm, 0.1, betas=[])
    with pytest.raises(ValueError, match="3 channels"):
        epll_restore(y.expand(1, 3, 48, 48), None, small_gmm, 0.1)
    with pytest.raises(ValueError, match="larger than the image"):
        epll_restore(y[..., :4, :4], None, small_gmm, 0.1)
    with pytest.raises(TypeError, match="gmm must be"):
        epll_restore(y, None, object(), 0.1)
    with pytest.raises(ValueError, match="y has shape"):
        epll_restore(y, None, small_gmm, 0.1, x0=y[..., :40])
    with pytest.raises(ValueError, match="must be 4-D"):
        epll_restore(y[0], None, small_gmm, 0.1)
    with pytest.raises(ValueError, match="prior_weight must be"):
        epll_restore(y, None, small_gmm, 0.1, prior_weight="count")


def test_prior_weights_differ_only_near_the_border(small_gmm, clean):
    """'uniform' and 'coverage' weight interior pixels alike (both d); only the border differs."""
    y = noisy(clean[:1], 0.1)
    a = epll_restore(y, None, small_gmm, 0.1, betas=[100.0])
    b = epll_restore(y, None, small_gmm, 0.1, betas=[100.0], prior_weight="coverage")
    p = small_gmm.patch_size
    torch.testing.assert_close(a[..., p - 1 : -(p - 1), p - 1 : -(p - 1)], b[..., p - 1 : -(p - 1), p - 1 : -(p - 1)])
    assert not torch.allclose(a, b)


def test_cli_train_gmm_and_reconstruct(tmp_path, capsys):
    import json

    import imageio.v3 as iio
    import numpy as np

    from patchreg.cli import main

    folder = tmp_path / "train"
    folder.mkdir()
    photo = load_bundled("train")[0]
    iio.imwrite(folder / "a.png", (photo[:96, :96] * 255).astype(np.uint8))
    test_png = tmp_path / "clean.png"
    iio.imwrite(test_png, (load_bundled("test")[0][100:164, 100:164] * 255).astype(np.uint8))
    ckpt = tmp_path / "gmm.safetensors"
    train = ["train", "gmm", "--images", str(folder), "--patch-size", "4", "--components", "4",
             "--patches-per-iter", "3000", "--batch-size", "1000", "--iters", "2", "--out", str(ckpt), "--quiet"]
    assert main(train) == 0
    assert GMM.load(ckpt, patch_size=4).n_components == 4
    out = tmp_path / "out" / "x.png"
    args = ["reconstruct", "--task", "denoise", "--prior", "epll", "--checkpoint", str(ckpt), "--image", str(test_png),
            "--sigma", str(25 / 255), "--output", str(out), "--metrics", str(tmp_path / "m.json"), "--quiet"]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    estimate = np.load(out.with_suffix(".npy"))
    assert estimate.shape == (64, 64) and out.is_file()
    assert metrics["psnr"] > 25.0 and metrics["prior"] == "epll"
    # A GMM file given as a flow checkpoint, or a bad sigma: clear errors, exit status 2.
    assert main([*args[:4], "patchnr", *args[5:]]) == 2
    assert "expected 'flow'" in capsys.readouterr().err
    assert main([*args[:9], "--sigma", "0", *args[11:]]) == 2
    assert "--sigma must be > 0" in capsys.readouterr().err
