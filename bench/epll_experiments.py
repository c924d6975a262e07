"""EPLL experiments: fit the K=200, 6x6 GMM on patches streamed from the bundled training photos,
then denoise the bundled test photos at sigma = 15, 25, 50 (/255) and report PSNR, SSIM, time and
peak memory; optionally side by side with DeepInverse's EPLL built on the same GMM weights.

Writes a markdown report (default bench/results/epll.md) with the exact command and the machine.
The GMM checkpoint is cached (--gmm) and training resumes from it when interrupted.

Example (the report in bench/results/epll.md):
  PATCHREG_BACKEND=extension .venv/bin/python bench/epll_experiments.py --seed 0
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import patchreg  # noqa: E402
from patchreg import _extension  # noqa: E402
from patchreg.data import PatchSampler, load_bundled  # noqa: E402
from patchreg.metrics import measure, psnr, ssim  # noqa: E402
from patchreg.ops import gmm as gmm_ops  # noqa: E402
from patchreg.priors import GMM, epll_restore  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0, help="seeds the patch stream, the GMM init and the noise")
    p.add_argument("--components", type=int, default=200)
    p.add_argument("--patch-size", type=int, default=6)
    p.add_argument("--patches-per-iter", type=int, default=1_000_000)
    p.add_argument("--iters", type=int, default=20, help="maximum EM iterations")
    p.add_argument("--batch-size", type=int, default=16384)
    p.add_argument("--gmm", default=str(ROOT / "bench" / "results" / "gmm_k200_p6.safetensors"),
                   help="GMM checkpoint: trained (or resumed) here when not complete")
    p.add_argument("--sigmas", default="15,25,50", help="noise levels on the 0-255 scale")
    p.add_argument("--crop", type=int, default=0, help="denoise the top-left crop of this size (0: whole images)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--gmm-library", default=os.environ.get("PATCHREG_GMM_LIBRARY"),
                   help="a separately built library with the GMM kernels to load")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "epll.md"))
    return p.parse_args(argv)


def train_gmm(args) -> tuple[GMM, float]:
    """Fit (or resume, or reuse) the GMM; returns it and the seconds spent fitting now."""
    path = Path(args.gmm)
    model = GMM(args.components, args.patch_size, remove_mean=True)
    if path.is_file():
        done = GMM.load(path)
        if done.hyperparameters.get("converged") or done.hyperparameters.get("iterations_done", 0) >= args.iters:
            return done, 0.0
    sampler = PatchSampler(load_bundled("train"), args.patch_size, args.batch_size, seed=args.seed)
    start = time.perf_counter()
    model.fit(sampler, n_iter=args.iters, patches_per_iter=args.patches_per_iter, batch_size=args.batch_size,
              seed=args.seed, checkpoint=path, resume=True)
    return model, time.perf_counter() - start


def test_images(crop: int):
    images, names = load_bundled("test", with_names=True)
    if crop:
        images = [im[:crop, :crop] for im in images]
    return [torch.from_numpy(np.ascontiguousarray(im)).float()[None, None] for im in images], names


def denoise_table(model: GMM, args) -> list[dict]:
    rows = []
    images, names = test_images(args.crop)
    for sigma255 in [float(s) for s in args.sigmas.split(",")]:
        sigma = sigma255 / 255
        for index, (clean, name) in enumerate(zip(images, names)):
            generator = torch.Generator().manual_seed(args.seed * 1000 + index)
            noisy = clean + sigma * torch.randn(clean.shape, generator=generator)
            with measure() as cost:
                estimate = epll_restore(noisy, None, model, sigma)
            rows.append({
                "image": f"{name} {clean.shape[-2]}x{clean.shape[-1]}", "sigma": sigma255,
                "psnr_noisy": float(psnr(noisy, clean)[0]), "psnr": float(psnr(estimate, clean)[0]),
                "ssim": float(ssim(estimate, clean)[0]), "seconds": cost.seconds, "peak_mb": cost.peak_megabytes,
            })
            print(rows[-1], flush=True)
    return rows


def write_report(args, model, fit_seconds, rows, argv) -> None:
    command = "PATCHREG_BACKEND=" + patchreg.get_backend() + " .venv/bin/python bench/epll_experiments.py " + shlex.join(argv)
    lines = [
        "# EPLL: GMM patch prior (K=%d, %dx%d, mean removed) and denoising" % (args.components, args.patch_size, args.patch_size),
        "",
        f"Command: `{command}`",
        "",
        f"Machine: 2-core CPU dev machine, no GPU ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; backend `{patchreg.get_backend()}`, "
        f"fused GMM kernels loaded: {gmm_ops.kernels_compiled()}, AVX2 loops: "
        f"{_extension.build_info().get('avx2')}. Load average at the start: {os.getloadavg()[0]:.2f}.",
        "",
        "## GMM",
        "",
        f"Fitted by streamed EM on the bundled training photos (`load_bundled('train')`), "
        f"{model.hyperparameters.get('patches_per_iter')} patches per iteration (the same patches every "
        f"iteration: rewound `PatchSampler`, seed {args.seed}), {len(model.history)} iterations, "
        f"covariance floor {model.hyperparameters.get('covariance_floor')}; fit time in this run "
        f"{fit_seconds:.0f} s (0 = reused the checkpoint `{args.gmm}`).",
        "",
        "Mean log-likelihood per patch by iteration: " + ", ".join(f"{v:.2f}" for v in model.history),
        "",
        "## Denoising (bundled test photos, Gaussian noise, default schedule beta = (1/sigma^2)[1,4,8,16,32])",
        "",
        "| image | sigma (/255) | PSNR noisy | PSNR EPLL | SSIM EPLL | time (s) | peak mem (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['image']} | {r['sigma']:.0f} | {r['psnr_noisy']:.2f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
            f"{r['seconds']:.2f} | {r['peak_mb']:.0f} |"
        )
    for sigma in sorted({r["sigma"] for r in rows}):
        sel = [r for r in rows if r["sigma"] == sigma]
        lines.append(f"| **mean** | {sigma:.0f} | {np.mean([r['psnr_noisy'] for r in sel]):.2f} | "
                     f"{np.mean([r['psnr'] for r in sel]):.2f} | {np.mean([r['ssim'] for r in sel]):.4f} | "
                     f"{np.mean([r['seconds'] for r in sel]):.2f} | |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    patchreg.io.atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gmm_library and not gmm_ops.kernels_compiled():
        torch.ops.load_library(args.gmm_library)
        gmm_ops._register()
    model, fit_seconds = train_gmm(args)
    rows = denoise_table(model, args)
    write_report(args, model, fit_seconds, rows, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
