"""What PatchNR's bfloat16 path costs in PSNR: denoising on train400 validation images, float32 against bfloat16.

For each of the first --images validation images of train400 (180x180, never trained on), Gaussian noise
sigma --sigma/255 seeded as bench/priors_table.py (seed --seed + index), PatchNR by Adam at the paper's
denoising schedule (task_defaults: 300 iterations, lr 0.01, lam = 0.3 * n_image_patches / d, clamp to
[0, 1]) with N_p = --patches random patches per iteration (the paper's 40k reduced for this CPU), the same
patch seed, twice: `PatchNR(precision="float32")` and `PatchNR(precision="bfloat16")`. With
--control-seed S a third run, float32 with patch seed S, measures how much the PSNR moves from the
random patches alone: the scale against which the bfloat16 difference is judged. Runs alternate per image.

    python bench/patchnr_bf16_psnr.py --threads 1 --images 3 --patches 3000 --control-seed 1 \
        --out bench/results/patchnr_bf16_psnr
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from priors_table import make_problem  # noqa: E402

from patchreg.data import load_train400, to_tensor  # noqa: E402
from patchreg.metrics import psnr, ssim  # noqa: E402
from patchreg.pretrained import resolve_checkpoint  # noqa: E402
from patchreg.priors import PatchFlow, PatchNR  # noqa: E402
from patchreg.priors.flow_lowp import bf16_matmul_is_fast  # noqa: E402
from patchreg.priors.task_defaults import patchnr_settings  # noqa: E402
from patchreg.reconstruct import reconstruct  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flow", default="pretrained:flow")
    ap.add_argument("--images", type=int, default=3, help="the first N train400 validation images")
    ap.add_argument("--sigma", type=float, default=25.0, help="noise std in 8-bit levels")
    ap.add_argument("--patches", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=None, help="default: the paper's (task_defaults, 300)")
    ap.add_argument("--control-seed", type=int, default=None, help="also float32 with this patch seed")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/patchnr_bf16_psnr")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    flow = PatchFlow.load(resolve_checkpoint(args.flow)).float()
    steps, lr, scale = patchnr_settings("denoise")
    steps = steps if args.steps is None else args.steps
    task = f"denoise{args.sigma:g}"
    images, names = load_train400("validation", with_names=True)
    runs = [("float32", "float32", args.seed), ("bfloat16", "bfloat16", args.seed)]
    if args.control_seed is not None:
        runs.append((f"float32, patch seed {args.control_seed}", "float32", args.control_seed))
    rows = []
    for j in range(args.images):
        clean = to_tensor(images[j])
        op, y, _ = make_problem(task, clean, args.seed + j)
        y = y.float()
        H, W = y.shape[-2:]
        lam = scale * (H - flow.patch_size + 1) * (W - flow.patch_size + 1) / flow.dim
        row = {"image": names[j], "noise_seed": args.seed + j, "lam": lam}
        for label, precision, patch_seed in runs:
            prior = PatchNR(flow, n_patches=args.patches, seed=patch_seed, precision=precision)
            start = time.perf_counter()
            x, _ = reconstruct(y, op, prior, lam, steps=steps, lr=lr, clamp=(0.0, 1.0), progress=False)
            seconds = time.perf_counter() - start
            x = x.detach().double().clamp(0, 1)
            row[label] = {"psnr": float(psnr(x, clean)[0]), "ssim": float(ssim(x, clean)[0]), "seconds": seconds}
            print(f"{names[j]} {label}: {row[label]['psnr']:.3f} dB, {seconds:.1f} s", flush=True)
        rows.append(row)

    labels = [r[0] for r in runs]
    diffs = [r["bfloat16"]["psnr"] - r["float32"]["psnr"] for r in rows]
    summary = {"mean_psnr": {lab: statistics.mean(r[lab]["psnr"] for r in rows) for lab in labels},
               "mean_seconds": {lab: statistics.mean(r[lab]["seconds"] for r in rows) for lab in labels},
               "bf16_minus_fp32_db": diffs}
    if args.control_seed is not None:
        control = labels[2]
        summary["control_minus_fp32_db"] = [r[control]["psnr"] - r["float32"]["psnr"] for r in rows]
    command = "python bench/patchnr_bf16_psnr.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"command": command, "task": task, "patches": args.patches, "steps": steps, "lr": lr,
              "lam_scale": scale, "rows": rows, "summary": summary, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "bf16_native": bf16_matmul_is_fast()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))

    lines = ["# PatchNR denoising: float32 against bfloat16 (same seeds)", "", f"Command: `{command}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads), native bfloat16 matmuls: {bf16_matmul_is_fast()}. "
             f"Task: {task} on the first {args.images} train400 validation images (180x180), N_p = {args.patches} "
             f"random patches per iteration (the paper: 40,000), {steps} Adam iterations, lr {lr}, "
             f"lam = {scale} * n_image_patches / d.", "",
             "| image | " + " | ".join(f"{lab} PSNR dB" for lab in labels) + " | bf16 - fp32 dB"
             + (" | control - fp32 dB" if len(labels) > 2 else "") + " | " + " | ".join(f"{lab} s" for lab in labels) + " |",
             "|---" * (1 + 2 * len(labels) + (2 if len(labels) > 2 else 1)) + "|"]
    for r, dlt in zip(rows, diffs):
        cells = [f"{r[lab]['psnr']:.3f}" for lab in labels] + [f"{dlt:+.3f}"]
        if len(labels) > 2:
            cells.append(f"{r[labels[2]]['psnr'] - r['float32']['psnr']:+.3f}")
        cells += [f"{r[lab]['seconds']:.0f}" for lab in labels]
        lines.append(f"| {r['image']} | " + " | ".join(cells) + " |")
    mean_cells = [f"{summary['mean_psnr'][lab]:.3f}" for lab in labels] + [f"{statistics.mean(diffs):+.3f}"]
    if len(labels) > 2:
        mean_cells.append(f"{statistics.mean(summary['control_minus_fp32_db']):+.3f}")
    mean_cells += [f"{summary['mean_seconds'][lab]:.0f}" for lab in labels]
    lines.append("| mean | " + " | ".join(mean_cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
