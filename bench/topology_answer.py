"""Issue 12's answer in one table: p = 3..8, both methods, one sample size, per-seed verdicts and their stability.

Reads what the two benches saved; computes nothing but the figures:
- persistent homology: topology_rotated_sizes.py JSONs (lazy witness readings of the plain and per-orientation
  cores, several landmark counts per data seed);
- the learned-chart nerve: topology_nerve_restarts.py folders (one JSON per (data seed, chart seed) FIF fit on the
  per-orientation core, its nerve filtration read with both overlaps).
Rules, fixed before the p >= 5 nerve fits were read:
- a reading counts as its named topology only with a clear gap (reliable); otherwise "no clear gap";
- a data seed's reading by a method is the reading held by more than half of that seed's readings (persistent
  homology: every core and landmark count; the nerve: every chart seed), else "mixed"; the seed reads the Klein
  bottle when more than half of its readings are reliable Klein-bottle readings;
- a method's verdict at p answers the issue's question, the Klein bottle or not: "Klein bottle" when every seed reads
  it, "not the Klein bottle" when none does (both stable), else unstable with the count;
- the nerve is read with --overlap (ownership: the better overlap at p = 3, 50,000 queries, 13 against 9 of 27 fits,
  before the 150,000-query runs), whole and, where the fits recorded it, cut at the first long loop's death
  (nerve_persistence.drop_late_classes; chosen on p = 3 and p = 4 fits already read, checked on the held-out seeds,
  p >= 5 and synthetic surfaces).
--figures (needs --cache) draws, for the first data seed and chart seed of each p, the saved FIF cover's chart centres
on the Klein bottle's square, its typical patches per chart and its nerve barcodes.

  .venv/bin/python bench/topology_answer.py --cache /work/runs/topology_cache --figures
Writes bench/results/topology_answer_q150k.md/.json and its figure folder.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.topology_nerve_restarts import CUT_SUFFIX  # noqa: E402
from patchreg.io import atomic_write_json, atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PH_DEFAULT = ",".join(str(RESULTS / f"topology_rotated_sizes_q150k_p{p}.json") for p in range(3, 9)) + "," + str(
    RESULTS / "topology_rotated_sizes_q150k_p3_heldout.json")
NERVE_DEFAULT = ",".join([str(RESULTS / "topology_nerve_restarts_q150k"), str(RESULTS / "topology_nerve_restarts_q150k_heldout")]
                         + [str(RESULTS / f"topology_nerve_restarts_p{p}_q150k") for p in range(4, 9)])
NO_GAP = "no clear gap"
CELL_NAME = re.compile(r"^p(\d+)_.*_s(\d+)_c(\d+)\.json$")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ph", default=PH_DEFAULT, help="comma-separated topology_rotated_sizes.py JSONs (missing ones skipped)")
    p.add_argument("--nerve", default=NERVE_DEFAULT, help="comma-separated topology_nerve_restarts.py folders (missing skipped)")
    p.add_argument("--overlap", default="ownership", choices=["ownership", "reconstruction"])
    p.add_argument("--figures", action="store_true", help="draw the first fit of each p (needs --cache)")
    p.add_argument("--cache", default=None, help="patch sets, rho_k and saved chart models of the benches")
    p.add_argument("--charts", type=int, default=48, help="the fits' settings, to find their saved models")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--queries", type=int, default=150_000)
    p.add_argument("--denoise", type=int, default=150)
    p.add_argument("--out", default=str(RESULTS / "topology_answer_q150k.md"))
    args = p.parse_args(argv)
    if args.figures and args.cache is None:
        p.error("--figures needs --cache (the saved chart models and rho_k)")
    return args


def ph_rows(paths):
    """{p: [reading rows]} from topology_rotated_sizes.py JSONs, each reading once (a rerun may repeat a file)."""
    out, seen = {}, set()
    for path in paths:
        if not Path(path).exists():
            continue
        for size in json.loads(Path(path).read_text())["sizes"]:
            for r in size["rows"]:
                key = (r["p"], r["seed"], r["kind"], r["q"], r["L"])
                if key not in seen:
                    seen.add(key)
                    out.setdefault(r["p"], []).append(r | {"n_points": size["patch_set"]["n_points"]})
    return out


def nerve_cells(dirs):
    """{p: [fit cells]} from topology_nerve_restarts.py folders (p from the file name)."""
    out = {}
    for folder in dirs:
        for path in sorted(Path(folder).glob("p*_s*_c*.json")) if Path(folder).is_dir() else []:
            m = CELL_NAME.match(path.name)
            if m:
                out.setdefault(int(m.group(1)), []).append(json.loads(path.read_text()) | {"file": str(path)})
    return out


def reading_of(r) -> str:
    return r["named"] if r["reliable"] else NO_GAP


def seed_reading(readings) -> str:
    """The reading held by more than half of one seed's readings, else 'mixed'."""
    name, count = Counter(readings).most_common(1)[0]
    return name if 2 * count > len(readings) else "mixed"


