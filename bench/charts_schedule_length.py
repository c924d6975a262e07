"""Chart mixtures against the length of their training schedule (issue 15): does a longer run still improve?

Reads the cells of bench/charts_toy_seeds.py (training mode, `--steps N`: one cosine schedule of N steps per cell,
every other setting the toy's and family's defaults) and writes, per toy and family, the seed mean (min-max) of
each held-out metric at each schedule length, how many seeds meet issue 15's goal, and the factor by which a
doubling of the schedule changes the mean distance (geometric mean over the seeds run at both lengths). A
schedule has converged where a doubling no longer moves the metrics by more than their seed spread.

    .venv/bin/python bench/charts_schedule_length.py bench/results/charts_steps12000_cells.jsonl \\
        --out bench/results/charts_schedule_length.md

The figure (OUT with .png) plots the mean distance / diameter against the steps, one panel per family, log-log.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.charts_toy_seeds import AUTHORS, goal_checks, keep_reading  # noqa: E402

MANIFOLDS = ("two_circles", "sphere", "annulus", "torus", "swiss_roll", "klein_bottle")
COLUMNS = [("dist_mean_rel", "dist mean / diam", 5), ("dist_p95_rel", "dist p95 / diam", 5),
           ("coverage_gap", "coverage - floor", 4), ("w2_ratio", "sliced W2 / floor", 2), ("heldout_nll", "held-out NLL", 2)]


def load_cells(paths: list[str]) -> list[dict]:
    """The cells of every JSONL, the last copy of each (manifold, family, seed, steps) kept."""
    cells = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                c = json.loads(line)
                cells[(c["manifold"], c["family"], c["seed"], c["steps"])] = c
    for c in cells.values():
        c["coverage_gap"] = c["coverage"] - c["coverage_floor"]
        c["w2_ratio"] = c["sliced_w2"] / c["sliced_w2_floor"]
    return list(cells.values())


def spread(values: list[float], digits: int) -> str:
    v = np.asarray(values)
    return f"{v.mean():.{digits}f} ({v.min():.{digits}f} to {v.max():.{digits}f})" if len(v) > 1 else f"{v[0]:.{digits}f}"


def doubling_factor(by_seed: dict[int, dict], shorter: dict[int, dict], key: str = "dist_mean_rel") -> tuple[float, int]:
    """Geometric mean over the seeds run at both lengths of metric(longer) / metric(shorter), per doubling of the
    steps, and the number of those seeds."""
    seeds = sorted(set(by_seed) & set(shorter))
    if not seeds:
        return float("nan"), 0
    doublings = np.log2(by_seed[seeds[0]]["steps"] / shorter[seeds[0]]["steps"])
    logs = [np.log(by_seed[s][key] / shorter[s][key]) / doublings for s in seeds]
    return float(np.exp(np.mean(logs))), len(seeds)


def table_rows(cells: list[dict], manifold: str, family: str) -> list[str]:
    rows = []
    lengths = sorted({c["steps"] for c in cells if (c["manifold"], c["family"]) == (manifold, family)})
    previous = None
    for steps in lengths:
        rs = {c["seed"]: c for c in cells if (c["manifold"], c["family"], c["steps"]) == (manifold, family, steps)}
        met = sum(all(goal_checks(c).values()) for c in rs.values())
        factor, n = doubling_factor(rs, previous) if previous else (float("nan"), 0)
        step_text = f"x{factor:.2f} ({n} seed{'s' if n > 1 else ''})" if n else "-"
        rows.append(f"| {manifold} | {family} | {steps} | {','.join(map(str, sorted(rs)))} | "
                    + " | ".join(spread([c[k] for c in rs.values()], d) for k, _, d in COLUMNS)
                    + f" | {step_text} | {met} of {len(rs)} | {np.mean([c['train_seconds'] for c in rs.values()]):.0f} |")
        previous = rs
    return rows


def plot(cells: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [f for f in ("fif", "vae") if any(c["family"] == f for c in cells)]
    fig, axes = plt.subplots(1, len(families), figsize=(5.5 * len(families), 4.2), squeeze=False)
    for ax, family in zip(axes[0], families):
        for i, manifold in enumerate(MANIFOLDS):
            rs = [c for c in cells if (c["manifold"], c["family"]) == (manifold, family)]
            if not rs:
                continue
            lengths = sorted({c["steps"] for c in rs})
            means = [np.mean([c["dist_mean_rel"] for c in rs if c["steps"] == s]) for s in lengths]
            colour = f"C{i}"
            ax.plot(lengths, means, "o-", color=colour, label=manifold)
            ax.scatter([c["steps"] for c in rs], [c["dist_mean_rel"] for c in rs], s=10, color=colour, alpha=0.4)
            if manifold in AUTHORS:
                ax.axhline(AUTHORS[manifold][0], color=colour, ls=":", lw=1)
        ax.set_xscale("log", base=2)
        lengths = sorted({c["steps"] for c in cells if c["family"] == family})
        ax.set_xticks(lengths, [str(s) for s in lengths])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("training steps (one cosine schedule each)")
        ax.set_ylabel("mean distance / diameter")
        ax.set_title(f"{family}: line = seed mean, dots = seeds, dotted = Alberti et al.'s code")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(cells: list[dict], out: Path, argv: list[str]) -> str:
    lines = ["# Chart mixtures against the length of the training schedule (issue 15)", "",
             f"Command: `.venv/bin/python bench/charts_schedule_length.py {shlex.join(argv)}`", "",
             "Each row: cells of bench/charts_toy_seeds.py trained with one cosine schedule of that many steps and "
             "otherwise the toy's and family's defaults (the settings are in the cells' tables, "
             "charts_steps6000_ablation.md and charts_steps12000_ablation.md); mean (min to max) over the seeds. "
             "coverage - floor: the coverage at eps 0.1 minus that of as many true samples (goal: >= -0.001); "
             "sliced W2 / floor: against the true-vs-true floor at 5000 points (goal: <= 1.5). \"per doubling\": "
             "the factor by which the mean distance changed per doubling of the steps from the row above, geometric "
             "mean over the seeds run at both lengths. \"goal met\": all three criteria of issue 15 "
             "(distance <= Alberti et al.'s code's where measured). Train s: 1 thread on a shared 2-core machine, "
             "indicative only.", "",
             "| manifold | family | steps | seeds | " + " | ".join(c[1] for c in COLUMNS)
             + " | dist per doubling | goal met | train s |", "|---" * (len(COLUMNS) + 7) + "|"]
    for family in ("fif", "vae"):
        for manifold in MANIFOLDS:
            lines += table_rows(cells, manifold, family)
    out.write_text("\n".join(lines) + "\n" + keep_reading(out))
    out.with_suffix(".json").write_text(json.dumps(
        [{k: c[k] for k in ("manifold", "family", "seed", "steps", "dist_mean_rel", "dist_p95_rel", "coverage",
                            "coverage_floor", "sliced_w2", "sliced_w2_floor", "heldout_nll", "train_seconds")}
         for c in sorted(cells, key=lambda c: (c["family"], c["manifold"], c["steps"], c["seed"]))], indent=1) + "\n")
    plot(cells, out.with_suffix(".png"))
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cells", nargs="+", help="JSONL files of bench/charts_toy_seeds.py --train")
    p.add_argument("--out", required=True, help="markdown report; .json and .png beside it")
    args = p.parse_args(argv)
    cells = load_cells(args.cells)
    if not cells:
        p.error("no cells in the files given")
    print(write_report(cells, Path(args.out), argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
