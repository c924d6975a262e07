"""The learned-chart nerve of the rotated cores, p = 3..8 (issue 12): the second method of the p table.

Per patch size p and seed, on the core of topology_rotated_sizes.py (the same rows, rho_k, core and denoising):
1. the per-orientation core X(k, q) (q% densest of each orientation bin), denoised (mean of m nearest core points);
2. n maxmin points of it: density-balanced, as the witness complex's landmarks are. A random sample of the core
   is dominated by the dense primary and secondary circles, and the charts fitted on it never overlap across the
   thin sheet between them (the chart nerve then reads the three-circle skeleton: bench/RESULTS.md, issue 12);
3. a FIF chart mixture with d = 2 charts, K charts (patchreg.topology.learned_cover, default_train_config(seed, steps));
4. the nerve filtration over the overlap threshold tau (patchreg.topology.nerve_persistence), each point's
   --max-charts best charts; Betti numbers over Z/2 and Z/3 by the long-bar rule, orientability by the transition
   Jacobians at tau*.
The persistent-homology readings of the same cores come from topology_rotated_sizes.json (--ph-json) for the
table of both methods. One JSON per p beside the report, so that sizes can run in separate processes and a
rerun skips the cells it holds; --write-only rebuilds the report from them.

  OMP_NUM_THREADS=1 .venv/bin/python bench/topology_rotated_nerve.py --cache /work/runs/topology_cache --patch-sizes 3,4,5,6,7,8
Writes bench/results/topology_rotated_nerve.md, its folder (per-p JSON, barcode figures, seed 0's chart centres
on the Klein bottle's square at p = 3).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report_paths import single_threaded_report  # noqa: E402
from patchreg.io import atomic_write_json, atomic_write_text  # noqa: E402
from patchreg.topology.report import betti_text  # noqa: E402

IMAGES = ROOT.parent / "shared" / "data" / "natural" / "train400"
CORE_KINDS = ("stratified", "plain")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default=None, help="folder of the patch sets and rho_k (not in git); needed unless --write-only")
    p.add_argument("--patch-sizes", default="3,4,5,6,7,8")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rotations", type=int, default=6)
    p.add_argument("--reference", type=int, default=500_000, help="rows the density is estimated against")
    p.add_argument("--queries", type=int, default=50_000, help="rows per seed (disjoint per seed)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--q", type=float, default=30.0, help="core: q%% densest (per orientation bin for 'stratified')")
    p.add_argument("--core", default="stratified", choices=CORE_KINDS)
    p.add_argument("--bins", type=int, default=16)
    p.add_argument("--denoise", type=int, default=50, help="m nearest core points averaged")
    p.add_argument("--points", type=int, default=3000, help="maxmin points of the core the charts are fitted on")
    p.add_argument("--charts", type=int, default=48, help="K of the FIF chart mixture (d = 2)")
    p.add_argument("--steps", type=int, default=300, help="mixture steps (learned_cover.default_train_config)")
    p.add_argument("--width", type=int, default=32, help="residual-MLP width of each chart")
    p.add_argument("--overlap", default="reconstruction", choices=["reconstruction", "ownership"])
    p.add_argument("--max-charts", type=int, default=16, help="each point's best charts in the nerve filtration")
    p.add_argument("--chart-seed", type=int, default=None,
                   help="seed of the maxmin sample and the chart training (default: the data seed of each cell); "
                        "varies the charts on the same core")
    p.add_argument("--ph-json", default=str(ROOT / "bench" / "results" / "topology_rotated_sizes.json"),
                   help="persistent-homology readings of the same cores (topology_rotated_sizes.py)")
    p.add_argument("--write-only", action="store_true", help="rebuild the report from the per-p JSON files")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "topology_rotated_nerve.md"))
    args = p.parse_args(argv)
    args.sizes = [int(x) for x in args.patch_sizes.split(",")]
    args.seed_list = [int(x) for x in args.seeds.split(",")]
    if min(args.sizes) < 3 or max(args.sizes) > 8:
        p.error(f"--patch-sizes must lie in 3..8, got {args.sizes}")
    if min(args.seed_list) < 0:
        p.error(f"--seeds must be >= 0, got {args.seed_list}")
    if not 1 <= args.queries <= args.reference:
        p.error(f"--queries must be in [1, --reference {args.reference}], got {args.queries}")
    for name in ("points", "charts", "steps", "max_charts", "denoise"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.q <= 100:
        p.error(f"--q must be in (0, 100], got {args.q}")
    if args.charts * 10 > args.points:
        p.error(f"--points must be at least 10 per chart ({10 * args.charts}), got {args.points}")
    if not args.write_only and args.cache is None:
        p.error("--cache is required unless --write-only")
    return args


def core_points(p, seed, args):
    """The denoised core of topology_rotated_sizes.py for (p, seed): the same rows and rho_k (cached under --cache)."""
    from bench.topology_klein_witness import cores_of
    from bench.topology_rotated_sizes import seed_sample
    from patchreg.topology.orientation import patch_orientation
    from patchreg.topology.patchsets import build_patch_set
    from patchreg.topology.scale import denoise

    pset = build_patch_set(IMAGES, p, args.cache, seed=0, progress=False, rotations=args.rotations)
    points, rho, _ = seed_sample(pset, seed, args)
    idx = cores_of(rho, patch_orientation(points, p), args.q, args.bins)[args.core]
    return denoise(points[idx], args.denoise)


def nerve_cell(p, seed, args, fig_dir):
    from patchreg.topology.learned_cover import default_train_config, fit_chart_mixture_cover
    from patchreg.topology.nerve_persistence import persistent_chart_verdict
    from patchreg.topology.persistence import plot_barcodes
    from patchreg.topology.pipeline import chart_subset

    start = time.time()
    core = core_points(p, seed, args)
    chart_seed = seed if args.chart_seed is None else args.chart_seed
    sub = chart_subset(core, "maxmin", args.points, chart_seed)
    core_seconds = time.time() - start
    cover = fit_chart_mixture_cover(sub, args.charts, 2, chart_seed, config=default_train_config(chart_seed, args.steps),
                                    width=args.width, overlap=args.overlap)
    r = persistent_chart_verdict(cover, points=sub, max_charts=args.max_charts, cut="none")  # as its reports were read
    bc = r["barcodes"]
    plot_barcodes(bc, fig_dir / f"nerve_p{p}_s{seed}.png", threshold=r["threshold"],
                  title=f"p = {p}, seed {seed}: nerve filtration of {args.charts} FIF charts on {len(sub)} maxmin core points")
    if p == 3 and seed == args.seed_list[0]:
        _chart_square(cover, sub, r["tau_star"], fig_dir / f"charts_square_p3_s{seed}.png", p)
    return {"p": p, "seed": seed, "chart_seed": chart_seed, "n_core": len(core), "n_points": len(sub),
            "name": r["name"], **reading_fields(r),
            "core_seconds": round(core_seconds, 1), "nerve_seconds": round(time.time() - start - core_seconds, 1)}


def reading_fields(r) -> dict:
    """The JSON fields of a persistent_chart_verdict: Betti numbers, gap, orientability, exact range, longest bars."""
    bc = r["barcodes"]
    return {"named": r["named"], "betti_Z2": list(r["betti"]["Z2"]), "betti_Z3": list(r["betti"]["Z3"]),
            "gap": round(float(r["gap"]), 3) if np.isfinite(r["gap"]) else None, "reliable": bool(r["reliable"]),
            "orientable": r["orientable"], "tau_star": round(float(r["tau_star"]), 3), "end": round(float(bc.extra["end"]), 3),
            "cut_at": round(float(r.get("cut_at", np.inf)), 3) if np.isfinite(r.get("cut_at", np.inf)) else None,
            "bars": {f"Z{c} H{d}": _bars(bc.diagrams[c][d]) for c in (2, 3) for d in (1, 2)}}


def _bars(diagram, n=3):
    lengths = diagram[:, 1] - diagram[:, 0]
    return [[round(float(diagram[i, 0]), 3), round(float(diagram[i, 1]), 3)] for i in np.argsort(-lengths)[:n]]


def _chart_square(cover, points, tau, path, p):
    """Chart centres (each chart's own points' mean) on the Klein bottle's square, edges of the nerve at tau*."""
    from patchreg.topology.nerve import nerve_simplices
    from patchreg.topology.report import plot_klein_square

    own = np.argmin(cover.scores, axis=1)
    charts = [k for k in range(cover.n_charts) if np.any(own == k)]
    centres = np.stack([points[own == k].mean(axis=0) for k in charts])
    index = {k: i for i, k in enumerate(charts)}
    edges = [(index[a], index[b]) for s in nerve_simplices(cover.membership(tau)) if len(s) == 2
             for a, b in [s] if a in index and b in index]
    plot_klein_square(centres, edges, p, path, title=f"p = {p}: centres of the {len(charts)} FIF charts, nerve edges at tau* = {tau:.2f}")