def reads_klein_by_majority(readings) -> bool:
    return 2 * sum(r["named"] == "Klein bottle" and r["reliable"] for r in readings) > len(readings)


def method_verdict(klein_per_seed: dict) -> tuple[str, str]:
    """(verdict, stability) over data seeds: the Klein bottle or not."""
    hits, n = sum(klein_per_seed.values()), len(klein_per_seed)
    if hits in (0, n):
        return ("Klein bottle" if hits else "not the Klein bottle"), f"stable ({n} of {n} seeds)"
    return f"Klein bottle in {hits} of {n} seeds", "unstable"


def modal_betti(items) -> str:
    (z2, z3), count = Counter((tuple(r["betti_Z2"]), tuple(r["betti_Z3"])) for r in items).most_common(1)[0]
    return f"{z2} / {z3} ({count} of {len(items)})"


def summarise(p, ph, cells, overlap):
    row = {"p": p}
    if ph:
        by_seed = {}
        for r in ph:
            by_seed.setdefault(r["seed"], []).append(r)
        fits = {(r["seed"], r["kind"]): r["fit"] for r in ph}  # one model fit per core
        row["ph"] = {"n_points": ph[0]["n_points"], "readings": len(ph), **_per_seed(by_seed),
                     "klein": sum(r["named"] == "Klein bottle" and r["reliable"] for r in ph),
                     "torsion": sum(r["z2_excess"] == [0, 1, 1] for r in ph), "betti": modal_betti(ph),
                     "fit": {m: [float(np.median([f[m][q] for f in fits.values()])) for q in ("q50", "q90")]
                             for m in ("klein", "three-circle")}}
    for name, key in (("nerve", overlap), ("nerve_cut", overlap + CUT_SUFFIX)):
        if cells and all(key in c["readings"] for c in cells):
            row[name] = nerve_summary(cells, key)
    return row


def _per_seed(by_seed) -> dict:
    """Per data seed: the majority reading and whether it reads the Klein bottle; the method's verdict."""
    klein_seeds = {s: reads_klein_by_majority(v) for s, v in sorted(by_seed.items())}
    return {"per_seed": {s: seed_reading([reading_of(r) for r in v]) for s, v in sorted(by_seed.items())},
            "klein_seeds": klein_seeds, "verdict": method_verdict(klein_seeds)}


def nerve_summary(cells, key) -> dict:
    by_seed = {}
    for c in cells:
        by_seed.setdefault(c["seed"], []).append(c["readings"][key])
    readings = [c["readings"][key] for c in cells]
    return {"fits": len(cells), **_per_seed(by_seed), "chart_seeds": sorted({c["chart_seed"] for c in cells}),
            "klein": sum(r["named"] == "Klein bottle" and r["reliable"] for r in readings),
            "torsion": sum(bool(r.get("torsion_in_bars")) for r in readings),
            "non_orientable": sum(r.get("orientable") is False for r in readings),
            "betti": modal_betti(readings), "gaps": [r["gap"] for r in readings]}


