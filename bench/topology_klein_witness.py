"""The Klein bottle in 3x3 natural-image patches (issue 12) by Carlsson et al.'s own complex, the lazy
witness complex, on density cores against the FULL high-contrast set of train400, plain and per orientation.

1. Density: rho_k of the first S x n rows of the p = 3 patch set (rows are in seeded random order) against
   all 2.5 million points (cKDTree, resumable 100k-row chunks). Subsample s = rows [s n, (s+1) n): S
   disjoint, independent subsamples.
2. Orientation shares of the cores (patchreg.topology.orientation): train400's plain cores X(k, q) against
   its orientation-stratified cores and against the van Hateren sample n50000Dct.mat (density within its
   50k points, as Carlsson et al.).
3. Readings: for each subsample, core kind (plain X(k, q); stratified: the q% densest of each of `bins`
   orientation bins), q and landmarks L: the core, denoised (each point -> mean of its m nearest core points),
   the lazy witness complex (nu = 1) on L maxmin landmarks with every core point a witness, barcodes over
   Z/2 and Z/3, the long-bar rule of persistence.py (reliable iff gap >= 1.5). Z/2-excess = long bars over
   Z/2 minus over Z/3 per dimension: (0, 1, 1) for a Klein bottle or a projective plane, (0, 0, 0) for every
   orientable surface and graph.
4. Selection, then held-out check: the configuration (kind, q, L) is chosen on subsample 0 alone (the
   reading with the largest gap among those that name a topology, i.e. not "other"); its readings on the
   held-out subsamples 1..S-1 are the result.
5. The chart nerve on the chosen core (first `--nerve` subsamples): a learned FIF chart mixture with d = 2
   charts, K = 48, fitted on 3000 maxmin (density-balanced) core points (patchreg.topology.learned_cover,
   pipeline.chart_subset), its nerve and orientability.

  OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/topology_klein_witness.py --cache /work/runs/topology_cache \\
      --subsamples 6 --nerve 3
Writes bench/results/topology_klein_witness.md/.json and barcodes in topology_klein_witness/.

--rotations R: the patch set of the images and their views rotated by 90 r / R degrees (patchsets.py), each
angle's top 20% by contrast; the density reference is then its first --reference rows (a uniform subsample, the
size of the unrotated set by default) and the report goes to topology_klein_witness_rot<R>.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report_paths import single_threaded_report  # noqa: E402
from patchreg.io import atomic_write_json, atomic_write_text  # noqa: E402
from patchreg.topology.density import density_core  # noqa: E402
from patchreg.topology.knn import chunked_kth_neighbour_distances  # noqa: E402
from patchreg.topology.orientation import orientation_shares, patch_orientation  # noqa: E402
from patchreg.topology.patchsets import build_patch_set  # noqa: E402
from patchreg.topology.report import betti_text  # noqa: E402
from patchreg.topology.persistence import plot_barcodes, read_betti, top_lengths  # noqa: E402
from patchreg.topology.preprocessing import load_points  # noqa: E402
from patchreg.topology.scale import core_of, denoise  # noqa: E402
from patchreg.topology.verdict import name_topology  # noqa: E402
from patchreg.topology.witness import witness_barcodes  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
KS = (10, 25, 50, 100)
UNROTATED_POINTS = 2_534_720  # train400's high-contrast 3x3 patches (RESULTS.md, issue 12)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", required=True, help="folder of the patch set and the kNN chunks")
    p.add_argument("--subsamples", type=int, default=6)
    p.add_argument("--subsample-size", type=int, default=200_000)
    p.add_argument("--k", type=int, default=100, choices=KS)
    p.add_argument("--qs", default="20,25,30,35")
    p.add_argument("--landmarks", default="100,150")
    p.add_argument("--denoise", type=int, default=100, help="m nearest core points averaged")
    p.add_argument("--bins", type=int, default=16)
    p.add_argument("--nerve", type=int, default=3, help="subsamples whose chosen core gets the chart nerve")
    p.add_argument("--nerve-charts", type=int, default=48, help="K of the learned chart mixture (d = 2)")
    p.add_argument("--nerve-points", type=int, default=3000, help="core points the charts are fitted on")
    p.add_argument("--nerve-sample", default="maxmin", choices=["maxmin", "random"],
                   help="how those points are drawn from the core (patchreg.topology.pipeline.chart_subset); the "
                        "report of 2026-12-07 morning used --nerve-charts 24 --nerve-points 8000 --nerve-sample random")
    p.add_argument("--nerve-steps", type=int, default=300, help="mixture steps (learned_cover.default_train_config)")
    p.add_argument("--nerve-overlap", default="reconstruction", choices=["reconstruction", "ownership"],
                   help="how chart overlaps are read (learned_cover.py)")
    p.add_argument("--rotations", type=int, default=1, help="views per image at 90 r / R degrees (1: the images only)")
    p.add_argument("--reference", type=int, default=UNROTATED_POINTS,
                   help="rows of the patch set the density is estimated against (all when it has fewer)")
    p.add_argument("--out", default=None, help="report path (default: results/topology_klein_witness[_rot<R>].md)")
    args = p.parse_args(argv)
    if args.subsamples < 2:
        p.error(f"--subsamples must be >= 2 (one to choose on, one to check), got {args.subsamples}")
    if args.rotations < 1:
        p.error(f"--rotations must be >= 1, got {args.rotations}")
    if args.reference < args.subsamples * args.subsample_size:
        p.error(f"--reference must hold the {args.subsamples} x {args.subsample_size} query rows, got {args.reference}")
    if args.out is None:
        suffix = "" if args.rotations == 1 else f"_rot{args.rotations}"
        args.out = str(ROOT / "bench" / "results" / f"topology_klein_witness{suffix}.md")
    return args


def diagonal_share(shares8) -> float:
    return float(shares8[2] + shares8[6])  # bins centred on 45 and 135 degrees (+-11.25)


def orientation_row(name, theta):
    shares = orientation_shares(theta, 8)
    return {"data": name, "n": len(theta), "shares": [round(float(x), 3) for x in shares],
            "diagonal": round(diagonal_share(shares), 3)}


def reading(core, landmarks, seed):
    barcodes, _ = witness_barcodes(core, landmarks, seed=seed, nu=1)
    r = read_betti(barcodes)
    z2, z3 = r["betti"]["Z2"], r["betti"]["Z3"]
    named = name_topology(z2, z3)
    tops = top_lengths(barcodes, 4)
    return barcodes, r, {"name": named if r["reliable"] else f"other (no clear gap: {named})", "named": named,
                         "betti_Z2": list(z2), "betti_Z3": list(z3), "z2_excess": [int(a - b) for a, b in zip(z2, z3)],
                         "gap": round(float(r["gap"]), 3) if np.isfinite(r["gap"]) else None,
                         "reliable": bool(r["reliable"]), "threshold": round(float(r["threshold"]), 4),
                         "H1": [tops["Z2 H1"], tops["Z3 H1"]], "H2": [tops["Z2 H2"], tops["Z3 H2"]]}


def cores_of(rho_k, theta, q, bins):
    """{"plain": X(k, q), "stratified": the same per orientation bin}, indices into the subsample."""
    rho = rho_k[:, None]
    return {"plain": core_of(rho, [0], 0, q), "stratified": core_of(rho, [0], 0, q, theta, bins)}


def read_subsample(s, points, theta, rho_k, args):
    rows, barcodes = [], {}
    for q in [float(x) for x in args.qs.split(",")]:
        for kind, idx in cores_of(rho_k, theta, q, args.bins).items():
            start = time.time()
            core = denoise(points[idx], args.denoise)
            for L in [int(x) for x in args.landmarks.split(",")]:
                bc, r, row = reading(core, L, seed=s)
                row.update(subsample=s, kind=kind, q=q, L=L, n_core=len(core), seconds=round(time.time() - start, 1),
                           diagonal=round(diagonal_share(orientation_shares(theta[idx], 8)), 3))
                rows.append(row)
                barcodes[(kind, q, L)] = (bc, r["threshold"])
                print(f"  s{s} {kind:10s} X({args.k},{q:g}) L{L}: {row['named'][:40]:40s} {tuple(row['betti_Z2'])}/"
                      f"{tuple(row['betti_Z3'])} excess {tuple(row['z2_excess'])} gap {row['gap']}", flush=True)
    return rows, barcodes


def choose(rows):
    """The documented selection on subsample 0: the largest gap among readings that name a topology."""
    named = [r for r in rows if not r["named"].startswith("other")]
    pool = named or rows
    best = max(pool, key=lambda r: (r["gap"] or 0.0))
    return {"kind": best["kind"], "q": best["q"], "L": best["L"], "name_on_selection": best["named"],
            "gap_on_selection": best["gap"], "rule": "largest gap among named readings" if named else
            "no reading named a topology: largest gap"}


def chart_nerve(points, seed, n_charts=48, n_points=3000, steps=300, overlap="reconstruction", sample="maxmin"):
    """The learned chart nerve two ways from one cover: the scan's stable verdict (pipeline.chart_verdict) and
    the barcodes of the nerve filtration over tau (nerve_persistence.py)."""
    from patchreg.topology.learned_cover import fit_chart_mixture_cover, default_train_config
    from patchreg.topology.nerve_persistence import persistent_chart_verdict
    from patchreg.topology.pipeline import chart_subset, chart_verdict

    sub = chart_subset(points, sample, n_points, seed)
    start = time.time()
    cover = fit_chart_mixture_cover(sub, n_charts, 2, seed, config=default_train_config(seed, steps), width=32,
                                    overlap=overlap)
    r = chart_verdict(cover, points=sub)
    pers = persistent_chart_verdict(cover, points=sub, cut="none")  # as its committed reports were read
    return {"name": r["name"], "betti_Z2": list(r["betti"]["Z2"]), "betti_Z3": list(r["betti"]["Z3"]),
            "orientable": r.get("orientable"), "stable": bool(r["stable"]),
            "persistence": {"name": pers["name"], "betti_Z2": list(pers["betti"]["Z2"]), "betti_Z3": list(pers["betti"]["Z3"]),
                            "gap": round(float(pers["gap"]), 3), "reliable": bool(pers["reliable"]),
                            "orientable": pers["orientable"], "tau_star": round(pers["tau_star"], 3),
                            "H1": [pers["top_bars"]["Z2 H1"][:4], pers["top_bars"]["Z3 H1"][:4]],
                            "H2": [pers["top_bars"]["Z2 H2"][:3], pers["top_bars"]["Z3 H2"][:3]]},
            "n_charts": n_charts, "n_points": len(sub), "sample": sample, "steps": steps, "overlap": overlap,
            "seconds": round(time.time() - start)}


def main(argv=None) -> int:
    args = parse_args(argv)
    out, fig_dir = single_threaded_report(args.out)
    pset = build_patch_set(DATA / "natural" / "train400", 3, args.cache, seed=0, progress=False, rotations=args.rotations)
    n_rows = args.subsamples * args.subsample_size
    start = time.time()
    n_ref = min(args.reference, len(pset))
    ref_tag = "" if n_ref == len(pset) else f"_ref{n_ref}"  # the unrotated run's chunk names stay valid
    prefix = Path(args.cache) / f"rho_full_{pset.path.stem}{ref_tag}_k{'-'.join(map(str, KS))}"
    rho = chunked_kth_neighbour_distances(np.asarray(pset.points[:n_ref]), KS, n_rows, prefix, progress=True)[:, KS.index(args.k)]
    knn_seconds = round(time.time() - start, 1)
    results = {"args": vars(args), "patch_set": pset.meta, "n_reference": n_ref, "knn_seconds_this_run": knn_seconds,
               "orientation": [],
               "readings": [], "nerve": []}

    first = np.asarray(pset.points[: args.subsample_size], dtype=np.float64)
    theta0 = patch_orientation(first, 3)
    name = "train400" if args.rotations == 1 else f"train400 at {args.rotations} angles"
    results["orientation"].append(orientation_row(f"{name}, all high-contrast (subsample 0)", theta0))
    for q in (10.0, 30.0):
        for kind, idx in cores_of(rho[: args.subsample_size], theta0, q, args.bins).items():
            results["orientation"].append(orientation_row(f"{name} {kind} X({args.k}, {q:g})", theta0[idx]))
    vh = load_points(DATA / "carlsson" / "n50000Dct.mat")
    theta_vh = patch_orientation(vh, 3)
    results["orientation"].append(orientation_row("van Hateren n50000Dct, all", theta_vh))
    for k, q in ((15, 30.0), (100, 10.0), (300, 30.0)):
        results["orientation"].append(orientation_row(f"van Hateren X({k}, {q:g}) (50k sample)",
                                                      theta_vh[density_core(vh, k, q)]))

    chosen = None
    for s in range(args.subsamples):
        rows_s = slice(s * args.subsample_size, (s + 1) * args.subsample_size)
        points = np.asarray(pset.points[rows_s], dtype=np.float64)
        theta = theta0 if s == 0 else patch_orientation(points, 3)
        rows, barcodes = read_subsample(s, points, theta, rho[rows_s], args)
        results["readings"] += rows
        if s == 0:
            chosen = choose(rows)
            results["chosen"] = chosen
            print(f"chosen on subsample 0: {chosen}", flush=True)
        key = (chosen["kind"], chosen["q"], chosen["L"])
        bc, threshold = barcodes[key]
        plot_barcodes(bc, fig_dir / f"chosen_s{s}.png", threshold=threshold,
                      title=f"subsample {s}: {key[0]} X({args.k},{key[1]:g}), denoise {args.denoise}, L {key[2]}, lazy witness")
        if s < args.nerve:
            idx = cores_of(rho[rows_s], theta, chosen["q"], args.bins)[chosen["kind"]]
            nerve = chart_nerve(denoise(points[idx], args.denoise), s, args.nerve_charts, args.nerve_points,
                                args.nerve_steps, args.nerve_overlap, args.nerve_sample)
            results["nerve"].append({"subsample": s, **nerve})
            print(f"  chart nerve s{s}: {nerve}", flush=True)
        atomic_write_json(out.with_suffix(".json"), results)
    command = "OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/topology_klein_witness.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    atomic_write_text(out, markdown(results, command, fig_dir.name))
    print(f"wrote {out}")
    return 0


def rotated_text(meta) -> str:
    if meta.get("rotations", 1) == 1:
        return ""
    return (f" seen at {meta['rotations']} angles ({', '.join(f'{x:g}' for x in meta['angles'])} degrees; cubic-spline "
            "rotation, patches wholly inside the rotated image, the top 20% of each angle)")


def reference_text(results, meta) -> str:
    n_ref = results.get("n_reference", meta["n_points"])
    if n_ref >= meta["n_points"]:
        return f"all {meta['n_points']:,} points"
    return f"the first {n_ref:,} rows (a uniform random subsample, rows are stored in seeded random order)"


def markdown(results, command, fig_dir):
    a, chosen = results["args"], results["chosen"]
    meta = results["patch_set"]
    rows = results["readings"]
    n_sub = a["subsamples"]
    lines = ["# The Klein bottle in 3x3 natural-image patches: lazy witness complexes on full-scale cores (issue 12)", "",
             f"Command: `{command}`", "",
             f"Data: train400, every 3x3 patch{rotated_text(meta)}, top 20% by D-norm: {meta['n_points']:,} points on S^7. "
             f"Density rho_{a['k']} of {n_sub} disjoint subsamples of {a['subsample_size']:,} rows against "
             f"{reference_text(results, meta)} "
             f"(cKDTree, cached chunks; {results['knn_seconds_this_run']} s in this run). Cores: plain X({a['k']}, q) (the q% "
             f"densest of the subsample) or stratified (the q% densest of each of {a['bins']} orientation bins); each core "
             f"denoised (mean of its {a['denoise']} nearest core points); lazy witness complex (nu = 1) on L maxmin landmarks, "
             "every core point a witness; Betti numbers by the long-bar rule (reliable iff gap >= 1.5). Z/2-excess = long "
             "bars over Z/2 minus over Z/3 in (H0, H1, H2): (0, 1, 1) for a Klein bottle or a projective plane, (0, 0, 0) for "
             "any orientable surface or graph. 1 thread, 2-core CPU shared with other jobs.", "",
             "## Orientation of the dense patches", "",
             "Shares of the points per orientation (structure-tensor gradient direction, 8 bins centred on 0, 22.5, ... "
             "157.5 degrees); diagonal = the bins on 45 and 135 degrees.", "",
             "| data | points | shares 0 / 22 / 45 / 67 / 90 / 112 / 135 / 157 deg | diagonal |", "|---|---|---|---|"]
    for r in results["orientation"]:
        lines.append(f"| {r['data']} | {r['n']:,} | {' / '.join(f'{x:.3f}' for x in r['shares'])} | {r['diagonal']:.3f} |")
    lines += ["", "## Chosen on subsample 0, checked on the held-out subsamples", "",
              f"Rule: {chosen['rule']}. Chosen: **{chosen['kind']} X({a['k']}, {chosen['q']:g}), L {chosen['L']}** "
              f"(on subsample 0: {chosen['name_on_selection']}, gap {chosen['gap_on_selection']}).", "",
              "| subsample | role | points | Betti Z/2 / Z/3 | Z/2-excess | gap | reading | top H1 Z/2 ; Z/3 | top H2 Z/2 ; Z/3 |",
              "|---|---|---|---|---|---|---|---|---|"]
    pick = [r for r in rows if (r["kind"], r["q"], r["L"]) == (chosen["kind"], chosen["q"], chosen["L"])]
    for r in pick:
        role = "selection" if r["subsample"] == 0 else "held out"
        lines.append(f"| {r['subsample']} | {role} | {r['n_core']:,} | {betti_text(r)} | {tuple(r['z2_excess'])} | {r['gap']} | "
                     f"{r['name']} | {r['H1'][0]} ; {r['H1'][1]} | {r['H2'][0]} ; {r['H2'][1]} |")
    held = [r for r in pick if r["subsample"] > 0]
    lines += ["", f"Held out: Klein-bottle Betti numbers in {sum(r['named'] == 'Klein bottle' for r in held)} of {len(held)}, "
              f"reliable (gap >= 1.5) in {sum(r['reliable'] and r['named'] == 'Klein bottle' for r in held)} of {len(held)}; "
              f"Z/2-excess (0, 1, 1) in {sum(r['z2_excess'] == [0, 1, 1] for r in held)} of {len(held)}.", "",
              "## Every configuration over the subsamples", "",
              "| core | q | L | Klein-bottle Betti numbers | of them reliable | Z/2-excess (0, 1, 1) | readings (subsample: name, gap) |",
              "|---|---|---|---|---|---|---|"]
    configs = sorted({(r["kind"], r["q"], r["L"]) for r in rows})
    for kind, q, L in configs:
        rs = [r for r in rows if (r["kind"], r["q"], r["L"]) == (kind, q, L)]
        klein = [r for r in rs if r["named"] == "Klein bottle"]
        lines.append(f"| {kind} | {q:g} | {L} | {len(klein)} of {len(rs)} | {sum(r['reliable'] for r in klein)} | "
                     f"{sum(r['z2_excess'] == [0, 1, 1] for r in rs)} of {len(rs)} | "
                     + "; ".join(f"{r['subsample']}: {r['named'][:28]} {betti_text(r)} {r['gap']}" for r in rs) + " |")
    if results["nerve"]:
        n0 = results["nerve"][0]
        lines += ["", f"## Chart nerve of the chosen core (learned FIF charts, d = 2, K = {n0.get('n_charts', 24)}, "
                  f"{n0.get('n_points', 8000)} {n0.get('sample', 'random')} core points, {n0.get('steps', 300)} mixture steps, overlaps by "
                  f"{n0.get('overlap', 'reconstruction')})", "",
                  "Scan: the Betti numbers held on 3 consecutive overlap thresholds (pipeline.chart_verdict). Persistence: the "
                  "barcodes of the nerve filtration over the threshold, read by the long-bar rule (nerve_persistence.py), "
                  "orientability at the latest birth of a long bar.", "",
                  "| subsample | scan verdict | scan Betti Z/2 / Z/3 | scan orientable | stable | persistence verdict | "
                  "persistence Betti Z/2 / Z/3 | gap | orientable | top H1 Z/2 ; Z/3 | top H2 Z/2 ; Z/3 | seconds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["nerve"]:
            p = r.get("persistence")
            tail = (f"{p['name']} | {betti_text(p)} | {p['gap']} | {p['orientable']} | {p['H1'][0]} ; {p['H1'][1]} | "
                    f"{p['H2'][0]} ; {p['H2'][1]}" if p else "- | - | - | - | - | -")
            lines.append(f"| {r['subsample']} | {r['name']} | {betti_text(r)} | {r['orientable']} | {r['stable']} | {tail} | "
                         f"{r['seconds']} |")
    lines += ["", f"Barcodes of the chosen configuration: {fig_dir}/chosen_s<subsample>.png", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