def ph_readings(path, args):
    """{(p, seed): [persistent-homology rows of the same core]} from topology_rotated_sizes.json."""
    path = Path(path)
    if not path.exists():
        return {}
    out = {}
    for size in json.loads(path.read_text())["sizes"]:
        for r in size["rows"]:
            if r["kind"] == args.core and float(r["q"]) == args.q:
                out.setdefault((r["p"], r["seed"]), []).append(r)
    return out


def cell_path(fig_dir, p):
    return fig_dir / f"p{p}.json"


def load_cells(fig_dir, p):
    path = cell_path(fig_dir, p)
    return json.loads(path.read_text())["cells"] if path.exists() else []


def main(argv=None) -> int:
    args = parse_args(argv)
    out, fig_dir = single_threaded_report(args.out)
    settings = {k: v for k, v in vars(args).items() if k not in ("cache", "write_only", "out", "patch_sizes", "sizes",
                                                                  "seeds", "seed_list", "ph_json")}
    if args.chart_seed is None:
        del settings["chart_seed"]  # cells of the default run keep matching the settings they were stored with
    if not args.write_only:
        for p in args.sizes:
            cells = [c for c in load_cells(fig_dir, p) if c.get("settings") == settings]
            for seed in args.seed_list:
                if any(c["seed"] == seed for c in cells):
                    continue
                cell = {**nerve_cell(p, seed, args, fig_dir), "settings": settings}
                cells.append(cell)
                atomic_write_json(cell_path(fig_dir, p), {"cells": cells})
                print(f"p={p} s{seed}: {cell['name'][:50]:50s} {tuple(cell['betti_Z2'])}/{tuple(cell['betti_Z3'])} gap {cell['gap']} "
                      f"orientable {cell['orientable']} ({cell['nerve_seconds']:.0f} s)", flush=True)
    cells = [c for p in range(3, 9) for c in load_cells(fig_dir, p) if c.get("settings") == settings]
    command = "OMP_NUM_THREADS=1 .venv/bin/python bench/topology_rotated_nerve.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    atomic_write_text(out, markdown(cells, ph_readings(args.ph_json, args), args, command, fig_dir.name))
    print(f"wrote {out}")
    return 0


