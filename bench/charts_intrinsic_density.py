"""How well a chart mixture's samples follow the true density ON a toy surface (issue 15), at several schedule lengths.

The toy table's coverage (eps 0.1, 5000 samples) flags reference points with no sample nearby; on the Klein bottle it
fell with longer training (charts_steps12000_ablation.md). This script asks where and why: every sample (model and
true) is mapped to the surface's parameters (u, v) by the toy's own closest-point search, and the two histograms over
a grid of (u, v) cells are compared: total variation (TV) between them, next to the TV between two independent true
samples of the same size (the floor), the range of the cell ratios model / true, and where the uncovered reference
points of the coverage metric lie. Models are trained as bench/charts_toy_seeds.py trains a cell (the toy's and
family's defaults, `--steps` each) and kept in `--ckpt-dir` (a checkpoint there is reused, so a rerun only evaluates):

    OMP_NUM_THREADS=1 .venv/bin/python bench/charts_intrinsic_density.py --manifold klein_bottle --steps 3000,6000 \\
        --seed 0 --ckpt-dir /work/runs/intrinsic --out bench/results/charts_klein_intrinsic_density.md

Surfaces given by a parameter map (patchreg.data.toy_manifolds._ParametricSurface): klein_bottle, swiss_roll.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.charts_toy_seeds import keep_reading, train_model  # noqa: E402

SURFACES = ("klein_bottle", "swiss_roll")


def surface_params(manifold, points: np.ndarray) -> np.ndarray:
    """(N, 2) parameters (u, v) of the closest surface points (the toy's closest_params), in the
    fundamental domain: for the Klein bottle u, v in [0, 2 pi) with P(u + 2 pi, v) = P(u, -v)."""
    uv = manifold.closest_params(np.asarray(points, dtype=np.float64))
    if manifold.name == "klein_bottle":
        turns = np.floor(uv[:, 0] / (2 * math.pi))
        u = uv[:, 0] - 2 * math.pi * turns
        v = np.mod(np.where(turns % 2 == 1, -uv[:, 1], uv[:, 1]), 2 * math.pi)
        uv = np.stack([u, v], 1)
    return uv


def histogram(manifold, uv: np.ndarray, bins: tuple[int, int]) -> np.ndarray:
    return np.histogram2d(uv[:, 0], uv[:, 1], bins=bins, range=manifold.box)[0]


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    return float(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())


def evaluate(model, manifold, seed: int, n: int, bins: tuple[int, int], eps: float, truth: np.ndarray) -> dict:
    """Coverage as bench/charts_toy_seeds.py's cells measure it (the first 5000 samples of the seed's stream
    against 20000 reference points), and the intrinsic density of n further samples against `truth`."""
    x, _ = model.sample(5000, torch.Generator().manual_seed(seed))
    reference = torch.as_tensor(manifold.sample(20000, seed + 777))
    nearest = torch.cat([torch.cdist(reference[i : i + 2048], x).min(1).values for i in range(0, len(reference), 2048)])
    uncovered = (nearest > eps).numpy()
    samples, _ = model.sample(n, torch.Generator().manual_seed(seed + 1))
    counts = histogram(manifold, surface_params(manifold, samples.numpy()), bins)
    ratio = counts / np.maximum(truth, 1)
    return dict(coverage=float(1 - uncovered.mean()), uncovered=int(uncovered.sum()),  # patchreg's coverage(), its nearest kept
                uncovered_uv=surface_params(manifold, reference.numpy()[uncovered]).round(3).tolist(),
                uncovered_nearest=nearest.numpy()[uncovered].round(4).tolist(),
                tv=total_variation(counts, truth), ratio_min=float(ratio.min()), ratio_max=float(ratio.max()),
                cells_below_0_7=int((ratio < 0.7).sum()), ratio=ratio.tolist())


def checkpoint_for(args, steps: int) -> Path:
    """The model of (manifold, family, seed, steps), trained and saved first if the checkpoint is not there."""
    from patchreg.charts import load_mixture, save_mixture

    path = Path(args.ckpt_dir) / f"{args.manifold}_{args.family}_s{args.seed}_{steps}.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        model, *_ = train_model(args.manifold, args.family, args.seed, 5000, 5000, steps)
        save_mixture(path, model)
    return load_mixture(path)[0]


def plot(rows: list[dict], manifold, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(5.2 * len(rows), 3.6), squeeze=False)
    (u0, u1), (v0, v1) = manifold.box
    for ax, row in zip(axes[0], rows):
        image = ax.imshow(np.array(row["ratio"]).T, origin="lower", extent=[u0, u1, v0, v1], cmap="RdBu",
                          vmin=0.4, vmax=1.6, aspect="auto")
        uv = np.array(row["uncovered_uv"]).reshape(-1, 2)
        ax.scatter(uv[:, 0], uv[:, 1], s=14, c="k", marker="x", label="uncovered reference points")
        ax.set_title(f"{row['steps']} steps: TV {row['tv']:.3f}, {row['uncovered']} uncovered", fontsize=9)
        ax.set_xlabel("u")
        ax.set_ylabel("v")
        ax.legend(fontsize=6, loc="upper right")
    fig.colorbar(image, ax=axes[0].tolist(), label="model / true sample density")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifold", default="klein_bottle", choices=SURFACES)
    p.add_argument("--family", default="fif", choices=("fif", "vae"))
    p.add_argument("--steps", default="3000,6000", help="schedule lengths, one model each")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-dir", required=True, help="trained models (reused when there)")
    p.add_argument("--n", type=int, default=100000, help="samples per density histogram")
    p.add_argument("--bins", default="24,12", help="(u, v) cells")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    bins = tuple(int(b) for b in args.bins.split(","))
    if min(steps) < 3 or args.n < 1000 or len(bins) != 2 or min(bins) < 1:
        p.error("--steps must be >= 3 each, --n >= 1000, --bins two positive counts")
    torch.set_num_threads(1)
    from patchreg.charts.datasets import load_dataset

    manifold = load_dataset(f"toy:{args.manifold}", 10, 10, args.seed).manifold
    truth = histogram(manifold, surface_params(manifold, manifold.sample(args.n, args.seed + 2)), bins)
    floor = histogram(manifold, surface_params(manifold, manifold.sample(args.n, args.seed + 3)), bins)
    floor_ratio = floor / np.maximum(truth, 1)
    rows = []
    for s in steps:
        model = checkpoint_for(args, s).double()
        rows.append(dict(steps=s, **evaluate(model, manifold, args.seed, args.n, bins, args.eps, truth)))
    out = Path(args.out)
    lines = [f"# Intrinsic density of the {args.family.upper()} mixture on the {args.manifold} (issue 15)", "",
             f"Command: `OMP_NUM_THREADS=1 .venv/bin/python bench/charts_intrinsic_density.py {shlex.join(argv)}`", "",
             f"Seed {args.seed}; each model trained with the toy's and family's defaults but the steps (as a cell of "
             f"bench/charts_toy_seeds.py). {args.n} model samples and {args.n} true samples mapped to the surface's "
             f"(u, v) and counted on a {bins[0]} x {bins[1]} grid; TV: total variation between the two histograms; "
             f"floor: the TV between two independent true samples of {args.n} (ratio range there "
             f"{floor_ratio.min():.2f}-{floor_ratio.max():.2f}). Coverage at eps {args.eps} as in the toy tables "
             "(5000 samples, 20000 reference points); the nearest sample of each uncovered point is listed in the JSON.",
             "", "| steps | coverage | uncovered (of 20000) | TV (floor) | ratio model / true, min-max | cells with ratio < 0.7 |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['steps']} | {row['coverage']:.5f} | {row['uncovered']} | {row['tv']:.4f} "
                     f"({total_variation(floor, truth):.4f}) | {row['ratio_min']:.2f}-{row['ratio_max']:.2f} | "
                     f"{row['cells_below_0_7']} of {bins[0] * bins[1]} |")
    out.write_text("\n".join(lines) + "\n" + keep_reading(out))
    out.with_suffix(".json").write_text(json.dumps(dict(args=vars(args), floor_tv=total_variation(floor, truth),
                                                        rows=rows), indent=1) + "\n")
    plot(rows, manifold, out.with_suffix(".png"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
