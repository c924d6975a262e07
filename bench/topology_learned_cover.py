"""Topology from the nerve of a LEARNED chart mixture on synthetic models (issue 5, work in progress).

For each model of patchreg.topology.models: sample points, train a FIF chart mixture (residual
MLP charts, latent d = 2, K charts) on them, read its ChartCover (patchreg.topology.learned_cover)
and the stable nerve verdict over the fixed thresholds of patchreg.topology.pipeline.

    .venv/bin/python bench/topology_learned_cover.py --models torus klein --charts 24 --seed 0
Writes bench/results/topology_learned_cover.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patchreg import io  # noqa: E402
from patchreg.charts import TrainConfig  # noqa: E402
from patchreg.topology.learned_cover import fit_chart_mixture_cover  # noqa: E402
from patchreg.topology.models import sample_model  # noqa: E402
from patchreg.topology.pipeline import chart_verdict  # noqa: E402


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["torus", "klein"])
    p.add_argument("--charts", type=int, default=24)
    p.add_argument("--points", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "topology_learned_cover.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    config = TrainConfig(pretrain_steps=150, mixture_steps=300, overlap_steps=100, batch_size=128, lr=3e-3,
                         seed_points=3000, log_every=100, seed=args.seed)
    lines = [
        "# Topology from the nerve of a learned chart mixture (synthetic models)",
        "",
        f"Command: `.venv/bin/python bench/topology_learned_cover.py {shlex.join(argv)}`",
        "",
        f"FIF chart mixture, residual-MLP charts of width 32, latent d = 2, K = {args.charts}, trained "
        f"{config.pretrain_steps}/{config.mixture_steps}/{config.overlap_steps} steps (pretrain/mixture/overlap), "
        f"{args.points} points per model, seed {args.seed}, 1 torch thread, 2-core CPU. Verdict: the name held on "
        "the longest run of consecutive overlap thresholds (patchreg.topology.pipeline.chart_verdict).",
        "",
        "| model | truth | verdict | stable | tau | Betti Z/2 | Betti Z/3 | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in args.models:
        points, truth = sample_model(name, args.points, seed=args.seed)
        start = time.perf_counter()
        cover = fit_chart_mixture_cover(points, args.charts, 2, seed=args.seed, config=config, width=32)
        verdict = chart_verdict(cover, points=points)
        lines.append(
            f"| {name} | {truth} | {verdict['name']} | {verdict['stable']} | {verdict['tau']:.2f} | "
            f"{verdict['betti']['Z2']} | {verdict['betti']['Z3']} | {time.perf_counter() - start:.0f} |"
        )
        print(lines[-1], flush=True)
        io.atomic_write_text(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
