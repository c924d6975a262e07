"""EPLL denoising settings on the validation split of train400 (never the test images): the beta
schedule, the inner iterations and the data weight, for one or more GMMs (6x6 and 8x8 patches).

Zoran & Weiss's settings are betas = (1/sigma^2)[1, 4, 8, 16, 32], one z/x alternation per beta and
lam = d / sigma^2 (d the patch dimension); `patchreg.priors.epll_restore` uses them by default.
This asks whether our EPLL's gap to the published numbers comes from those settings or from the
GMM (patch size, training), by scoring variants of each on the same noisy validation images.

    python bench/epll_denoise_tuning.py --gmm pretrained:gmm FILE8.safetensors --images 10 \
        --out bench/results/epll_denoise_tuning
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patchreg.data import load_train400, to_tensor  # noqa: E402
from patchreg.metrics import psnr  # noqa: E402
from patchreg.physics import Denoising, GaussianNoise  # noqa: E402
from patchreg.pretrained import resolve_checkpoint  # noqa: E402
from patchreg.priors import GMM, epll_restore  # noqa: E402

# name -> (beta factors times 1/sigma^2, inner iterations, data-weight scale of d / sigma^2)
VARIANTS = {
    "zw5": ((1, 4, 8, 16, 32), 1, 1.0),  # Zoran & Weiss, the library default
    "zw6": ((1, 4, 8, 16, 32, 64), 1, 1.0),
    "zw5_inner2": ((1, 4, 8, 16, 32), 2, 1.0),
    "zw5_lam0.5": ((1, 4, 8, 16, 32), 1, 0.5),
    "zw5_lam2": ((1, 4, 8, 16, 32), 1, 2.0),
}


def noisy_images(n_images: int, sigma: float, seed: int):
    """(clean, y) pairs of the first n validation images, noise seeded per (sigma, image)."""
    images = load_train400("validation")[:n_images]
    pairs = []
    for i, im in enumerate(images):
        clean = to_tensor(im, torch.float32)
        g = torch.Generator().manual_seed(seed * 1000 + round(sigma * 255) * 100 + i)
        pairs.append((clean, clean + sigma * torch.randn(clean.shape, generator=g)))
    return pairs


def denoise(gmm: GMM, y: torch.Tensor, sigma: float, variant: str) -> torch.Tensor:
    factors, inner, lam_scale = VARIANTS[variant]
    op = Denoising(GaussianNoise(sigma))
    return epll_restore(y, op, gmm, sigma, betas=[f / sigma**2 for f in factors], inner_iters=inner,
                        lam=lam_scale * gmm.dim / sigma**2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gmm", nargs="+", default=["pretrained:gmm"], help="GMM checkpoints to compare")
    ap.add_argument("--sigmas", type=int, nargs="+", default=[15, 25, 50], help="noise std on the 8-bit scale")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--images", type=int, default=10, help="the first N validation images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/epll_denoise_tuning")
    args = ap.parse_args(argv)
    if not 1 <= args.images <= 40:
        raise SystemExit(f"--images must be in 1..40 (the validation split), got {args.images}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    store = out.with_suffix(".json")
    rows = json.loads(store.read_text())["rows"] if store.is_file() else []
    done = {(r["gmm"], r["sigma"], r["variant"], r["images"]) for r in rows}
    for spec in args.gmm:
        gmm = GMM.load(resolve_checkpoint(spec))
        for s in args.sigmas:
            pairs = noisy_images(args.images, s / 255, args.seed)
            for variant in args.variants:
                if (spec, s, variant, args.images) in done:
                    continue
                t0 = time.perf_counter()
                values = [float(psnr(denoise(gmm, y, s / 255, variant).clamp(0, 1), clean)[0]) for clean, y in pairs]
                rows.append(dict(gmm=spec, patch_size=gmm.patch_size, sigma=s, variant=variant, images=args.images,
                                 psnr=statistics.mean(values), per_image=values,
                                 seconds=(time.perf_counter() - t0) / len(pairs)))
                store.write_text(json.dumps({"rows": rows}, indent=1))  # resumable: written after every cell
                print(f"{spec} sigma {s} {variant:12s} {rows[-1]['psnr']:.3f} dB {rows[-1]['seconds']:.2f} s/image",
                      flush=True)
    write_report(out, rows, "python bench/epll_denoise_tuning.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


def write_report(out: Path, rows: list, command: str) -> None:
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    lines = ["# EPLL denoising settings on the validation split of train400", "",
             f"Command: `{command}`", "",
             f"Machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads (shared: "
             "times indicative). Mean PSNR (dB) over the first N validation images (180x180), noise seeded per image; "
             "the best variant per row in bold. Variants: " + "; ".join(
                 f"{v} = betas (1/sigma^2){list(f)}, {i} inner, lam {l:g} d/sigma^2"
                 for v, (f, i, l) in VARIANTS.items() if v in variants) + ".", "",
             "| GMM | p | sigma | images | " + " | ".join(variants) + " | s/image (zw5) |",
             "|---|---|---|---|" + "---|" * len(variants) + "---|"]
    keys = list(dict.fromkeys((r["gmm"], r["patch_size"], r["sigma"], r["images"]) for r in rows))
    for g, p, s, n in keys:
        cells = {r["variant"]: r for r in rows if (r["gmm"], r["patch_size"], r["sigma"], r["images"]) == (g, p, s, n)}
        best = max(cells.values(), key=lambda r: r["psnr"])["variant"]
        tail = f" | {cells['zw5']['seconds']:.2f} |" if "zw5" in cells else " | - |"
        lines.append(f"| {Path(g).name} | {p} | {s} | {n} | " + " | ".join(
            "-" if v not in cells else (f"**{cells[v]['psnr']:.2f}**" if v == best else f"{cells[v]['psnr']:.2f}")
            for v in variants) + tail)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
