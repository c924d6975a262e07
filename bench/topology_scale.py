"""The patch manifold of natural images at scale, p = 3..8 (issue 12).

Per patch size p:
1. the high-contrast patch set of every patch of every train400 image (patchsets.py; cached .npy);
2. seeds, each an independent query sample whose rho_k is estimated against a fixed reference
   subsample (scale.py; kNN times reported): --selection-seeds of them choose the core, three others
   (held out) give the verdicts;
3. selection seeds: every core X(k, q) of the grid read by persistent homology (raw and denoised) on
   each; the core is chosen by scale.choose_core_over_seeds (the same reliable named reading on every
   selection seed, largest smallest gap; otherwise flagged fragile);
4. that core, for every held-out seed: persistent homology (more landmarks), the nerve of a local-PCA
   cover and (p in --learned-p) of a learned FIF chart mixture, d = 2, with orientability;
5. distances of the core points (and of all points) to the Klein-bottle and three-circle models.
Writes bench/results/topology_scale.md/.json and figures under bench/results/topology_scale/.

Example (the committed report):
  OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python bench/topology_scale.py --cache /work/runs/topology_cache --seed 0
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
from patchreg.topology.cover import fit_local_pca_cover  # noqa: E402
from patchreg.topology.model_fit import distance_summary, project_to_model  # noqa: E402
from patchreg.topology.orientation import patch_orientation  # noqa: E402
from patchreg.topology.patchsets import build_patch_set  # noqa: E402
from patchreg.topology.report import betti_text  # noqa: E402
from patchreg.topology.persistence import plot_barcodes  # noqa: E402
from patchreg.topology.pipeline import COMPLEXES, homology_from_charts, homology_from_persistence  # noqa: E402
from patchreg.topology.report import plot_chart_patches, plot_klein_square  # noqa: E402
from patchreg.topology.scale import ScaleConfig, choose_core_over_seeds, core_of, denoise, density_estimates, read_grid, seed_readings  # noqa: E402

IMAGES = ROOT.parent / "shared" / "data" / "natural" / "train400"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default=str(IMAGES))
    p.add_argument("--cache", required=True, help="cache folder for patch sets and kNN estimates (not in git)")
    p.add_argument("--seed", type=int, default=0, help="first seed: selection seeds, then the three held-out seeds")
    p.add_argument("--selection-seeds", type=int, default=3, help="seeds whose grids choose the core")
    p.add_argument("--patch-sizes", default="3,4,5,6,7,8")
    p.add_argument("--n-reference", type=int, default=100_000)
    p.add_argument("--n-queries", type=int, default=10_000)
    p.add_argument("--ks", default="5,15,50,100,300", help="k of the core grid")
    p.add_argument("--qs", default="10,20,30", help="q%% of the core grid")
    p.add_argument("--denoise", default="0,30", help="denoising neighbours tried in the grid (0: raw core)")
    p.add_argument("--grid-landmarks", type=int, default=150, help="landmarks of the core-grid readings")
    p.add_argument("--landmarks", type=int, default=300, help="landmarks of the chosen core's readings per seed")
    p.add_argument("--complex", default="rips", choices=COMPLEXES, help="persistent-homology complex")
    p.add_argument("--orientation-bins", type=int, default=0, help="> 0: cores per orientation bin (0: global cores)")
    p.add_argument("--learned-p", default="3", help="patch sizes that also get the learned chart nerve")
    p.add_argument("--learned-steps", type=int, default=300)
    p.add_argument("--charts", type=int, default=24, help="K for both chart covers (d = 2)")
    p.add_argument("--max-chart-points", type=int, default=6000)
    p.add_argument("--merge", default="", help="comma-separated result .json files of other runs of this script "
                   "(other patch sizes) merged into this report")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "topology_scale.md"))
    return p.parse_args(argv)


def chart_reading(core, fitter_name, k_charts, seed, steps):
    from patchreg.topology.learned_cover import learned_cover_fitter

    fitter = None if fitter_name == "pca" else learned_cover_fitter(steps, 32)
    start = time.time()
    r = homology_from_charts(core, k_charts, 2, seed, cover_fitter=fitter)
    return r, {"cover": fitter_name, "name": r["name"], "stable_in_tau": r["stable"], "betti_Z2": list(r["betti"]["Z2"]),
               "betti_Z3": list(r["betti"]["Z3"]), "orientable": r["orientable"], "tau": r["tau"],
               "run_length": r["run_length"], "seconds": round(time.time() - start, 1)}


def run_patch_size(p, args, fig_dir):
    start = time.time()
    pset = build_patch_set(args.images, p, args.cache, seed=0, progress=False)
    points = pset.points
    config = ScaleConfig(ks=tuple(int(k) for k in args.ks.split(",")), qs=tuple(float(q) for q in args.qs.split(",")),
                         denoise_neighbours=tuple(int(m) for m in args.denoise.split(",")),
                         n_reference=args.n_reference, n_queries=args.n_queries, grid_landmarks=args.grid_landmarks,
                         landmarks=args.landmarks, seeds=tuple(args.seed + args.selection_seeds + i for i in range(3)),
                         complex=args.complex, orientation_bins=args.orientation_bins).check()
    cache_key = pset.path.name
    selection = tuple(args.seed + i for i in range(args.selection_seeds))
    seeds = {}
    for s in selection + config.seeds:
        rows, rho, info = density_estimates(points, config, s, args.cache, cache_key)
        query_points = np.asarray(points[rows], dtype=np.float64)
        theta = patch_orientation(query_points, p) if config.orientation_bins else None
        seeds[s] = (query_points, rho, info, theta)
        print(f"p={p} seed {s}: kNN {info}", flush=True)
    s0 = config.seeds[0]  # the first held-out seed: figures and model fit
    t = time.time()
    grids = [read_grid(seeds[s][0], seeds[s][1], config, seed=s, theta=seeds[s][3]) for s in selection]
    grid_seconds = time.time() - t
    grid = grids[0]
    chosen = choose_core_over_seeds(grids)
    print(f"p={p} grid {grid_seconds:.0f}s, chosen X({chosen['k']},{chosen['q']:g}) denoise {chosen['denoise']}: "
          f"{chosen['name']} gap {chosen['gap']}", flush=True)
    k, q, m = chosen["k"], chosen["q"], chosen["denoise"]
    ph_rows, pca_rows, learned_rows = [], [], []
    learned = str(p) in args.learned_p.split(",")
    for s in config.seeds:
        qp, rho, _, theta = seeds[s]
        core = denoise(qp[core_of(rho, config.ks, k, q, theta, config.orientation_bins)], m)
        ph = homology_from_persistence(core, min(config.landmarks, len(core)), s, complex=config.complex)
        ph_rows.append({"seed": s, "name": ph["name"], "betti_Z2": list(ph["betti"]["Z2"]), "betti_Z3": list(ph["betti"]["Z3"]),
                        "gap": None if not np.isfinite(ph["gap"]) else round(float(ph["gap"]), 3), "reliable": ph["reliable"],
                        "top_bars": ph["top_bars"], "n_landmarks": ph["n_landmarks"]})
        if s == s0:
            plot_barcodes(ph["barcodes"], fig_dir / f"barcodes_p{p}.png",
                          title=f"p={p}, X({k},{q:g}), denoise {m}, seed {s}", threshold=ph["threshold"])
        rng = np.random.default_rng(s)
        sub = core if len(core) <= args.max_chart_points else core[np.sort(rng.choice(len(core), args.max_chart_points, replace=False))]
        r, row = chart_reading(sub, "pca", args.charts, s, args.learned_steps)
        pca_rows.append({"seed": s, **row})
        if learned:
            r, row = chart_reading(sub, "learned", args.charts, s, args.learned_steps)
            learned_rows.append({"seed": s, **row})
            if s == s0:
                plot_klein_square(r["cover"].centres, r["chosen"]["edges"], p, fig_dir / f"klein_square_p{p}.png",
                                  f"p={p}: learned chart centres on the Klein square")
                plot_chart_patches(sub, r["cover"], p, fig_dir / f"chart_patches_p{p}.png")
        elif s == s0:
            plot_klein_square(r["cover"].centres, r["chosen"]["edges"], p, fig_dir / f"klein_square_p{p}.png",
                              f"p={p}: local-PCA chart centres on the Klein square")
            plot_chart_patches(sub, r["cover"], p, fig_dir / f"chart_patches_p{p}.png")
        print(f"p={p} seed {s}: PH {ph_rows[-1]['name']} {ph_rows[-1]['betti_Z2']}/{ph_rows[-1]['betti_Z3']} gap {ph_rows[-1]['gap']}; "
              f"pca {pca_rows[-1]['name']} {pca_rows[-1]['betti_Z2']}/{pca_rows[-1]['betti_Z3']} or={pca_rows[-1]['orientable']}"
              + (f"; learned {learned_rows[-1]['name']} {learned_rows[-1]['betti_Z2']}/{learned_rows[-1]['betti_Z3']} "
                 f"or={learned_rows[-1]['orientable']} ({learned_rows[-1]['seconds']}s)" if learned else ""), flush=True)
    raw0 = seeds[s0][0][core_of(seeds[s0][1], config.ks, k, q, seeds[s0][3], config.orientation_bins)]
    core0 = denoise(raw0, m)
    fit = {}
    for name, pts in (("core", raw0), ("core_denoised", core0), ("all", seeds[s0][0])):
        fit[name] = {model: distance_summary(project_to_model(pts, p, model)[0]) for model in ("klein", "three-circle")}
    return {
        "patch_size": p, "patch_set": pset.meta, "n_points": len(points), "config": config.to_dict(),
        "knn": {s: seeds[s][2] for s in selection + config.seeds}, "grid": grid, "grid_seconds": round(grid_seconds, 1),
        "selection_seeds": list(selection), "held_out_seeds": list(config.seeds),
        "grid_names_over_selection_seeds": {f"{g['k']},{g['q']:g},{g['denoise']}": [gg["name"] for gg in col]
                                            for g, col in zip(grid, zip(*grids))},
        "chosen_core": {kk: v for kk, v in chosen.items() if kk != "top_bars"},
        "persistence": ph_rows, "persistence_stability": seed_readings(ph_rows),
        "nerve_pca": pca_rows, "nerve_pca_stability": seed_readings([{**r, "reliable": r["stable_in_tau"]} for r in pca_rows]),
        "nerve_learned": learned_rows,
        "nerve_learned_stability": seed_readings([{**r, "reliable": r["stable_in_tau"]} for r in learned_rows]) if learned_rows else None,
        "model_fit": fit, "seconds": round(time.time() - start, 1),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    out, fig_dir = single_threaded_report(args.out)
    json_path = out.with_suffix(".json")
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    for p in [int(x) for x in args.patch_sizes.split(",") if x]:
        results[str(p)] = run_patch_size(p, args, fig_dir)
        atomic_write_json(json_path, results)  # after every p: an interrupted run keeps what it finished
    for other in filter(None, args.merge.split(",")):
        results.update(json.loads(Path(other).read_text()))
    atomic_write_json(json_path, results)
    command = "OMP_NUM_THREADS=1 .venv/bin/python bench/topology_scale.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    atomic_write_text(out, markdown(results, command, fig_dir.name))
    print(f"wrote {out}")
    return 0


def markdown(results, command, fig_dir):
    lines = ["# The patch manifold of natural images at scale, p = 3..8", "", f"Command: `{command}`", "",
             "Machine: 2-core CPU shared with other jobs, everything on one thread, niced.", "",
             "## Answer table", "",
             "| p | high-contrast patches | core (k, q%, denoise) | core points | PH Betti Z/2 / Z/3 (seeds) | PH verdict, stable | "
             "local-PCA nerve Betti (seeds) | nerve verdict, stable | learned nerve Betti (seeds) | learned verdict, stable, orientable | "
             "Klein fit median (q90) | three-circle fit median (q90) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(results, key=int):
        r = results[p]
        c = r["chosen_core"]
        ph = "; ".join(betti_text(x) for x in r["persistence"])
        pca = "; ".join(betti_text(x) for x in r["nerve_pca"])
        lr = "; ".join(betti_text(x) for x in r["nerve_learned"]) or "-"
        lv = (f"{r['nerve_learned_stability']['verdict']}, {r['nerve_learned_stability']['stable']}, "
              f"{[x['orientable'] for x in r['nerve_learned']]}") if r["nerve_learned"] else "-"
        fk, f3 = r["model_fit"]["core"]["klein"], r["model_fit"]["core"]["three-circle"]
        lines.append(f"| {p} | {r['n_points']:,} | X({c['k']}, {c['q']:g}), {c['denoise']}{' (fragile)' if c['fragile'] else ''} | "
                     f"{c['n_core']} | {ph} | {r['persistence_stability']['verdict']}, {r['persistence_stability']['stable']} | "
                     f"{pca} | {r['nerve_pca_stability']['verdict']}, {r['nerve_pca_stability']['stable']} | {lr} | {lv} | "
                     f"{fk['q50']} ({fk['q90']}) | {f3['q50']} ({f3['q90']}) |")
    lines += [""]
    for p in sorted(results, key=int):
        r, c = results[p], results[p]["chosen_core"]
        if "selection_seeds" in r:
            lines.append(f"- p = {p}: core chosen on selection seeds {r['selection_seeds']} ({c['reason']}; gaps there "
                         f"{c.get('selection_gaps')}); the PH and nerve columns are the held-out seeds {r['held_out_seeds']}.")
    lines += ["", "Core points: of the seed's query sample (n_queries); k counts neighbours in the reference subsample.",
              "Model fit: chord distance on the patch sphere of the raw core points (first held-out seed) to the nearest model patch.", ""]
    lines += ["## Patch sets and kNN times", "", "| p | images | all patches | kept (top 20%) | build (s) | kNN method | kNN (s) per seed |",
              "|---|---|---|---|---|---|---|"]
    for p in sorted(results, key=int):
        r = results[p]
        m = r["patch_set"]
        knn = list(r["knn"].values())
        lines.append(f"| {p} | {m['n_images']} | {m['n_patches_total']:,} | {m['n_points']:,} | {m['build_seconds']} | "
                     f"{knn[0].get('method', 'cached')} ({knn[0]['n_queries']} queries x {knn[0]['n_reference']} reference) | "
                     f"{', '.join(str(x['seconds']) for x in knn)} |")
    lines += ["", "## Model fit per p (first held-out seed): chord distance to the nearest model patch, median (q10-q90)", "",
              "| p | core -> Klein | core -> three-circle | denoised core -> Klein | all points -> Klein | all points -> three-circle |",
              "|---|---|---|---|---|---|"]
    f = lambda s: f"{s['q50']} ({s['q10']}-{s['q90']})"  # noqa: E731
    for p in sorted(results, key=int):
        m = results[p]["model_fit"]
        lines.append(f"| {p} | {f(m['core']['klein'])} | {f(m['core']['three-circle'])} | {f(m['core_denoised']['klein'])} | "
                     f"{f(m['all']['klein'])} | {f(m['all']['three-circle'])} |")
    lines += ["", "## Core grid (first selection seed, persistent homology, grid landmarks; last column: the reading on "
              "every selection seed)", ""]
    for p in sorted(results, key=int):
        r = results[p]
        over = r.get("grid_names_over_selection_seeds", {})
        lines += [f"### p = {p} (grid {r['grid_seconds']} s)", "", "| k | q% | denoise | points | Betti Z/2 / Z/3 | gap | reliable | verdict | top H1 Z/2 | top H1 Z/3 | top H2 Z/2 | top H2 Z/3 | selection seeds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for g in r["grid"]:
            tb = g["top_bars"]
            names = over.get(f"{g['k']},{g['q']:g},{g['denoise']}", [])
            short = "; ".join(n if not n.startswith("other") else "other" for n in names) or "-"
            lines.append(f"| {g['k']} | {g['q']:g} | {g['denoise']} | {g['n_core']} | {betti_text(g)} | {g['gap']} | {g['reliable']} | "
                         f"{g['name']} | {tb['Z2 H1'][:4]} | {tb['Z3 H1'][:4]} | {tb['Z2 H2'][:3]} | {tb['Z3 H2'][:3]} | {short} |")
        lines.append("")
    lines += ["## Figures", ""]
    for p in sorted(results, key=int):
        lines.append(f"- p = {p}: ![barcodes]({fig_dir}/barcodes_p{p}.png) ![Klein square]({fig_dir}/klein_square_p{p}.png) "
                     f"![patches per chart]({fig_dir}/chart_patches_p{p}.png)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
