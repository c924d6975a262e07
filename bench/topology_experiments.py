"""Topology experiments: real van Hateren cores, synthetic models over seeds, natural images p = 3..8.

1. real: recompute X(300, 30) and X(15, 30) from n50000Dct.mat (all 50k points, cKDTree), compare
   with the published cores (shared rows, Hausdorff distance) and read b1 by persistent homology
   and by the chart nerve (K auto).
2. models: every synthetic model for several seeds and patch sizes, named by both methods.
3. images: the bundled photos (all splits) for p = 3..8 and several (k, q): barcodes, verdicts,
   Klein-square chart graphs and representative patches.

Writes bench/results/topology.md and figures under bench/results/topology/.
Example (the report in bench/results/topology.md):
  PATCHREG_BACKEND=reference .venv/bin/python bench/topology_experiments.py --seed 0
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patchreg.io import atomic_write_text  # noqa: E402
from patchreg.topology.density import density_core  # noqa: E402
from patchreg.topology.models import MODELS, sample_model  # noqa: E402
from patchreg.topology.persistence import plot_barcodes  # noqa: E402
from patchreg.topology.pipeline import analyse_points, homology_from_charts, homology_from_persistence  # noqa: E402
from patchreg.topology.preprocessing import images_to_sphere, load_points  # noqa: E402
from patchreg.topology.report import plot_chart_patches, plot_klein_square  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "carlsson"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parts", default="real,models,images")
    p.add_argument("--seeds", type=int, default=5, help="seeds per synthetic model")
    p.add_argument("--model-points", type=int, default=3000)
    p.add_argument("--landmarks", type=int, default=150)
    p.add_argument("--patch-sizes", default="3,4,5,6,7,8")
    p.add_argument("--cores", default="300,30;100,30;15,30")
    p.add_argument("--patches-per-image", type=int, default=3000)
    p.add_argument("--cover", default="pca", choices=["pca", "learned"],
                   help="images part: local-PCA charts or a learned FIF chart mixture (learned_cover_fitter)")
    p.add_argument("--charts", default="auto", help="images part: K, or auto (the K-selection loop)")
    p.add_argument("--chart-dim", default="auto", help="images part: latent dimension, or auto")
    p.add_argument("--learned-steps", type=int, default=300)
    p.add_argument("--fig-dir", default=None, help="figures folder (default: topology/ beside --out)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "topology.md"))
    return p.parse_args(argv)


def _fmt_betti(betti):
    return f"{tuple(betti['Z2'])} / {tuple(betti['Z3'])}"


def real_part(args, fig_dir, lines, flush) -> None:
    if not DATA.is_dir():
        lines += ["## Real data", "", f"skipped: {DATA} not found", ""]
        return
    sample = load_points(DATA / "n50000Dct.mat")
    lines += [
        "## Real data: van Hateren 3x3 patches (n50000Dct.mat, 50,000 points on S^7)",
        "",
        "| core | time kNN (s) | shared rows with published | Hausdorff dist. ours<->published | PH Betti Z/2 / Z/3 | PH verdict (gap) | chart verdict (K, d, tau run) |",
        "|---|---|---|---|---|---|---|",
    ]
    from scipy.spatial import cKDTree

    for k in (300, 15):
        start = time.perf_counter()
        ours = sample[density_core(sample, k, 30)]
        elapsed = time.perf_counter() - start
        published = load_points(DATA / f"nk{k}c30Dct.mat")
        d_ours, _ = cKDTree(published).query(ours)
        d_pub, _ = cKDTree(ours).query(published)
        shared = np.mean(d_pub == 0)
        hausdorff = max(d_ours.max(), d_pub.max())
        result = analyse_points(ours, None, args.landmarks, "auto", "auto", args.seed)
        ph, ch = result["persistence"], result["charts"]
        plot_barcodes(ph["barcodes"], fig_dir / f"real_X{k}_30.png", f"recomputed X({k},30)", ph["threshold"])
        lines.append(
            f"| X({k},30) | {elapsed:.1f} | {shared:.4%} | {hausdorff:.3g} | {_fmt_betti(ph['betti'])} | "
            f"{ph['name']} ({ph['gap']:.2f}) | {ch['name']} (K={ch['n_charts']}, d={ch['dim']}, {ch['run_length']}) |"
        )
        flush()
    lines += ["", "Barcodes: " + ", ".join(f"![X({k},30)](topology/real_X{k}_30.png)" for k in (300, 15)), ""]


def models_part(args, fig_dir, lines, flush) -> None:
    cases = [(name, p) for name in MODELS for p in ((3, 5, 8) if name in ("klein", "primary-circle", "three-circle") else (None,))]
    lines += [
        f"## Synthetic models ({args.model_points} points, {args.landmarks} landmarks, K auto, seeds {args.seed}..{args.seed + args.seeds - 1})",
        "",
        "| model | p | truth | PH correct | charts correct | chart K chosen | wrong answers |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, p in tqdm(cases, desc="models"):
        ph_ok = ch_ok = 0
        ks, wrong = [], []
        for seed in range(args.seed, args.seed + args.seeds):
            points, truth = sample_model(name, args.model_points, seed=seed, patch_size=p or 3)
            ph = homology_from_persistence(points, args.landmarks, seed=seed)
            ch = homology_from_charts(points, "auto", "auto", seed=seed)
            ph_ok += ph["name"] == truth
            ch_ok += ch["name"] == truth
            ks.append(ch["n_charts"])
            wrong += [f"seed {seed} PH: {ph['name']}"] * (ph["name"] != truth)
            wrong += [f"seed {seed} charts: {ch['name']}"] * (ch["name"] != truth)
        lines.append(
            f"| {name} | {p or '-'} | {truth} | {ph_ok}/{args.seeds} | {ch_ok}/{args.seeds} | {sorted(set(ks))} | "
            f"{'; '.join(wrong) or '-'} |"
        )
        flush()
    lines.append("")


def images_part(args, fig_dir, lines, flush) -> None:
    from patchreg.data import load_bundled

    images = [im for split in ("train", "validation", "test") for im in load_bundled(split)]
    cores = [tuple(float(x) if i else int(x) for i, x in enumerate(c.split(","))) for c in args.cores.split(";")]
    lines += [
        f"## Natural images: the bundled photos ({len(images)} images/pieces, all splits; "
        f"{args.patches_per_image} random patches per image, top 20% by D-norm)",
        "",
        "| p | points | core | PH Betti Z/2 / Z/3 | PH verdict (gap) | chart verdict | chart Betti Z/2 / Z/3 | K, d | orientable | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    fitter = None
    if args.cover == "learned":
        from patchreg.topology.learned_cover import learned_cover_fitter

        fitter = learned_cover_fitter(args.learned_steps)
        lines[-4] += f" Chart nerve from a {fitter.description}."
    n_charts = args.charts if args.charts == "auto" else int(args.charts)
    dim = args.chart_dim if args.chart_dim == "auto" else int(args.chart_dim)
    for p in tqdm([int(x) for x in args.patch_sizes.split(",")], desc="patch sizes"):
        points = images_to_sphere(images, p, max_patches_per_image=args.patches_per_image, seed=args.seed)
        for k, q in cores:
            start = time.perf_counter()
            result = analyse_points(points, (k, q), args.landmarks, n_charts, dim, args.seed, cover_fitter=fitter)
            ph, ch = result["persistence"], result["charts"]
            tag = f"p{p}_k{k}_q{int(q)}"
            plot_barcodes(ph["barcodes"], fig_dir / f"barcodes_{tag}.png", f"bundled photos, p={p}, X({k},{q})", ph["threshold"])
            plot_klein_square(ch["cover"].centres, ch["chosen"]["edges"], p, fig_dir / f"klein_{tag}.png", f"p={p}, X({k},{q})")
            plot_chart_patches(result["core_points_for_charts"], ch["cover"], p, fig_dir / f"patches_{tag}.png")
            lines.append(
                f"| {p} | {len(points)} | X({k},{q:g}) | {_fmt_betti(ph['betti'])} | {ph['name']} ({ph['gap']:.2f}) | "
                f"{ch['name']} | {_fmt_betti(ch['betti'])} | {ch['n_charts']}, {ch['dim']} | {ch['orientable']} | "
                f"{time.perf_counter() - start:.0f} |"
            )
            flush()
    lines += ["", f"Figures per case in {fig_dir.relative_to(ROOT) if fig_dir.is_relative_to(ROOT) else fig_dir}/: barcodes_pP_kK_qQ.png, klein_pP_kK_qQ.png "
              "(chart centres on the Klein bottle's fundamental square, nerve edges), patches_pP_kK_qQ.png.", ""]


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    fig_dir = Path(args.fig_dir) if args.fig_dir else out.parent / "topology"
    fig_dir.mkdir(parents=True, exist_ok=True)
    backend = os.environ.get("PATCHREG_BACKEND")
    command = (f"PATCHREG_BACKEND={backend} " if backend else "") + ".venv/bin/python bench/topology_experiments.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    sections = {"real": real_part, "models": models_part, "images": images_part}
    lines = ["# Topology of the patch manifold", "", f"Command: `{command}`", "",
             "Machine: 2-core CPU dev machine, no GPU.", ""]

    def flush():  # partial results survive an interruption
        atomic_write_text(out, "\n".join(lines) + "\n")

    for part in args.parts.split(","):
        start = time.perf_counter()
        sections[part](args, fig_dir, lines, flush)
        lines += [f"({part}: {time.perf_counter() - start:.0f} s)", ""]
        flush()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
