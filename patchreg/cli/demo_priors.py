"""Demo stage 2, the product's main job: the three shipped patch priors side by side.

A 256x256 crop of scikit-image's camera photo (not in any training set) is corrupted with Gaussian
noise of --sigma / 255 and denoised with each prior loaded by name (patchreg.pretrained), all
trained on the training split of train400:
- EPLL: the GMM (K = 200, 6x6) by half-quadratic splitting (patchreg.priors.epll_restore);
- the chart prior: the chart mixture by half-quadratic splitting with projection onto the learned
  charts (patchreg.priors.charts_restore);
- PatchNR: the flow by Adam on the image (patchreg.reconstruct) with reduced settings so that the
  demo stays short (--patchnr-patches random patches per iteration, --patchnr-steps iterations; the
  paper's are 40k and 300): its row says so.
Writes PSNR, SSIM and time per prior to the report and a PNG strip (clean, noisy, each prior).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..data import bundled_image, to_tensor
from ..metrics import psnr, ssim
from ..physics import Denoising, GaussianNoise, simulate
from .demo import DEMO_STAGES



def _restorers(args, sigma, physics):
    from ..pretrained import resolve_checkpoint
    from ..priors import GMM, PatchCharts, PatchFlow, PatchNR, charts_restore, epll_restore
    from ..reconstruct import reconstruct

    def epll(y):
        gmm = GMM.load(resolve_checkpoint("pretrained:gmm"))
        return epll_restore(y, None, gmm, sigma), f"GMM K={gmm.n_components}, HQS"

    def charts(y):
        model = PatchCharts.load(resolve_checkpoint("pretrained:charts"))
        x = charts_restore(y, None, model, sigma, top_charts=2)
        return x, f"chart mixture K={model.n_charts} d={model.mixture.latent_dim}, HQS"

    def patchnr(y):
        flow = PatchFlow.load(resolve_checkpoint("pretrained:flow"))
        prior = PatchNR(flow, n_patches=args.patchnr_patches, seed=args.seed)
        # R is a mean over patches: lam = (number of patches) / d makes the objective EPLL's MAP energy
        H, W = y.shape[-2:]
        lam = (H - flow.patch_size + 1) * (W - flow.patch_size + 1) / flow.dim
        x, _ = reconstruct(y, physics, prior, lam, steps=args.patchnr_steps, lr=0.01,
                           clamp=(0.0, 1.0), progress=False)
        return x, f"flow, Adam, N_p={args.patchnr_patches}, {args.patchnr_steps} its (reduced)"

    return {"EPLL": epll, "chart prior": charts, "PatchNR": patchnr}


def priors_stage(args, report: dict) -> list[str]:
    out = Path(args.out)
    clean = to_tensor(bundled_image("camera"), dtype=torch.float32)[..., 128:384, 128:384]
    sigma = args.sigma / 255
    physics = Denoising(noise_model=GaussianNoise(sigma))
    y = simulate(clean, physics, seed=args.seed)
    rows, results, images = [], {}, [("clean", clean), (f"noisy {float(psnr(y, clean)[0]):.2f} dB", y)]
    for name, restore in _restorers(args, sigma, physics).items():
        t0 = time.perf_counter()
        x, how = restore(y)
        seconds = time.perf_counter() - t0
        value, similarity = float(psnr(x, clean)[0]), float(ssim(x, clean)[0])
        results[name] = {"psnr": value, "ssim": similarity, "seconds": seconds, "settings": how}
        rows.append(f"| {name} | {how} | {value:.2f} | {similarity:.3f} | {seconds:.1f} |")
        images.append((f"{name} {value:.2f} dB", x))
        print(f"  {name:12s} PSNR {value:.2f} dB  SSIM {similarity:.3f}  {seconds:.1f} s  ({how})")
    _save_strip(out / "priors_denoising.png", images)
    report["priors_denoising"] = {"image": "camera[128:384, 128:384]", "sigma_255": args.sigma,
                                  "psnr_noisy": float(psnr(y, clean)[0]), "priors": results}
    return [
        f"## Denoising with the three shipped priors (sigma = {args.sigma}/255)",
        "",
        "Image: 256x256 crop of scikit-image's camera photo; every prior trained on the training split of "
        "train400 and loaded by name (`pretrained:gmm`, `pretrained:charts`, `pretrained:flow`).",
        "",
        f"Noisy input: {float(psnr(y, clean)[0]):.2f} dB.",
        "",
        "| prior | settings | PSNR dB | SSIM | time s |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "![clean, noisy, EPLL, chart prior, PatchNR](priors_denoising.png)",
        "",
    ]


def _save_strip(path: Path, images) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(3 * len(images), 3.3))
    for ax, (title, img) in zip(axes, images):
        ax.imshow(img[0, 0].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


DEMO_STAGES.append(("three patch priors", priors_stage))
