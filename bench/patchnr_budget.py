"""What a cheaper PatchNR setting loses: PSNR against N_p (random patches per iteration) and iterations,
and (with --lam-scales, on --source validation) the weight lam = scale * n_image_patches / d.

The paper's setting (40k patches, 300 Adam iterations) costs ~20 s per iteration on this CPU for a
256x256 image. Here a center crop of a Set12 image is denoised (sigma 25/255, seeded) with
N_p in --patches and --steps iterations, lam = n_image_patches / d, and the PSNR is recorded every
--every iterations; the fraction N_p / n_image_patches is printed so the settings can be compared
with the paper's (40k patches of a 362x362 CT image: 31%).

    python bench/patchnr_budget.py --flow pretrained:flow --crop 128 --patches 500 2000 8000 --steps 300 \
        --out bench/results/patchnr_budget
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patchreg import physics  # noqa: E402
from patchreg.data import load_set12, load_train400, to_tensor  # noqa: E402
from patchreg.metrics import psnr  # noqa: E402
from patchreg.pretrained import resolve_checkpoint  # noqa: E402
from patchreg.priors import PatchFlow, PatchNR  # noqa: E402
from patchreg.reconstruct import reconstruct  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flow", default="pretrained:flow")
    ap.add_argument("--source", choices=("set12", "validation"), default="set12")
    ap.add_argument("--image", type=int, default=0)
    ap.add_argument("--lam-scales", type=float, nargs="+", default=[1.0])
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--patches", type=int, nargs="+", default=[500, 2000, 8000])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/patchnr_budget")
    args = ap.parse_args(argv)
    flow = PatchFlow.load(resolve_checkpoint(args.flow)).float()
    images = load_set12() if args.source == "set12" else load_train400("validation")
    image = to_tensor(images[args.image], torch.float32)
    H, W = image.shape[-2:]
    top, left = (H - args.crop) // 2, (W - args.crop) // 2
    clean = image[..., top: top + args.crop, left: left + args.crop].contiguous()
    sigma = 25 / 255
    y = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(args.seed))
    p = flow.patch_size
    n_image = (args.crop - p + 1) ** 2
    map_lam = n_image / flow.dim
    op = physics.Denoising(physics.GaussianNoise(sigma))
    rows = []
    for n, scale in itertools.product(args.patches, args.lam_scales):
        start = time.perf_counter()
        x, history = reconstruct(y, op, PatchNR(flow, n_patches=n, seed=args.seed), scale * map_lam, steps=args.steps,
                                 lr=0.01, clamp=(0.0, 1.0), reference=clean, progress=False)
        curve = history["psnr"][args.every - 1:: args.every]
        rows.append({"n_patches": n, "lam_scale": scale, "fraction": n / n_image, "psnr": float(psnr(x, clean)[0]),
                     "curve": curve, "seconds": time.perf_counter() - start})
        print(f"N_p {n} ({n / n_image:.0%}), lam x{scale:g}: {rows[-1]['psnr']:.2f} dB in {rows[-1]['seconds']:.0f} s",
              flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python bench/patchnr_budget.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    lines = ["# PatchNR: PSNR against the patch budget", "", f"Command: `{command}`", "",
             f"{args.source} image {args.image}, {args.crop}x{args.crop} center crop ({n_image} patches), sigma 25/255, "
             f"lam = scale * {map_lam:.0f} (n_patches / d), Adam lr 0.01, {args.steps} iterations; PSNR every "
             f"{args.every} iterations.", "",
             "| N_p | fraction of the patches | lam scale | final PSNR dB | time s | PSNR along the iterations |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n_patches']} | {r['fraction']:.0%} | {r['lam_scale']:g} | {r['psnr']:.2f} | {r['seconds']:.0f} | "
                     + " ".join(f"{v:.2f}" for v in r["curve"]) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
