"""Tune the chart prior's HQS denoiser on the validation split of train400 (never on the test images).

Grid: combine ("mean": responsibility-weighted average of the kept charts' estimates, "best": the
most responsible chart, as EPLL) x top_charts x the beta schedule's length x the tangent step's
latent variance scale (patchreg.priors.chart_prior.TANGENT_SCALE), at sigma = 15, 25, 50
(/255), on the first --images validation images (seeded noise). EPLL with --gmm on the same noisy
images for reference. The setting with the best mean PSNR over the sigmas is printed; it becomes the
default of patchreg.priors.charts_restore and the CLI.

    python bench/chart_prior_tuning.py --charts pretrained:charts --gmm pretrained:gmm --images 8 \
        --out bench/results/chart_prior_tuning.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patchreg.data import load_train400, to_tensor  # noqa: E402
from patchreg.metrics import psnr  # noqa: E402
from patchreg.pretrained import resolve_checkpoint  # noqa: E402
from patchreg.priors import GMM, PatchCharts, charts_restore, epll_restore  # noqa: E402
from patchreg.priors.epll import BETA_SCHEDULE  # noqa: E402

SCHEDULES = {"zoran5": BETA_SCHEDULE, "zoran6": BETA_SCHEDULE + (64.0,)}


def validation_images(count: int) -> list:
    """The first `count` validation images of train400 as float32 (1, 1, H, W) tensors."""
    return [to_tensor(im, torch.float32) for im in load_train400("validation")[:count]]


def seeded_noisy(images: list, sigma: float, seed: int) -> list:
    """Each image plus Gaussian noise of std sigma, from one generator seeded with `seed` (the same noise per sigma)."""
    gen = torch.Generator().manual_seed(seed)
    return [im + sigma * torch.randn(im.shape, generator=gen) for im in images]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--charts", default="pretrained:charts")
    ap.add_argument("--gmm", default="pretrained:gmm")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[15, 25, 50])
    ap.add_argument("--combine", nargs="+", default=["mean", "best"])
    ap.add_argument("--top", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--schedules", nargs="+", default=list(SCHEDULES))
    ap.add_argument("--tangent-scales", type=float, nargs="+", default=[3.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/chart_prior_tuning.md")
    args = ap.parse_args(argv)
    model = PatchCharts.load(resolve_checkpoint(args.charts))
    gmm = GMM.load(resolve_checkpoint(args.gmm)) if args.gmm else None
    images = validation_images(args.images)
    rows = []
    for sigma255 in args.sigmas:
        sigma = sigma255 / 255
        noisy = seeded_noisy(images, sigma, args.seed)
        if gmm is not None:
            start = time.perf_counter()
            vals = [float(psnr(epll_restore(y, None, gmm, sigma).clamp(0, 1), x)[0]) for y, x in zip(noisy, images)]
            rows.append(dict(sigma=sigma255, method="EPLL", psnr=statistics.mean(vals), seconds=time.perf_counter() - start))
            print(rows[-1], flush=True)
        for combine, top, schedule, tangent in itertools.product(args.combine, args.top, args.schedules,
                                                                  args.tangent_scales):
            betas = [b / sigma**2 for b in SCHEDULES[schedule]]
            start = time.perf_counter()
            vals = [float(psnr(charts_restore(y, None, model, sigma, betas=betas, top_charts=top, combine=combine,
                                              tangent_scale=tangent).clamp(0, 1), x)[0]) for y, x in zip(noisy, images)]
            rows.append(dict(sigma=sigma255, method=f"charts combine={combine} top={top} schedule={schedule} "
                             f"tangent={tangent:g}", combine=combine, top=top, schedule=schedule, tangent=tangent,
                             psnr=statistics.mean(vals), seconds=time.perf_counter() - start))
            print(rows[-1], flush=True)
    settings = sorted({r["method"] for r in rows if r["method"] != "EPLL"})
    score = {m: statistics.mean(r["psnr"] for r in rows if r["method"] == m) for m in settings}
    best = max(score, key=score.get)
    lines = ["# Chart prior HQS tuning on the validation split", "",
             f"Command: `python bench/chart_prior_tuning.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             f"Model: {args.charts} (K = {model.n_charts}, d = {model.mixture.latent_dim}); first {args.images} validation "
             f"images of train400, noise seed {args.seed}; mean PSNR (dB) and total time (s) per setting.", "",
             "| setting | " + " | ".join(f"sigma {s:g}" for s in args.sigmas) + " | mean |", "|---" * (len(args.sigmas) + 2) + "|"]
    for m in (["EPLL"] if gmm is not None else []) + settings:
        vals = [next(r for r in rows if r["method"] == m and r["sigma"] == s) for s in args.sigmas]
        lines.append(f"| {m} | " + " | ".join(f"{v['psnr']:.2f} ({v['seconds']:.0f} s)" for v in vals)
                     + f" | {statistics.mean(v['psnr'] for v in vals):.2f} |")
    lines += ["", f"Best chart setting by mean PSNR: **{best}** ({score[best]:.2f} dB).", ""]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
