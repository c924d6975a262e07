"""What the charts add to denoising: the chart prior's HQS z-step against EPLL with the chart model's own Gaussians.

Every chart model carries a selector: one Gaussian per chart (the mean and covariance of the patches the
chart is responsible for), scaled to each kept (chart, scale) pair. `PatchCharts.selector_gmm()` turns
it into an EPLL GMM with one component per pair. Denoising with that GMM (EPLL's Wiener z-step) against
the chart prior's z-step (the same clusters, but the nonlinear charts: tangent Gauss-Newton step plus the
Wiener-shrunk off-manifold part; or the projection D(E(c)) alone) isolates what the nonlinear charts
contribute; EPLL with the shipped K = 200 GMM is the reference. Validation images of train400 only, seeded
noise, HQS with Zoran & Weiss's schedule for every row.

    python bench/chart_zstep_ablation.py --charts pretrained:charts --images 4 --sigmas 25 \
        --out bench/results/chart_zstep_ablation.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.chart_prior_tuning import seeded_noisy, validation_images  # noqa: E402
from patchreg import io  # noqa: E402
from patchreg.metrics import psnr  # noqa: E402
from patchreg.pretrained import resolve_checkpoint  # noqa: E402
from patchreg.priors import GMM, PatchCharts, charts_restore, epll_restore  # noqa: E402
from patchreg.priors.chart_prior import is_fusable  # noqa: E402


def contenders(label: str, model: PatchCharts, top: int):
    """(row name, restore(y, sigma)) for one chart model."""
    family = "fif" if is_fusable(model) else "vae/other"
    tag = f"{label} ({family}, K {model.n_charts}, d {model.mixture.latent_dim})"
    selector = model.selector_gmm()
    return [
        (f"{tag}: chart HQS (tangent step + Wiener off-manifold), top {top}",
         lambda y, s: charts_restore(y, None, model, s, top_charts=top)),
        (f"{tag}: chart HQS, projection D(E(c)) + Wiener off-manifold, top {top}",
         lambda y, s: charts_restore_projection(y, model, s, top)),
        (f"{tag}: EPLL with the model's selector Gaussians ({selector.n_components} pairs)",
         lambda y, s: epll_restore(y, None, selector, s)),
    ]


def charts_restore_projection(y, model, sigma, top):
    """charts_restore without the tangent step (the projection alone): HQS with tangent_step=False."""
    from patchreg.priors.chart_prior import chart_denoise_patches
    from patchreg.priors.hqs import default_betas, half_quadratic_splitting

    def denoise(patches, beta):
        return chart_denoise_patches(model, patches, 1.0 / beta, top, "mean", tangent_step=False)

    return half_quadratic_splitting(y, None, denoise, model.patch_size, model.channels, default_betas(sigma),
                                    model.dim / sigma**2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--charts", nargs="+", default=["pretrained:charts"], help="chart checkpoints (pretrained:NAME or files)")
    ap.add_argument("--gmm", default="pretrained:gmm")
    ap.add_argument("--images", type=int, default=4, help="first N validation images of train400")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[25.0], help="noise std on the 0-255 scale")
    ap.add_argument("--top", type=int, default=1, help="(chart, scale) pairs per patch in the chart z-step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/chart_zstep_ablation.md")
    args = ap.parse_args(argv)
    if args.images < 1 or args.top < 1 or any(not s > 0 for s in args.sigmas):
        ap.error("--images and --top must be >= 1 and every sigma > 0")
    torch.set_num_threads(1)
    models = [(name, PatchCharts.load(resolve_checkpoint(name))) for name in args.charts]
    gmm = GMM.load(resolve_checkpoint(args.gmm))
    rows = [(f"EPLL, {args.gmm} (K {gmm.n_components})", lambda y, s: epll_restore(y, None, gmm, s))]
    for name, model in models:
        rows += contenders(name, model, args.top)
    images = validation_images(args.images)
    results = []
    for sigma255 in args.sigmas:
        sigma = sigma255 / 255
        noisy = seeded_noisy(images, sigma, args.seed)
        for method, restore in rows:
            start = time.perf_counter()
            vals = [float(psnr(restore(y, sigma).clamp(0, 1), x)[0]) for y, x in zip(noisy, images)]
            results.append(dict(sigma=sigma255, method=method, psnr=vals, mean=statistics.mean(vals),
                                seconds=time.perf_counter() - start))
            print(f"sigma {sigma255:g} | {method} | {statistics.mean(vals):.3f} dB | "
                  f"{results[-1]['seconds']:.0f} s", flush=True)
    lines = ["# What the charts add to denoising: chart z-step vs EPLL with the model's own Gaussians", "",
             f"Command: `python bench/chart_zstep_ablation.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
             "", f"First {args.images} validation images of train400, noise seed {args.seed}, HQS with Zoran & "
             "Weiss's beta schedule for every row, 1 torch thread. Mean PSNR (dB), per-image PSNR, total time.", "",
             "| sigma | method | mean PSNR | per image | time s |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['sigma']:g} | {r['method']} | {r['mean']:.2f} | "
                     f"{', '.join(f'{v:.2f}' for v in r['psnr'])} | {r['seconds']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    io.atomic_write_text(out, text)
    io.atomic_write_json(out.with_suffix(".json"), results)


if __name__ == "__main__":
    main()
