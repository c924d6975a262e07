"""Our EPLL against DeepInverse 0.5's EPLL on the same GMM weights: PSNR, time and peak memory.

For the 256x256 top-left crop of every bundled test photo and sigma in --sigmas (/255), both
denoise the same noisy image. Time: ours and DeepInverse alternate within each case (ours is
timed --repeats times and the median kept; DeepInverse once, it takes ~30 s). Peak memory: one
case (camera, sigma 25) per method in a fresh process, the growth of the peak resident set
(VmHWM, reset through /proc/self/clear_refs) during the call.

DeepInverse gets our mean-removed GMM with a variance added along the constant patch (a flat
prior on the patch mean, see _deepinv_gmm). deepinv is a bench-only dependency:
    pip install --no-deps deepinv==0.5.0 torchvision==0.29.1 && pip install einops h5py natsort requests torchmetrics

    .venv/bin/python bench/epll_vs_deepinv.py --seed 0 [--out bench/results/epll_vs_deepinv.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from epll_experiments import test_images  # noqa: E402
from patchreg import _extension, io  # noqa: E402
from patchreg.metrics import psnr  # noqa: E402
from patchreg.priors import GMM, epll_restore  # noqa: E402

GMM_PATH = ROOT / "bench" / "results" / "gmm_k200_p6.safetensors"


# Our GMM models mean-removed patches (its covariances are singular along the constant patch);
# DeepInverse's EPLL models raw patches. Adding DC_VARIANCE along the unit constant direction u
# gives the equivalent raw-patch GMM: a nearly flat prior on the patch mean, which is what mean
# removal means. The component choice is unchanged (the u-term of log N(x; mu_k, Sigma_k + c u u^T
# + I/beta) is the same for every k when mu_k and Sigma_k have no u component) and the Wiener
# filter keeps the patch mean, as ours does.
DC_VARIANCE = 10.0


def _deepinv_gmm(model: GMM):
    """deepinv.optim.utils.GaussianMixtureModel holding our weights, means and covariances (+ DC variance)."""
    from deepinv.optim.utils import GaussianMixtureModel

    gmm = GaussianMixtureModel(model.n_components, model.dim, device="cpu")
    gmm.set_weights(model.weights.float())
    gmm.mu.data = model.means.float().clone()
    cov = model.covariances
    if model.remove_mean:
        u = torch.full((model.dim,), model.dim**-0.5, dtype=cov.dtype)
        cov = cov + DC_VARIANCE * torch.outer(u, u)
    gmm.set_cov(cov.float())
    return gmm


def noisy_image(clean: torch.Tensor, sigma: float, seed: int, index: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1000 + index)
    return clean + sigma * torch.randn(clean.shape, generator=generator)


def deepinv_restorer(gmm: GMM):
    import deepinv

    prior = deepinv.optim.EPLL(GMM=_deepinv_gmm(gmm), patch_size=gmm.patch_size, channels=1, pretrained=None)

    def run(noisy, sigma):
        physics = deepinv.physics.Denoising(deepinv.physics.GaussianNoise(sigma))
        with torch.no_grad():
            return prior(noisy, physics, sigma=sigma)
    return run


def ours_restorer(gmm: GMM):
    return lambda noisy, sigma: epll_restore(noisy, None, gmm, sigma)


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def memory_child(method: str, seed: int) -> None:
    """Runs in a fresh process: prints the peak-RSS growth (MB) of one restoration."""
    gmm = GMM.load(GMM_PATH)
    _extension.load()
    clean = test_images(256)[0][0]
    noisy = noisy_image(clean, 25 / 255, seed, 0)
    run = ours_restorer(gmm) if method == "ours" else deepinv_restorer(gmm)
    run(noisy[..., :32, :32], 25 / 255)  # first-call allocations (thread pools, MKL buffers) off the books

    def status_kb(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = status_kb("VmRSS")
    run(noisy, 25 / 255)
    print(json.dumps({"peak_growth_mb": (status_kb("VmHWM") - before) / 1024}))


def peak_memory(method: str, seed: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory-child", method, "--seed", str(seed)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_mb"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sigmas", default="15,25,50")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of ours per case (median)")
    p.add_argument("--memory-child", choices=["ours", "deepinv"], help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "epll_vs_deepinv.md"))
    args = p.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.seed)
        return 0
    gmm = GMM.load(GMM_PATH)
    _extension.load()
    ours, theirs = ours_restorer(gmm), deepinv_restorer(gmm)
    images, names = test_images(256)
    load_start = os.getloadavg()[0]
    rows = []
    for sigma255 in [float(s) for s in args.sigmas.split(",")]:
        sigma = sigma255 / 255
        for index, (clean, name) in enumerate(zip(images, names)):
            noisy = noisy_image(clean, sigma, args.seed, index)
            ours_times = []
            for _ in range(args.repeats):
                x_ours, t = timed(ours, noisy, sigma)
                ours_times.append(t)
            x_theirs, t_theirs = timed(theirs, noisy, sigma)
            x_cov = epll_restore(noisy, None, gmm, sigma, prior_weight="coverage")
            rows.append({
                "image": name, "sigma": sigma255, "psnr_noisy": float(psnr(noisy, clean)[0]),
                "psnr_ours": float(psnr(x_ours, clean)[0]), "psnr_coverage": float(psnr(x_cov, clean)[0]),
                "psnr_deepinv": float(psnr(x_theirs, clean)[0]),
                "seconds_ours": statistics.median(ours_times), "seconds_deepinv": t_theirs,
            })
            print(rows[-1], flush=True)
    mem_ours, mem_theirs = peak_memory("ours", args.seed), peak_memory("deepinv", args.seed)
    load_end = os.getloadavg()[0]
    speedups = [r["seconds_deepinv"] / r["seconds_ours"] for r in rows]
    gaps = [r["psnr_ours"] - r["psnr_deepinv"] for r in rows]
    lines = [
        "# EPLL: patchreg vs DeepInverse 0.5 (same GMM weights, CPU)",
        "",
        f"Command: `.venv/bin/python bench/epll_vs_deepinv.py {shlex.join(argv)}`",
        "",
        f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, AVX2 loops: {_extension.build_info().get('avx2')}; load average "
        f"{load_start:.2f} at the start, {load_end:.2f} at the end. GMM: `{GMM_PATH.name}` (K = {gmm.n_components}, "
        f"6x6, mean removed, {len(gmm.history)} EM iterations). Images: 256x256 top-left crops of the bundled "
        "test photos; both methods denoise the same noisy image with the default schedule "
        "beta = (1/sigma^2)[1, 4, 8, 16, 32]. 'ours (coverage)': our EPLL with Zoran & Weiss's coverage "
        "weighting of the x-step instead of the default uniform weighting.",
        "",
        "| image | sigma | PSNR noisy | PSNR ours | PSNR ours (coverage) | PSNR deepinv | time ours (s) | time deepinv (s) | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['image']} | {r['sigma']:.0f} | {r['psnr_noisy']:.2f} | {r['psnr_ours']:.2f} | {r['psnr_coverage']:.2f} | "
            f"{r['psnr_deepinv']:.2f} | {r['seconds_ours']:.2f} | {r['seconds_deepinv']:.2f} | "
            f"{r['seconds_deepinv'] / r['seconds_ours']:.1f}x |"
        )
    lines += [
        "",
        f"- Speed-up: median **{np.median(speedups):.1f}x** (range {min(speedups):.1f}x to {max(speedups):.1f}x; goal >= 20x).",
        f"- PSNR ours - deepinv: mean {np.mean(gaps):+.3f} dB (range {min(gaps):+.3f} to {max(gaps):+.3f}).",
        f"- Peak memory (camera, sigma 25, fresh process each): ours **{mem_ours:.0f} MB**, "
        f"deepinv {mem_theirs:.0f} MB (goal for ours: < 1 GB).",
    ]
    text = "\n".join(lines) + "\n"
    io.atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
