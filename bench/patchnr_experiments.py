"""PatchNR experiments: train the patch flow on the bundled train images, then reconstruct.

1. Training throughput: a timed run of the paper's flow (6x6, 5 blocks, 512 hidden, batch 32,
   Adam lr 1e-4) on patches of the bundled train split; then, with --train-steps N, training
   (resumed) of the checkpoint up to N steps. The checkpoint (~35 MB) lives in out/ (git-ignored);
   regenerate it with
       PATCHREG_BACKEND=reference .venv/bin/python -m patchreg train flow --images bundled \
           --patch-size 6 --steps N --batch-size 32 --lr 1e-4 --seed 0 --out out/patchnr_flow.safetensors
2. Reconstruction with PatchNR (patchreg.reconstruct, Adam on the image, a fresh draw of N_p
   patches per iteration) for denoising (sigma 25/255) and x4 super-resolution (Gaussian blur
   std 2 px, stride 4, noise 0.01, bicubic start) of a centre crop of a test image. lam is
   chosen from a small grid on a validation crop only (never on the test image).

Writes bench/results/patchnr.md with the command, the machine and every number.

    PATCHREG_BACKEND=reference .venv/bin/python bench/patchnr_experiments.py --seed 0
"""

from __future__ import annotations

import argparse
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patchreg import io, physics  # noqa: E402
from patchreg.data import PatchSampler, load_bundled  # noqa: E402
from patchreg.metrics import psnr, ssim  # noqa: E402
from patchreg.priors.flow import PatchFlow  # noqa: E402
from patchreg.priors.patchnr import PatchNR  # noqa: E402
from patchreg.reconstruct import reconstruct  # noqa: E402

