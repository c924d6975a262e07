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
           ("coverage_gap", "coverage - floor", 4), ("w2_ratio", "sliced W2 / floor", 2), ("heldout_nll", "held-out NLL", 2),
           ("surface_excess", "NLL on the manifold - log area", 3), ("normal_excess", "normal NLL - its floor", 2)]
# the metrics a converged schedule must have stopped improving, the direction that is better, and the least gain per
# doubling of the steps that counts (a relative factor for the distance, which spans decades; absolute otherwise: 0.01
# nats per point is a 1% likelihood ratio, 0.0005 of coverage 10 reference points in 20,000, 0.05 of W2 / floor a
# tenth of the goal's margin)
PLATEAU_METRICS = (("dist_mean_rel", "distance", "low", ("relative", 0.05)),
                   ("coverage_gap", "coverage", "high", ("absolute", 0.0005)),
                   ("w2_ratio", "sliced W2", "low", ("absolute", 0.05)),
                   ("surface_excess", "NLL on the manifold", "low", ("absolute", 0.01)),
                   ("normal_excess", "normal NLL", "low", ("absolute", 0.01)))


def nll_parts(c: dict) -> tuple[float, float, bool]:
    """(NLL on the manifold - log area, normal-space NLL - its floor, approximate?) of a cell.

    Cells of evaluate_mixture since 2026-12-08 hold the exact split (heldout_nll_surface / _normal, see
    patchreg.charts.metrics). Older cells hold the NLL and the finalized sigma only: there the normal part is taken as
    its value when the held-out residuals average codim sigma^2 (sigma is their maximum-likelihood value on the
    training points), codim/2 log(2 pi e sigma^2), and flagged approximate. The normal part's floor is
    codim/2 log(2 pi e s^2) for data with Gaussian noise s, minus infinity for noise-free data (reported as the
    normal part itself)."""
    from patchreg.data.toy_manifolds import get_manifold

    m = get_manifold(c["manifold"])
    codim = m.ambient_dim - m.intrinsic_dim
    approx = "heldout_nll_normal" not in c
    normal = 0.5 * codim * np.log(2 * np.pi * np.e * c["sigma"] ** 2) if approx else c["heldout_nll_normal"]
    floor = 0.5 * codim * np.log(2 * np.pi * np.e * c["noise"] ** 2) if c.get("noise") else 0.0
    return c["heldout_nll"] - normal - np.log(m.area()), normal - floor, approx


def load_cells(paths: list[str]) -> list[dict]:
    """The cells of every JSONL, the last copy of each (manifold, family, seed, steps, noise) kept."""
    cells = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                c = json.loads(line)
                cells[(c["manifold"], c["family"], c["seed"], c["steps"], c.get("noise", 0.0))] = c
    for c in cells.values():
        c["coverage_gap"] = c["coverage"] - c["coverage_floor"]
        c["w2_ratio"] = c["sliced_w2"] / c["sliced_w2_floor"]
        c["surface_excess"], c["normal_excess"], c["parts_approximate"] = nll_parts(c)
    return list(cells.values())


def still_improving(longer: list[float], shorter: list[float], better: str, doublings: float = 1.0,
                    tolerance: tuple[str, float] = ("absolute", 0.0)) -> bool:
    """Whether the longer schedule's seed mean is better than the shorter's by more than two standard errors of the
    difference (the seed spread of both lengths) and by more than `tolerance` per doubling of the steps (`doublings`
    between the two): ("absolute", t) a gain of t, ("relative", f) a factor 1 - f."""
    a, b = np.asarray(longer), np.asarray(shorter)
    gain = (b.mean() - a.mean()) if better == "low" else (a.mean() - b.mean())
    se = np.sqrt((a.var(ddof=1) / len(a) if len(a) > 1 else 0.0) + (b.var(ddof=1) / len(b) if len(b) > 1 else 0.0))
    kind, tol = tolerance
    if kind == "relative":  # the mean's factor per doubling (better == "low")
        big = (a.mean() / b.mean()) ** (1 / doublings) < 1 - tol
    else:
        big = gain / doublings > tol
    return bool(gain > 2 * se and big)


def plateau_from(cells: list[dict], key: str, better: str, tolerance: tuple[str, float] = ("absolute", 0.0)) -> int | None:
    """The shortest schedule length from which no longer schedule is still improving `key` (still_improving), or None
    when even the longest but one is; None too with fewer than two lengths. Lengths with a single seed have no spread
    and are left out."""
    values = {}
    for c in cells:
        values.setdefault(c["steps"], []).append(c[key])
    lengths = sorted(s for s in values if len(values[s]) > 1)
    for i, s in enumerate(lengths[:-1]):
        if not any(still_improving(values[t], values[s], better, np.log2(t / s), tolerance) for t in lengths[i + 1:]):
            return s
    return None


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


def row_label(manifold: str, noise: float) -> str:
    return manifold + (f" + noise {noise:g}" if noise else "")