def overall(row) -> str:
    verdicts = [(name, row[key]["verdict"]) for name, key in (("PH", "ph"), ("nerve", "nerve"), ("nerve cut", "nerve_cut"))
                if key in row]
    if len(verdicts) > 1 and all(v == verdicts[0][1] for _, v in verdicts) and verdicts[0][1][1].startswith("stable"):
        return f"**{verdicts[0][1][0]}**, " + ("every reading" if len(verdicts) == 3 else "both methods") + ", stable"
    return "; ".join(f"{name}: {v[0]} ({v[1].split(' (')[0]})" for name, v in verdicts)


def markdown(rows, args, command, figures):
    lines = ["# The patch manifold for p = 3..8, both methods (issue 12)", "", f"Command: `{command}`", "",
             "Sources: " + ", ".join(f"`{Path(x).name}`" for x in args.ph.split(",") + args.nerve.split(",") if Path(x).exists()),
             "", "Every train400 image at 6 angles; per data seed 150,000 query rows, rho_20 against the 500,000 rows holding "
             "them (seeds 3-5: the next disjoint block); cores X(20, 30) plain and per orientation (16 bins), denoised by 150. "
             "Persistent homology: lazy witness complexes on 100, 150 and 200 maxmin landmarks. Nerve: 48 FIF charts "
             f"(d = 2, 300 steps, width 32) on 3000 maxmin points of the per-orientation core, the nerve filtration read with "
             f"{args.overlap} overlaps, whole and (\"cut\") without the classes born after the first long loop dies "
             "(patchreg.topology.nerve_persistence.drop_late_classes). A seed's reading is the one held by more than half of "
             "its readings (\"mixed\" otherwise); a seed reads the Klein bottle when more than half of its readings are "
             "reliable Klein-bottle readings; a method's verdict is \"Klein bottle\" or \"not the Klein bottle\" when every "
             "seed agrees (stable), else unstable. Readings without a clear gap (long-bar rule, gap < 1.5) count as \"no "
             "clear gap\".", "",
             "| p | points | PH readings | PH: modal Betti Z/2 / Z/3 | PH: Klein (reliable) | PH: Z/2 torsion | PH verdict | "
             "nerve fits | nerve: modal Betti Z/2 / Z/3 | nerve: Klein (reliable) | nerve: torsion in bars | nerve: non-orientable | "
             "nerve verdict | nerve cut: modal Betti | nerve cut: Klein (reliable) | nerve cut verdict | "
             "core -> Klein, median (q90) | core -> three circles | answer |",
             "|" + "---|" * 19]
    for row in rows:
        ph, nv, nc = row.get("ph"), row.get("nerve"), row.get("nerve_cut")
        cells = [str(row["p"]), f"{ph['n_points']:,}" if ph else "-"]
        cells += ([str(ph["readings"]), ph["betti"], str(ph["klein"]), str(ph["torsion"]),
                   f"{ph['verdict'][0]}, {ph['verdict'][1]}"] if ph else ["-"] * 5)
        cells += ([f"{nv['fits']} (chart seeds {','.join(map(str, nv['chart_seeds']))})", nv["betti"], str(nv["klein"]),
                   str(nv["torsion"]), str(nv["non_orientable"]), f"{nv['verdict'][0]}, {nv['verdict'][1]}"]
                  if nv else ["-"] * 6)
        cells += ([nc["betti"], str(nc["klein"]), f"{nc['verdict'][0]}, {nc['verdict'][1]}"] if nc else ["-"] * 3)
        cells += ([f"{ph['fit']['klein'][0]:.3f} ({ph['fit']['klein'][1]:.3f})",
                   f"{ph['fit']['three-circle'][0]:.3f} ({ph['fit']['three-circle'][1]:.3f})"] if ph else ["-"] * 2)
        cells.append(overall(row))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Per data seed (the majority reading; * the seed reads the Klein bottle)", "",
              "| p | seed | persistent homology | chart nerve | chart nerve, cut |", "|---|---|---|---|---|"]
    for row in rows:
        seeds = sorted(set().union(*(row[k]["per_seed"] for k in ("ph", "nerve", "nerve_cut") if k in row)))
        for s in seeds:
            lines.append(f"| {row['p']} | {s} | " + " | ".join(_seed_text(row.get(k), s) for k in ("ph", "nerve", "nerve_cut")) + " |")
    if figures:
        lines += ["", "## Figures (first data seed, first chart seed of each p)", ""]
        for p, names in figures.items():
            lines.append(f"- p = {p}: " + ", ".join(f"[{kind}]({path})" for kind, path in names.items()))
    lines.append("")
    return "\n".join(lines)


