"""The Klein bottle at p = 3, 4, 5, ... from rotated views of train400 (issue 12), one protocol for every p.

Per patch size p:
1. the patch set of every train400 image seen at R angles (patchsets.py, rotations R, each angle's top 20%);
2. disjoint query samples (--seeds, default 0-2: rows [s n, (s+1) n) of the randomly ordered set), rho_k of each
   against the first --reference rows (brute force or cKDTree, patchreg.topology.knn); seeds past the first
   --reference rows use the next disjoint block of --reference rows as theirs (query_block), so that held-out
   seeds keep the density scale k / reference; rho_k is cached under --cache;
3. per seed and core (plain X(k, q) and per-orientation, q in --qs), denoised (mean of m nearest core points),
   the lazy witness complex on L maxmin landmarks, Betti numbers over Z/2 and Z/3 by the long-bar rule;
4. distances of the core points to the Klein-bottle and three-circle models (model_fit.py).
The protocol (k / reference, q, m / core size, L) is fixed for every p: it is the scale of the p = 3 run of
topology_klein_witness.py (k 100 of 2.5 million) shrunk to --reference points (the kNN of p >= 4 is brute force).

  OMP_NUM_THREADS=1 .venv/bin/python bench/topology_rotated_sizes.py --cache /work/runs/topology_cache --patch-sizes 3,4,5,6,7,8
Writes bench/results/topology_rotated_sizes.md/.json.
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
from bench.topology_klein_witness import cores_of, reading  # noqa: E402
from patchreg.io import atomic_write_json, atomic_write_text  # noqa: E402
from patchreg.topology.knn import kth_neighbour_distances  # noqa: E402
from patchreg.topology.model_fit import distance_summary, project_to_model  # noqa: E402
from patchreg.topology.orientation import patch_orientation  # noqa: E402
from patchreg.topology.patchsets import build_patch_set  # noqa: E402
from patchreg.topology.report import betti_text  # noqa: E402
from patchreg.topology.scale import denoise  # noqa: E402

IMAGES = ROOT.parent / "shared" / "data" / "natural" / "train400"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", required=True, help="folder of the patch sets (not in git)")
    p.add_argument("--patch-sizes", default="3,4,5")
    p.add_argument("--rotations", type=int, default=6)
    p.add_argument("--reference", type=int, default=500_000, help="rows the density is estimated against")
    p.add_argument("--queries", type=int, default=50_000, help="rows per seed (disjoint seeds)")
    p.add_argument("--seeds", default="0,1,2", help="data seeds: disjoint query samples (see query_block)")
    p.add_argument("--k", type=int, default=20, help="k of rho_k (20 of 500,000: the density scale of 100 of 2.5 million)")
    p.add_argument("--qs", default="30,35")
    p.add_argument("--denoise", type=int, default=50, help="m nearest core points averaged")
    p.add_argument("--landmarks", default="100,150")
    p.add_argument("--bins", type=int, default=16)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "topology_rotated_sizes.md"))
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.patch_sizes.split(",")]
    if min(sizes) < 3 or max(sizes) > 8:
        p.error(f"--patch-sizes must lie in 3..8, got {sizes}")
    if args.rotations < 1:
        p.error(f"--rotations must be >= 1, got {args.rotations}")
    if not 1 <= args.queries <= args.reference:
        p.error(f"--queries must be in [1, --reference {args.reference}], got {args.queries}")
    args.seed_list = [int(x) for x in args.seeds.split(",")]
    if min(args.seed_list) < 0:
        p.error(f"--seeds must be >= 0, got {args.seed_list}")
    if not 1 <= args.k < args.reference:
        p.error(f"--k must be in [1, {args.reference}), got {args.k}")
    args.sizes = sizes
    return args


def query_block(seed, queries, reference, n_rows):
    """(first reference row, query rows relative to it) of a data seed.

    The first --reference rows hold reference // queries disjoint query samples (seeds 0, 1, ..., as before);
    later seeds take the next disjoint block of --reference rows as their reference, so a held-out seed is
    estimated at the same density scale k / reference without a larger kNN."""
    per_block = reference // queries
    start = (seed // per_block) * reference
    if start + reference > n_rows:
        raise ValueError(f"--seeds: seed {seed} needs rows [{start:,}, {start + reference:,}) but the patch set has "
                         f"{n_rows:,} (at most seed {(n_rows // reference) * per_block - 1})")
    first = (seed % per_block) * queries
    return start, np.arange(first, first + queries)


def seed_sample(pset, seed, args):
    """(query points float64, rho_k of each, kNN seconds) of a data seed; rho_k cached under --cache."""
    start, rows = query_block(seed, args.queries, args.reference, len(pset.points))
    rho_path = Path(args.cache) / f"rho_{pset.path.stem}_ref{args.reference}_k{args.k}_q{args.queries}_s{seed}.npy"
    began = time.time()
    if rho_path.exists():
        rho = np.load(rho_path)
    else:  # the whole reference block is read only to compute rho_k
        ref = np.asarray(pset.points[start : start + args.reference], dtype=np.float32)
        rho = kth_neighbour_distances(ref, [args.k], query_rows=rows)[0][:, 0]
        tmp = rho_path.with_suffix(".tmp.npy")
        np.save(tmp, rho)
        tmp.replace(rho_path)
    points = np.asarray(pset.points[start + rows[0] : start + rows[-1] + 1], dtype=np.float64)  # rows are contiguous
    return points, rho, round(time.time() - began, 1)


def run_size(p, args):
    pset = build_patch_set(IMAGES, p, args.cache, seed=0, progress=False, rotations=args.rotations)
    rows = []
    for s in args.seed_list:
        points, rho, knn_seconds = seed_sample(pset, s, args)
        theta = patch_orientation(points, p)
        for q in [float(x) for x in args.qs.split(",")]:
            for kind, idx in cores_of(rho, theta, q, args.bins).items():
                start = time.time()
                core = denoise(points[idx], args.denoise)
                fit = {m: distance_summary(project_to_model(core, p, m)[0]) for m in ("klein", "three-circle")}
                for L in [int(x) for x in args.landmarks.split(",")]:
                    _, _, row = reading(core, L, seed=s)
                    row.update(p=p, seed=s, kind=kind, q=q, L=L, n_core=len(core), knn_seconds=knn_seconds,
                               seconds=round(time.time() - start, 1), fit=fit)
                    rows.append(row)
                    print(f"p={p} s{s} {kind:10s} q{q:g} L{L}: {row['named'][:40]:40s} {tuple(row['betti_Z2'])}/"
                          f"{tuple(row['betti_Z3'])} excess {tuple(row['z2_excess'])} gap {row['gap']}", flush=True)
    return {"p": p, "patch_set": pset.meta, "rows": rows}


def main(argv=None) -> int:
    args = parse_args(argv)
    out, _ = single_threaded_report(args.out)
    results = {"args": {k: v for k, v in vars(args).items()}, "sizes": []}
    for p in args.sizes:
        results["sizes"].append(run_size(p, args))
        atomic_write_json(out.with_suffix(".json"), results)
    command = "OMP_NUM_THREADS=1 .venv/bin/python bench/topology_rotated_sizes.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    atomic_write_text(out, markdown(results, command))
    print(f"wrote {out}")
    return 0


def _count(rows, test):
    return f"{sum(test(r) for r in rows)} of {len(rows)}"


def markdown(results, command):
    a = results["args"]
    lines = ["# The Klein bottle by patch size, from rotated views of train400 (issue 12)", "",
             f"Command: `{command}`", "",
             f"Data: every train400 image seen at {a['rotations']} angles (90 r / {a['rotations']} degrees), every p x p patch, "
             f"the top 20% by D-norm of each angle. Per p: disjoint query samples (seeds {a.get('seeds', '0,1,2')}) of {a['queries']:,} "
             f"rows, rho_{a['k']} against {a['reference']:,} rows holding them (a uniform random subsample; seeds past the first "
             f"{a['reference']:,} rows use the next disjoint block); cores plain X({a['k']}, q) "
             f"and per orientation ({a['bins']} bins), denoised (mean of {a['denoise']} nearest core points); lazy witness "
             f"complex (nu = 1) on L = {a['landmarks']} maxmin landmarks, every core point a witness; Betti numbers by the long-bar "
             "rule (reliable iff gap >= 1.5). Z/2-excess = long bars over Z/2 minus over Z/3: (0, 1, 1) for a Klein bottle "
             "or a projective plane. Distances: chord distance of each core point to the model's nearest grid point.", "",
             "## Summary per patch size", "",
             "| p | points (all angles) | readings | Klein bottle, reliable | Klein-bottle Betti numbers | Z/2-excess (0, 1, 1) | "
             "core -> Klein, median (q90) | core -> three circles, median (q90) |", "|---|---|---|---|---|---|---|---|"]
    for size in results["sizes"]:
        rows = size["rows"]
        klein = [r["fit"]["klein"] for r in rows]
        three = [r["fit"]["three-circle"] for r in rows]
        lines.append(f"| {size['p']} | {size['patch_set']['n_points']:,} | {len(rows)} | "
                     f"{_count(rows, lambda r: r['named'] == 'Klein bottle' and r['reliable'])} | "
                     f"{_count(rows, lambda r: r['named'] == 'Klein bottle')} | {_count(rows, lambda r: r['z2_excess'] == [0, 1, 1])} | "
                     f"{np.median([d['q50'] for d in klein]):.3f} ({np.median([d['q90'] for d in klein]):.3f}) | "
                     f"{np.median([d['q50'] for d in three]):.3f} ({np.median([d['q90'] for d in three]):.3f}) |")
    lines += ["", "## Every reading", "",
              "| p | seed | core | q | L | points | Betti Z/2 / Z/3 | Z/2-excess | gap | reading | top H1 Z/2 ; Z/3 | top H2 Z/2 ; Z/3 |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for size in results["sizes"]:
        for r in size["rows"]:
            lines.append(f"| {r['p']} | {r['seed']} | {r['kind']} | {r['q']:g} | {r['L']} | {r['n_core']:,} | {betti_text(r)} | "
                         f"{tuple(r['z2_excess'])} | {r['gap']} | {r['name']} | {r['H1'][0][:3]} ; {r['H1'][1][:3]} | "
                         f"{r['H2'][0][:2]} ; {r['H2'][1][:2]} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
