"""Toy-manifold chart mixtures over several seeds: reads the JSON of each seed's run of
bench/charts_experiments.py and writes mean (min-max) per manifold, family and K, and how often
each family wins per metric.

    .venv/bin/python bench/charts_toy_seeds.py bench/results/charts_toy.json \\
        bench/results/charts_toy_seed1.json bench/results/charts_toy_seed2.json \\
        --out bench/results/charts_toy_seeds.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

METRICS = [("dist_mean", "dist mean", 4, "low"), ("dist_p95", "dist p95", 4, "low"), ("coverage", "coverage", 3, "high"),
           ("sliced_w2", "sliced W2", 4, "low"), ("heldout_nll", "held-out NLL", 2, "low")]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="charts_toy*.json files, one per seed")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    runs = [r for path in args.runs for r in json.loads(Path(path).read_text())]
    seeds = sorted({r["seed"] for r in runs})
    manifolds = list(dict.fromkeys(r["manifold"] for r in runs))
    lines = ["# Chart mixtures on toy manifolds over seeds", "",
             f"Command: `.venv/bin/python bench/charts_toy_seeds.py {shlex.join(argv)}`", "",
             f"Seeds {seeds}; each seed's settings and per-run tables are in the files named above. Cells: mean "
             "(min-max) over the seeds.", "",
             "| manifold | family | K | " + " | ".join(m[1] for m in METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    wins = {m[0]: {"fif": 0, "vae": 0, "tie": 0} for m in METRICS}
    k_gain = {m[0]: [0, 0] for m in METRICS}  # (K needed better than K = 1, comparisons)
    for name in manifolds:
        ks = sorted({r["K"] for r in runs if r["manifold"] == name})
        for family in ("fif", "vae"):
            for k in ks:
                rs = [r for r in runs if (r["manifold"], r["family"], r["K"]) == (name, family, k)]
                cells = []
                for key, _, digits, _ in METRICS:
                    v = np.array([r[key] for r in rs])
                    cells.append(f"{v.mean():.{digits}f} ({v.min():.{digits}f}-{v.max():.{digits}f})")
                lines.append(f"| {name} | {family} | {k} | " + " | ".join(cells) + " |")
        for seed in seeds:
            by = {(r["family"], r["K"]): r for r in runs if r["manifold"] == name and r["seed"] == seed}
            k_big = max(ks)
            for key, _, _, better in METRICS:
                sign = 1 if better == "low" else -1
                if ("fif", k_big) in by and ("vae", k_big) in by:
                    fif, vae = sign * by[("fif", k_big)][key], sign * by[("vae", k_big)][key]
                    wins[key]["fif" if fif < vae else "vae" if vae < fif else "tie"] += 1
                for family in ("fif", "vae"):
                    if (family, 1) in by and (family, k_big) in by and k_big > 1:
                        k_gain[key][1] += 1
                        k_gain[key][0] += int(sign * by[(family, k_big)][key] < sign * by[(family, 1)][key])
    lines += ["", "## Counts over manifolds and seeds", "",
              "| metric | mixture (K needed) better than K = 1 | FIF better than VAE (at K needed) | ties |", "|---|---|---|---|"]
    for key, label, _, _ in METRICS:
        total = sum(wins[key].values())
        lines.append(f"| {label} | {k_gain[key][0]} of {k_gain[key][1]} | {wins[key]['fif']} of {total} | {wins[key]['tie']} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
