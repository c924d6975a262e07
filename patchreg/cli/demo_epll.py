"""Demo stage 2: EPLL denoising of a bundled test photo with a GMM trained on the bundled
training photos (cached in the report folder, reused when its settings match)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..data import PatchSampler, bundled_image, load_bundled, to_tensor
from ..metrics import psnr, ssim
from ..physics import Denoising, GaussianNoise, simulate
from ..priors import GMM, epll_restore
from .demo import DEMO_STAGES


def _train_or_reuse(path: Path, args) -> tuple[GMM, str]:
    settings = dict(n_components=args.gmm_components, patch_size=args.gmm_patch_size, remove_mean=True)
    if path.is_file():
        try:
            gmm = GMM.load(path, patch_size=args.gmm_patch_size)
            if gmm.n_components == args.gmm_components and gmm.hyperparameters.get("seed") == args.seed:
                return gmm, "reused cached model"
        except ValueError:
            pass  # stale or corrupt cache: train again
    sampler = PatchSampler(load_bundled("train"), args.gmm_patch_size, batch_size=8192, seed=args.seed)
    gmm = GMM(**settings)
    gmm.fit(sampler, n_iter=args.gmm_iters, patches_per_iter=args.gmm_patches, seed=args.seed,
            checkpoint=path, resume=True, progress=True)
    return gmm, "trained"


def epll_stage(args, report: dict) -> list[str]:
    out = Path(args.out)
    t0 = time.perf_counter()
    gmm, how = _train_or_reuse(out / "gmm_demo.safetensors", args)
    train_s = time.perf_counter() - t0
    clean = to_tensor(bundled_image("camera"), dtype=torch.float32)[..., 128:384, 128:384]  # short demo
    sigma = args.sigma / 255
    physics = Denoising(noise_model=GaussianNoise(sigma))
    y = simulate(clean, physics, seed=args.seed)
    t0 = time.perf_counter()
    x = epll_restore(y, physics, gmm, sigma)
    restore_s = time.perf_counter() - t0
    noisy_psnr, out_psnr = float(psnr(y, clean)[0]), float(psnr(x, clean)[0])
    out_ssim = float(ssim(x, clean)[0])
    _save_png(out / "epll_noisy.png", y)
    _save_png(out / "epll_restored.png", x)
    _save_png(out / "epll_clean.png", clean)
    np.save(out / "epll_restored.npy", x[0, 0].numpy())
    report["epll_denoising"] = {
        "image": "camera[128:384, 128:384]", "sigma_255": args.sigma, "gmm": how,
        "gmm_components": gmm.n_components, "patch_size": gmm.patch_size, "gmm_seconds": train_s,
        "psnr_noisy": noisy_psnr, "psnr_epll": out_psnr, "ssim_epll": out_ssim, "epll_seconds": restore_s,
    }
    print(f"  EPLL sigma={args.sigma}/255: PSNR {noisy_psnr:.2f} -> {out_psnr:.2f} dB in {restore_s:.1f} s ({how} GMM)")
    return [
        f"## EPLL denoising (sigma = {args.sigma}/255)",
        "",
        f"GMM: K = {gmm.n_components}, {gmm.patch_size}x{gmm.patch_size} patches, mean removed, {how} "
        f"({train_s:.0f} s) on patches streamed from the bundled training photos.",
        "",
        "| image | noisy PSNR | EPLL PSNR | EPLL SSIM | time |",
        "|---|---|---|---|---|",
        f"| camera 256x256 crop | {noisy_psnr:.2f} dB | {out_psnr:.2f} dB | {out_ssim:.3f} | {restore_s:.1f} s |",
        "",
        "![noisy](epll_noisy.png) ![restored](epll_restored.png) ![clean](epll_clean.png)",
        "",
    ]


def _save_png(path: Path, img: torch.Tensor) -> None:
    from skimage.io import imsave

    arr = (img[0, 0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    imsave(path, arr, check_contrast=False)


DEMO_STAGES.append(("EPLL denoising", epll_stage))