def _seed_text(method, seed) -> str:
    if not method or seed not in method["per_seed"]:
        return "-"
    return method["per_seed"][seed] + (" *" if method["klein_seeds"][seed] else "")


def draw_figures(rows, cells_by_p, args, fig_dir):
    """Chart centres on the Klein square, typical patches per chart and nerve barcodes of the first saved fit per p."""
    import torch

    from bench.topology_nerve_restarts import parse_args as restarts_args
    from bench.topology_rotated_nerve import _chart_square, core_points
    from patchreg.charts import build_mixture
    from patchreg.topology.learned_cover import cover_from_chart_mixture
    from patchreg.topology.nerve_persistence import persistent_chart_verdict
    from patchreg.topology.persistence import plot_barcodes
    from patchreg.topology.pipeline import chart_subset
    from patchreg.topology.report import plot_chart_patches

    out = {}
    for row in rows:
        p = row["p"]
        if p not in cells_by_p:
            continue
        first = min(cells_by_p[p], key=lambda c: (c["seed"], c["chart_seed"]))
        r = restarts_args(["--cache", args.cache, "--p", str(p), "--charts", str(args.charts), "--steps", str(args.steps),
                           "--queries", str(args.queries), "--denoise", str(args.denoise)])
        names = {"barcodes": f"{fig_dir.name}/nerve_p{p}.png", "chart centres": f"{fig_dir.name}/charts_square_p{p}.png",
                 "patches per chart": f"{fig_dir.name}/chart_patches_p{p}.png"}
        if all((fig_dir.parent / path).exists() for path in names.values()):
            out[p] = names  # drawn by an earlier run: the fits of a p do not change once saved
            continue
        model_path = Path(args.cache) / "restart_models" / f"{r.stem}_s{first['seed']}_c{first['chart_seed']}.pt"
        if not model_path.exists():
            print(f"p={p}: no saved model {model_path}, no figures", flush=True)
            continue
        sub = chart_subset(core_points(p, first["seed"], r.core_args), "maxmin", r.core_args.points, first["chart_seed"])
        model = build_mixture("fif", args.charts, sub.shape[1], 2, width=r.core_args.width)
        model.load_state_dict(torch.load(model_path))
        cover = cover_from_chart_mixture(model, sub, overlap=args.overlap)
        verdict = persistent_chart_verdict(cover, points=sub)
        plot_barcodes(verdict["barcodes"], fig_dir.parent / names["barcodes"], threshold=verdict["threshold"],
                      title=f"p = {p}, seed {first['seed']}: nerve of {args.charts} FIF charts ({args.overlap}): {verdict['name']}")
        _chart_square(cover, sub, verdict["tau_star"], fig_dir.parent / names["chart centres"], p)
        plot_chart_patches(sub, cover, p, fig_dir.parent / names["patches per chart"], max_charts=args.charts)
        out[p] = names
        print(f"p={p}: figures drawn ({verdict['name']})", flush=True)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    ph = ph_rows(args.ph.split(","))
    cells = nerve_cells(args.nerve.split(","))
    rows = [summarise(p, ph.get(p, []), cells.get(p, []), args.overlap) for p in sorted(set(ph) | set(cells))]
    figures = {}
    if args.figures:
        fig_dir = out.with_suffix("")
        fig_dir.mkdir(parents=True, exist_ok=True)
        figures = draw_figures(rows, cells, args, fig_dir)
    command = ".venv/bin/python bench/topology_answer.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    atomic_write_json(out.with_suffix(".json"), {"args": vars(args), "rows": rows, "figures": figures})
    atomic_write_text(out, markdown(rows, args, command, figures))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