PAPER_STEPS, PAPER_BATCH = 750_000, 32
PATCH = 6


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=str(ROOT / "out" / "patchnr_flow.safetensors"))
    p.add_argument("--train-steps", type=int, default=None,
                   help="train (resuming the checkpoint) up to this many steps before reconstructing")
    p.add_argument("--training-log", default=None,
                   help="stderr of the `patchreg train flow` run that made the checkpoint (its tqdm bar gives the wall time)")
    p.add_argument("--throughput-steps", type=int, default=40, help="steps of the timed training run")
    p.add_argument("--test-image", type=int, default=0, help="index into load_bundled('test') (0: camera)")
    p.add_argument("--crop", type=int, default=128, help="side of the centre crop reconstructed (multiple of 4)")
    p.add_argument("--n-patches", type=int, default=4000, help="N_p per iteration (paper: 40k-130k)")
    p.add_argument("--steps", type=int, default=150, help="Adam iterations on the test image (paper: 300)")
    p.add_argument("--val-steps", type=int, default=50, help="Adam iterations per lam on the validation crop")
    p.add_argument("--val-image", type=int, default=0, help="index into load_bundled('validation')")
    p.add_argument("--lam-factors", type=float, nargs="+", default=[0.25, 1.0, 4.0],
                   help="lam grid as multiples of (pixels / p^2) (see results for why)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "patchnr.md"))
    return p.parse_args(argv)


# --- training -------------------------------------------------------------------------------------


def train_sampler(seed: int) -> PatchSampler:
    return PatchSampler(load_bundled("train"), PATCH, PAPER_BATCH, seed=seed)


def measure_throughput(steps: int, seed: int) -> float:
    """Steps per second of the paper's flow and batch (a fresh flow, nothing saved)."""
    flow = PatchFlow(patch_size=PATCH, seed=seed)
    sampler = train_sampler(seed)
    flow.fit(sampler, 3, progress=False)  # warm-up (allocations, first-call overheads)
    start = time.perf_counter()
    flow.fit(sampler, steps, progress=False)
    return steps / (time.perf_counter() - start)


def wall_time_from_log(path) -> tuple[int, float] | None:
    """(steps, seconds) of the last tqdm update 'N/T [h:mm:ss<' or 'N/T [mm:ss<' in a training log."""
    text = Path(path).read_text(errors="replace")
    matches = re.findall(r"(\d+)/\d+ \[(?:(\d+):)?(\d+):(\d+)<", text)
    if not matches:
        return None
    steps, hours, minutes, secs = matches[-1]
    return int(steps), 3600 * int(hours or 0) + 60 * int(minutes) + int(secs)


def held_out_nll(flow: PatchFlow, seed: int) -> dict[str, float]:
    """Mean NLL per patch (nats) on 20k patches of the validation and test splits."""
    out = {}
    for split in ("validation", "test"):
        patches = PatchSampler(load_bundled(split), PATCH, 1, seed=seed + 1).sample(20_000)
        with torch.no_grad():
            out[split] = float(-flow.log_prob(patches).mean())
    return out


# --- reconstruction -------------------------------------------------------------------------------


def centre_crop(image: np.ndarray, size: int) -> torch.Tensor:
    H, W = image.shape
    top, left = (H - size) // 2, (W - size) // 2
    crop = image[top : top + size, left : left + size]
    return torch.from_numpy(np.ascontiguousarray(crop)).float()[None, None]


def problems():
    """(name, physics, Adam lr, start-image description) of the two tasks."""
    return [
        ("denoise sigma 25/255", physics.Denoising(noise_model=physics.GaussianNoise(25 / 255)), 0.01, "noisy y"),
        ("x4 SR (blur std 2, noise 0.01)",
         physics.SuperResolution(4, kernel_std=2.0, noise_model=physics.GaussianNoise(0.01)), 0.03, "bicubic"),
    ]


def solve(clean, op, flow, lam, steps, lr, n_patches, seed):
    y = physics.simulate(clean, op, seed=seed)
    prior = PatchNR(flow, n_patches=n_patches, seed=seed) if lam > 0 else None  # lam 0: no flow evaluations
    start_image = op.initial_guess(y)
    x, history = reconstruct(y, op, prior, lam, steps=steps, lr=lr, clamp=(0.0, 1.0), progress=False)
    return {
        "psnr": float(psnr(x, clean)[0]), "ssim": float(ssim(x, clean)[0]),
        "start_psnr": float(psnr(start_image.clamp(0, 1), clean)[0]),
        "start_ssim": float(ssim(start_image.clamp(0, 1), clean)[0]),
        "seconds": history["seconds"],
    }


def base_lam(image: torch.Tensor) -> float:
    """Number of pixels per patch area: lam of this size balances the mean patch NLL against the
    Gaussian data term ||Ax - y||^2 / (2 sigma^2) summed over all pixels (each pixel lies in p^2
    patches, so the mean over patches weighted by L / p^2 ~ the sum over patches / p^2)."""
    return image.shape[-2] * image.shape[-1] / PATCH**2


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "PATCHREG_BACKEND=reference .venv/bin/python bench/patchnr_experiments.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    lines = [
        "# PatchNR: flow training and reconstruction",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: 2-core CPU dev machine, no GPU ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, {args.threads} torch thread(s). Other jobs shared the 2 cores "
        "during this run, so all timings are pessimistic and noisy.",
        "",
    ]

    print("timing the paper's training step ...", flush=True)
    rate = measure_throughput(args.throughput_steps, args.seed)
    lines += [
        "## Training",
        "",
        f"- Throughput, paper configuration (6x6, 5 blocks, 512 hidden, batch 32, Adam 1e-4): "
        f"**{rate:.1f} steps/s** ({args.throughput_steps} timed steps).",
        f"- The paper trains {PAPER_STEPS:,} steps x {PAPER_BATCH} patches: "
        f"{PAPER_STEPS / rate / 3600:.0f} h at this rate.",
    ]
    if args.train_steps is not None:
        flow = PatchFlow(patch_size=PATCH, seed=args.seed)
        flow.fit(train_sampler(args.seed), args.train_steps, checkpoint=args.checkpoint, resume=True)
    flow = PatchFlow.load(args.checkpoint, patch_size=PATCH)
    training = io.load_checkpoint(args.checkpoint, "flow")[1].get("training", {})
    step = int(training.get("step", 0))
    seconds = training.get("seconds")
    history = training.get("history", [])
    lines += [
        f"- Checkpoint used: `{Path(args.checkpoint).name}` trained **{step:,} steps** "
        f"({step / PAPER_STEPS:.1%} of the paper's steps, {step * PAPER_BATCH:,} patches)"
        + (f", {seconds / 60:.0f} min of training" if seconds else "") + ".",
        f"- Regenerate: `PATCHREG_BACKEND=reference .venv/bin/python -m patchreg train flow --images bundled "
        f"--patch-size 6 --steps {step} --batch-size 32 --lr 1e-4 --seed {args.seed} "
        f"--out out/patchnr_flow.safetensors` (add `--resume` to continue it).",
    ]
    if args.training_log:
        logged = wall_time_from_log(args.training_log)
        if logged:
            lines.append(f"- The run that made it (`{Path(args.training_log).name}`): {logged[0]:,} steps in "
                         f"{logged[1] / 60:.1f} min of wall time, {logged[0] / logged[1]:.2f} steps/s on average "
                         "(1 torch thread, sharing the cores with other jobs); stopped by hand, the checkpoint "
                         "holds the last multiple of 1000 steps.")
    if history:
        marks = [h for h in history if h[0] in (100, 1000, 5000) or h[0] % 10_000 == 0] + [history[-1]]
        seen, rows = set(), []
        for s, v in marks:
            if s not in seen:
                seen.add(s)
                rows.append(f"{s:,}: {v:.2f}")
        lines.append("- Training NLL per patch (nats, mean over the preceding 100 steps): " + "; ".join(rows) + ".")
    nll = held_out_nll(flow, args.seed)
    lines += [
        f"- Held-out NLL per patch (nats, 20k random 6x6 patches): validation {nll['validation']:.2f}, "
        f"test {nll['test']:.2f}.",
        "",
    ]

    for p in flow.parameters():
        p.requires_grad_(False)
    val = centre_crop(load_bundled("validation")[args.val_image], args.crop)
    test_image = load_bundled("test")[args.test_image]
    test = centre_crop(test_image, args.crop)
    lam0 = base_lam(test)
    lines += [
        "## Reconstruction",
        "",
        f"Test: centre {args.crop}x{args.crop} crop of bundled test image #{args.test_image}; lam tuned on the "
        f"centre crop of validation image #{args.val_image} over lam = f x (pixels / 36), f in {args.lam_factors} "
        f"({args.val_steps} Adam iterations each). Data term ||Ax - y||^2 / (2 sigma^2) "
        f"(patchreg.physics.GaussianNoise.nll); regularizer the mean NLL of N_p = {args.n_patches} random 6x6 patches, "
        f"redrawn every iteration; Adam, {args.steps} iterations, pixels clamped to [0, 1]. "
        "Reduced from the paper (N_p 130k, 300 iterations) to fit the CPU time.",
        "",
        "| task | lam (f) | start PSNR / SSIM | no prior (lam 0, same Adam) | PatchNR PSNR / SSIM | time (s) | validation PSNR per f |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, op, lr, start_name in problems():
        print(f"tuning lam for {name} ...", flush=True)
        val_scores = {}
        for f in args.lam_factors:
            r = solve(val, op, flow, f * base_lam(val), args.val_steps, lr, args.n_patches, args.seed)
            val_scores[f] = r["psnr"]
            print(f"  f={f}: validation PSNR {r['psnr']:.2f}", flush=True)
        best = max(val_scores, key=val_scores.get)
        print(f"reconstructing the test crop ({name}, f={best}) ...", flush=True)
        r = solve(test, op, flow, best * lam0, args.steps, lr, args.n_patches, args.seed)
        plain = solve(test, op, flow, 0.0, args.steps, lr, args.n_patches, args.seed)
        per_f = ", ".join(f"{f}: {v:.2f}" for f, v in val_scores.items())
        lines.append(
            f"| {name} | {best * lam0:.0f} ({best}) | {start_name}: {r['start_psnr']:.2f} / {r['start_ssim']:.3f} | "
            f"{plain['psnr']:.2f} / {plain['ssim']:.3f} | "
            f"**{r['psnr']:.2f} / {r['ssim']:.3f}** | {r['seconds']:.0f} | {per_f} |"
        )
        print(lines[-1], flush=True)

    lines += [
        "",
        "Notes: the flow is far from the paper's training budget, and N_p and the iteration count are "
        "reduced, so these numbers are a lower bound on what the method reaches, not a reproduction "
        "of the paper's results. The per-iteration cost is the flow's forward and backward pass on "
        "N_p patches (2.9M weights: about 6 MFLOP per patch forward, twice that with the backward pass).",
        "",
    ]
    out = Path(args.out)
    io.atomic_write_text(out, "\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
