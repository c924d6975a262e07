"""Chart prior denoising in float32 against bfloat16 (ChartPrior(precision=...)), same images, noise and solver.

The regularizer R(x) = mean_i -log p(P_i x) (all patches, top charts per patch) minimised with the data term by
L-BFGS, as `bench/priors_table.py --priors charts_lbfgs` (lam = n_image_patches / d), on the first N train400
validation images at sigma 25. Only the chart kernel's precision changes between the two runs: in bfloat16 its
decoder tangent GEMMs run as AMX bfloat16 tile products (patchreg.ops.charts_log_prob_fused). --control adds a
float32 run on the kernel's AVX2 loops (PATCHREG_DISABLE_AVX512=1: float32 again, only the order of the sums and
so the last-bit rounding differ), which shows how far rounding alone moves L-BFGS's result.

    python bench/chart_prior_bf16_psnr.py --images 3 --out bench/results/chart_prior_bf16_psnr
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
from patchreg.ops.charts import charts_bf16_supported  # noqa: E402
from patchreg.pretrained import resolve_checkpoint  # noqa: E402
from patchreg.priors import ChartPrior, PatchCharts  # noqa: E402
from patchreg.reconstruct import reconstruct  # noqa: E402

PRECISIONS = ("float32", "bfloat16")
CONTROL = "float32, AVX2 loops"


def _avx2_loops(on: bool):
    if on:
        os.environ["PATCHREG_DISABLE_AVX512"] = "1"
    else:
        os.environ.pop("PATCHREG_DISABLE_AVX512", None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--charts", default="pretrained:charts")
    ap.add_argument("--images", type=int, default=3, help="the first N train400 validation images")
    ap.add_argument("--sigma", type=float, default=25.0, help="noise std in 8-bit levels")
    ap.add_argument("--top", type=int, default=4, help="(chart, scale) pairs kept per patch")
    ap.add_argument("--steps", type=int, default=100, help="L-BFGS iterations")
    ap.add_argument("--control", action="store_true", help="also float32 on the AVX2 loops (rounding only)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/chart_prior_bf16_psnr")
    args = ap.parse_args(argv)
    if args.images < 1 or args.steps < 1 or args.top < 1:
        raise SystemExit("--images, --steps and --top must be >= 1")
    if not charts_bf16_supported():
        raise SystemExit("this CPU or build has no bfloat16 chart kernel (patchreg.ops.charts_bf16_supported())")
    if args.threads:
        torch.set_num_threads(args.threads)

    model = PatchCharts.load(resolve_checkpoint(args.charts))
    task = f"denoise{args.sigma:g}"
    images, names = load_train400("validation", with_names=True)
    labels = list(PRECISIONS) + ([CONTROL] if args.control else [])
    rows = []
    for j in range(args.images):
        clean = to_tensor(images[j])
        op, y, _ = make_problem(task, clean, args.seed + j)
        y = y.float()
        H, W = y.shape[-2:]
        lam = (H - model.patch_size + 1) * (W - model.patch_size + 1) / model.dim
        row = {"image": names[j], "noise_seed": args.seed + j, "lam": lam}
        for label in labels:
            precision = "float32" if label == CONTROL else label
            prior = ChartPrior(model, top_charts=args.top, precision=precision)
            _avx2_loops(label == CONTROL)
            start = time.perf_counter()
            x, _ = reconstruct(y, op, prior, lam, x0=y, solver="lbfgs", steps=args.steps, progress=False)
            seconds = time.perf_counter() - start
            _avx2_loops(False)
            x = x.detach().double().clamp(0, 1)
            row[label] = {"psnr": float(psnr(x, clean)[0]), "ssim": float(ssim(x, clean)[0]), "seconds": seconds}
            print(f"{names[j]} {label}: {row[label]['psnr']:.3f} dB, {seconds:.1f} s", flush=True)
        rows.append(row)

    diffs = [r["bfloat16"]["psnr"] - r["float32"]["psnr"] for r in rows]
    summary = {"mean_psnr": {p: statistics.mean(r[p]["psnr"] for r in rows) for p in labels},
               "mean_seconds": {p: statistics.mean(r[p]["seconds"] for r in rows) for p in labels},
               "bf16_minus_fp32_db": diffs}
    if args.control:
        summary["control_minus_fp32_db"] = [r[CONTROL]["psnr"] - r["float32"]["psnr"] for r in rows]
    command = "python bench/chart_prior_bf16_psnr.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "task": task, "top": args.top, "steps": args.steps, "rows": rows, "summary": summary,
         "torch": torch.__version__, "threads": torch.get_num_threads()}, indent=1))
    lines = ["# Chart prior denoising (L-BFGS on R): float32 against bfloat16 (same images and noise)", "",
             f"Command: `{command}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads). Task: {task} on the first {args.images} train400 validation images; "
             f"all patches, top {args.top} pairs per patch, {args.steps} L-BFGS iterations, lam = n_image_patches / d.", "",
             "| image | " + " | ".join(f"{lab} PSNR dB" for lab in labels) + " | bf16 - fp32 dB"
             + (" | AVX2 control - fp32 dB" if args.control else "") + " | " + " | ".join(f"{lab} s" for lab in labels)
             + " |", "|---" * (2 + 2 * len(labels) + (1 if args.control else 0)) + "|"]

    def line(first, psnrs, deltas, seconds):
        return (f"| {first} | " + " | ".join(f"{v:.3f}" for v in psnrs) + " | " + " | ".join(f"{v:+.4f}" for v in deltas)
                + " | " + " | ".join(f"{v:.0f}" for v in seconds) + " |")

    for r in rows:
        deltas = [r["bfloat16"]["psnr"] - r["float32"]["psnr"]]
        if args.control:
            deltas.append(r[CONTROL]["psnr"] - r["float32"]["psnr"])
        lines.append(line(r["image"], [r[lab]["psnr"] for lab in labels], deltas, [r[lab]["seconds"] for lab in labels]))
    mean_deltas = [statistics.mean(diffs)] + ([statistics.mean(summary["control_minus_fp32_db"])] if args.control else [])
    lines.append(line("mean", [summary["mean_psnr"][lab] for lab in labels], mean_deltas,
                      [summary["mean_seconds"][lab] for lab in labels]))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