def reads_klein(r):
    return r["named"] == "Klein bottle" and r["reliable"]


def torsion_in_bars(cell, tol: float = 1e-3) -> bool:
    """The Klein bottle's Z/2 torsion in the nerve's bars: the longest Z/2 H2 bar is born where one of the longest
    Z/3 H1 bars dies, and no Z/3 H2 bar is born there. The simplices entering there fill a loop over Z/3 and close a
    2-cycle over Z/2 instead, the
    pattern of a loop whose double bounds (H1 over the integers with 2-torsion, as for the Klein bottle), whatever
    the long-bar rule counts."""
    h2 = cell["bars"]["Z2 H2"]
    if not h2:
        return False
    birth = h2[0][0]
    twin = any(abs(b - birth) <= tol for b, _ in cell["bars"]["Z3 H2"])  # an H2 class over both fields: no torsion
    return not twin and any(abs(death - birth) <= tol for _, death in cell["bars"]["Z3 H1"])


def markdown(cells, ph, args, command, fig_name):
    core = f"{'per-orientation' if args.core == 'stratified' else 'plain'} X({args.k}, {args.q:g})"
    lines = ["# The learned-chart nerve of the rotated cores, by patch size (issue 12)", "",
             f"Command: `{command}`", "",
             f"Per p and seed: the {core} core of topology_rotated_sizes.py (every train400 image at {args.rotations} angles, "
             f"{args.queries:,} query rows a seed, rho_{args.k} against the {args.reference:,} rows holding them: query_block), "
             f"denoised by {args.denoise}; {args.points} maxmin points of it; a FIF mixture of {args.charts} charts with d = 2 "
             f"(width {args.width}, {args.steps} mixture steps, overlaps by {args.overlap}; sample and training seeded by "
             f"{'the data seed' if args.chart_seed is None else args.chart_seed}); the nerve filtration over tau with "
             f"each point's {args.max_charts} best charts, read by the long-bar rule (reliable iff gap >= 1.5); orientability "
             "by the transition Jacobians at tau*. Persistent homology: the lazy witness readings of the same core in "
             "topology_rotated_sizes.json (L 100 and 150).", "",
             "## Both methods", "",
             "| p | seed | core points | chart nerve: Betti Z/2 / Z/3 | gap | orientable | nerve reading | persistent homology "
             "(L 100; L 150) | both read the Klein bottle |", "|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c["p"], c["seed"])):
        rows = sorted(ph.get((c["p"], c["seed"]), []), key=lambda r: r["L"])
        ph_text = "; ".join(f"{r['name']} {betti_text(r)}" for r in rows) or "not run"
        both = reads_klein(c) and bool(rows) and all(reads_klein(r) for r in rows)
        lines.append(f"| {c['p']} | {c['seed']} | {c['n_core']:,} | {betti_text(c)} | {c['gap']} | {c['orientable']} | "
                     f"{c['name']} | {ph_text} | {'**yes**' if both else 'no'} |")
    lines += ["", "## Summary per patch size", "",
              "| p | seeds | chart nerve: Klein bottle, reliable | Z/2 torsion in the nerve's bars | non-orientable | "
              "persistent homology: Klein bottle, reliable (readings) | both, per seed |", "|---|---|---|---|---|---|---|"]
    for p in sorted({c["p"] for c in cells}):
        mine = [c for c in cells if c["p"] == p]
        rows = [r for c in mine for r in ph.get((p, c["seed"]), [])]
        both = sum(reads_klein(c) and all(reads_klein(r) for r in ph.get((p, c["seed"]), [])) and bool(ph.get((p, c["seed"])))
                   for c in mine)
        lines.append(f"| {p} | {len(mine)} | {sum(reads_klein(c) for c in mine)} of {len(mine)} | "
                     f"{sum(torsion_in_bars(c) for c in mine)} of {len(mine)} | "
                     f"{sum(c['orientable'] is False for c in mine)} of {len(mine)} | {sum(reads_klein(r) for r in rows)} of {len(rows)} | "
                     f"{both} of {len(mine)} |")
    lines += ["", "## Nerve barcodes (the three longest bars, birth and death in tau)", "",
              "Z/2 torsion: the longest Z/2 H2 bar is born where one of the longest Z/3 H1 bars dies (to 1e-3), and no "
              "Z/3 H2 bar is born there: what "
              "fills a loop over Z/3 closes a 2-cycle over Z/2 instead, the pattern of a loop whose double bounds, as "
              "in the Klein bottle (torsion_in_bars).", "",
              "| p | seed | end of the exact range | Z/2 H1 | Z/3 H1 | Z/2 H2 | Z/3 H2 | Z/2 torsion | seconds (core; charts and nerve) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c["p"], c["seed"])):
        b = c["bars"]
        lines.append(f"| {c['p']} | {c['seed']} | {c['end']} | {b['Z2 H1']} | {b['Z3 H1']} | {b['Z2 H2']} | {b['Z3 H2']} | "
                     f"{'yes' if torsion_in_bars(c) else 'no'} | {c['core_seconds']:.0f}; {c['nerve_seconds']:.0f} |")
    lines += ["", f"Figures in `{fig_name}/`: nerve_p<P>_s<seed>.png (barcodes), charts_square_p3_s<seed>.png (chart centres "
              "on the Klein bottle's fundamental square with the nerve's edges at tau*).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