def table_rows(cells: list[dict], manifold: str, family: str, noise: float = 0.0) -> list[str]:
    rows = []
    cells = [c for c in cells if c.get("noise", 0.0) == noise]
    label = row_label(manifold, noise)
    lengths = sorted({c["steps"] for c in cells if (c["manifold"], c["family"]) == (manifold, family)})
    previous = None
    for steps in lengths:
        rs = {c["seed"]: c for c in cells if (c["manifold"], c["family"], c["steps"]) == (manifold, family, steps)}
        met = sum(all(goal_checks(c).values()) for c in rs.values())
        factor, n = doubling_factor(rs, previous) if previous else (float("nan"), 0)
        step_text = f"x{factor:.2f} ({n} seed{'s' if n > 1 else ''})" if n else "-"
        approx = "~" if any(c["parts_approximate"] for c in rs.values()) else ""
        rows.append(f"| {label} | {family} | {steps} | {','.join(map(str, sorted(rs)))} | "
                    + " | ".join((approx if k in ("surface_excess", "normal_excess") else "")
                                 + spread([c[k] for c in rs.values()], d) for k, _, d in COLUMNS)
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


def power_law_exponent(cells: list[dict], key: str = "dist_mean_rel") -> float:
    """a of the least-squares fit log metric = c - a log steps over every cell (each seed a point)."""
    steps = np.log([c["steps"] for c in cells])
    values = np.log([c[key] for c in cells])
    return float(-np.polyfit(steps, values, 1)[0])


def plateau_rows(cells: list[dict]) -> list[str]:
    """Per toy, family and noise: from which schedule length each metric stops improving (plateau_from)."""
    rows = []
    for noise in sorted({c.get("noise", 0.0) for c in cells}):
        for family in ("fif", "vae"):
            for manifold in MANIFOLDS:
                rs = [c for c in cells if (c["manifold"], c["family"], c.get("noise", 0.0)) == (manifold, family, noise)]
                seeds = {s: sum(c["steps"] == s for c in rs) for s in {c["steps"] for c in rs}}
                lengths = sorted(s for s, n in seeds.items() if n > 1)
                if len(lengths) < 2:
                    continue
                rs = [c for c in rs if c["steps"] in lengths]
                verdicts = []
                for key, _, better, tolerance in PLATEAU_METRICS:
                    at = plateau_from(rs, key, better, tolerance)
                    verdicts.append(f"from {at}" if at is not None else f"**improving at {lengths[-1]}**")
                rows.append(f"| {row_label(manifold, noise)} | {family} | {', '.join(map(str, lengths))} | " + " | ".join(verdicts)
                            + f" | {power_law_exponent(rs):.2f} |")
    return rows


def write_report(cells: list[dict], out: Path, argv: list[str]) -> str:
    noises = sorted({c.get("noise", 0.0) for c in cells})
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
             "The held-out NLL split (patchreg.charts.metrics.heldout_nll_parts): the part on the manifold minus "
             "log(area), the least any density on the manifold can have for these area-uniform toys (so about the KL "
             "divergence from the true density on the manifold to the model's), and the normal-space part minus its floor "
             "(codim/2 log(2 pi e s^2) for Gaussian noise s; noise-free data have none, the column is then the part "
             "itself, with no floor set by the data: it falls as the fitted sigma shrinks, until the fit's own precision levels off). ~: cells from before the split was "
             "recorded, whose normal part is codim/2 log(2 pi e sigma^2) of their finalized sigma (the value when the "
             "held-out residuals average codim sigma^2; see nll_parts)." + (
                 " Rows \"+ noise s\": the training and held-out points carry Gaussian noise of standard deviation s "
                 "(load_dataset(noise=s)); distances are the noise-free samples' to the exact manifold, sliced W2 is "
                 "the noisy samples' against the noisy held-out points, against noisy true samples as its floor."
                 if any(noises) else ""), "",
             "| manifold | family | steps | seeds | " + " | ".join(c[1] for c in COLUMNS)
             + " | dist per doubling | goal met | train s |", "|---" * (len(COLUMNS) + 7) + "|"]
    for noise in noises:
        for family in ("fif", "vae"):
            for manifold in MANIFOLDS:
                lines += table_rows(cells, manifold, family, noise)
    lines += ["", "## Where each metric stops improving", "",
              "The shortest schedule from which no longer one improves the metric's seed mean by more than two standard "
              "errors of the difference (the seed spread of both lengths) and by more than a least gain per doubling of "
              "the steps: 5% of the distance, 0.0005 of coverage, 0.05 of sliced W2 / floor, 0.01 nats of either NLL "
              "part (bench/charts_schedule_length.py, PLATEAU_METRICS, still_improving, plateau_from; lengths run with "
              "one seed only are left out). \"improving at L\": even the schedule before the longest one, L, is beaten.", "",
              "distance ~ steps^-a: the exponent of a least-squares power law through every cell of the row (a = 1: "
              "halved by each doubling; 0: flat).", "",
              "| manifold | family | lengths | " + " | ".join(name for _, name, _, _ in PLATEAU_METRICS) + " | distance ~ steps^-a |",
              "|---" * (len(PLATEAU_METRICS) + 4) + "|", *plateau_rows(cells)]
    out.write_text("\n".join(lines) + "\n" + keep_reading(out))
    out.with_suffix(".json").write_text(json.dumps(
        [{k: c.get(k, 0.0) for k in ("manifold", "family", "seed", "steps", "noise", "dist_mean_rel", "dist_p95_rel",
                                     "coverage", "coverage_floor", "sliced_w2", "sliced_w2_floor", "heldout_nll",
                                     "surface_excess", "normal_excess", "parts_approximate", "train_seconds")}
         for c in sorted(cells, key=lambda c: (c.get("noise", 0.0), c["family"], c["manifold"], c["steps"], c["seed"]))],
        indent=1) + "\n")
    plot([c for c in cells if not c.get("noise")], out.with_suffix(".png"))
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
