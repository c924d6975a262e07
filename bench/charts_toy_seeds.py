"""Toy-manifold chart mixtures over several seeds.

Summary mode (issue 4's 500-step table): reads the JSON of each seed's run of bench/charts_experiments.py
and writes mean (min-max) per manifold, family and K, and how often each family wins per metric.

    .venv/bin/python bench/charts_toy_seeds.py bench/results/charts_toy.json \\
        bench/results/charts_toy_seed1.json bench/results/charts_toy_seed2.json \\
        --out bench/results/charts_toy_seeds.md

Training mode (issue 15, `--train CELLS.jsonl`): trains every (manifold, family, seed) cell with the
defaults of `patchreg train charts` (patchreg.charts.training.TOY_DEFAULTS, K = the manifold's suggested
K) one after the other in this process (1 thread), appends each finished cell to CELLS.jsonl (cells
already there are skipped, so a stopped run resumes), then writes the table with the metrics relative
to each manifold's diameter, the sliced-W2 and coverage floors, and Alberti et al.'s code's numbers
(issue 15) next to ours:

    OMP_NUM_THREADS=1 .venv/bin/python bench/charts_toy_seeds.py --train /work/runs/issue15/cells.jsonl \\
        --manifolds two_circles,sphere,torus --families fif,vae --seeds 0,1,2 \\
        --out bench/results/charts_toy_converged.md

Ablations (issue 15's torus): `--charts`, `--width`, `--train-sigma`, `--batch-size`, `--lr`, `--seed-fraction`, `--overlap-scale`
(and `--n-train`, `--steps`) change one setting of the defaults; each cell records them and its variant name
(`--variant`, default: the changed settings, e.g. "charts=8", or "defaults"), cells are keyed by (manifold,
family, seed, variant), and `--ablation` writes one row per (variant, seed) instead of the converged table:

    OMP_NUM_THREADS=1 .venv/bin/python bench/charts_toy_seeds.py --train /work/runs/issue15/torus_ablation.jsonl \
        --manifolds torus --families fif --seeds 0 --charts 8 --ablation --out bench/results/charts_torus_ablation.md
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


# Alberti et al.'s code on their toys, as measured for issue 15 (their settings, 20k samples): mean
# distance / diameter, coverage, sliced W2 and its same-size true-vs-true floor
AUTHORS = {"two_circles": (0.0037 / 5, 1.0, 0.053, 0.033), "sphere": (0.0044 / 2, 1.0, 0.031, 0.006),
           "torus": (0.0112 / 8, 1.0, 0.044, 0.024)}
TABLE = [("dist_mean_rel", "dist mean / diam", 5), ("dist_p95_rel", "dist p95 / diam", 5), ("coverage", "coverage", 4),
         ("sliced_w2", "sliced W2", 4), ("sliced_w2_floor", "W2 floor", 4), ("heldout_nll", "held-out NLL", 3),
         ("train_seconds", "train s", 0)]


# the settings an ablation may change: option name -> TOY_DEFAULTS key (charts: the manifold's suggested K)
OVERRIDES = ("charts", "width", "train_sigma", "batch_size", "lr", "lr_final", "seed_fraction", "overlap_scale",
             "overlap_in_loss", "latent_blocks")
# the training settings a toy or a family may have of its own (TOY_SETTINGS, FAMILY_SETTINGS), named in table headers
SETTING_KEYS = ("batch_size", "lr", "train_sigma", "seed_fraction", "lr_schedule", "overlap_scale")


def w2_note(cells) -> str:
    """Which cells' sliced W2 is one sample draw (before 2026-12-06) and which the mean of 5, like its floor."""
    mean = sum("sliced_w2_draws" in c for c in cells)
    if mean == len(cells):
        return "the model's sliced W2 is the mean of 5 sample draws, like its floor"
    if mean == 0:
        return "the model's sliced W2 is one sample draw (cells from before 2026-12-06)"
    return f"the model's sliced W2 is the mean of 5 sample draws in {mean} of {len(cells)} cells, one draw in the others"


def overrides_of(args) -> dict:
    return {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}


def variant_of(args) -> str:
    if args.variant:
        return args.variant
    changed = [f"{k}={v}" for k, v in overrides_of(args).items()]
    if args.n_train != 5000:
        changed.append(f"n_train={args.n_train}")
    if args.steps is not None:
        changed.append(f"steps={args.steps}")
    if args.noise:
        changed.append(f"noise={args.noise:g}")
    return ",".join(changed) or "defaults"


def train_model(manifold: str, family: str, seed: int, n_train: int, n_eval: int, steps: int | None,
                overrides: dict | None = None, noise: float = 0.0):
    """One cell's model trained as `patchreg train charts` would (the toy's and family's defaults, `overrides` on top;
    `noise`: Gaussian noise of that standard deviation on the training and held-out points):
    (model, dataset, k, width, config, train seconds, history)."""
    import time

    import torch

    torch.set_num_threads(1)
    from patchreg.charts import build_mixture, train_mixture
    from patchreg.charts.datasets import load_dataset
    from patchreg.charts.training import toy_defaults, toy_train_config

    TOY_DEFAULTS = toy_defaults(manifold, family)  # with the family's and the toy's own settings, as the CLI
    data = load_dataset(f"toy:{manifold}", n_train, n_eval, seed, noise=noise)
    m = data.manifold
    overrides = dict(overrides or {})
    k = overrides.pop("charts", None) or TOY_DEFAULTS.get("charts") or m.suggested_charts
    width = overrides.pop("width", None) or TOY_DEFAULTS["width"]
    latent_blocks = overrides.pop("latent_blocks", None) or 0
    sigma = overrides.get("train_sigma", TOY_DEFAULTS["train_sigma"])
    torch.manual_seed(seed)
    model = build_mixture(family, k, m.ambient_dim, m.intrinsic_dim, width=width,
                          n_blocks=TOY_DEFAULTS["blocks"], sigma=sigma, latent_blocks=latent_blocks)
    config = toy_train_config(steps, manifold=manifold, family=family, seed=seed, **overrides)  # train_sigma, batch_size, lr, seed_fraction
    started = time.time()
    history = train_mixture(model, data.train.float(), config, progress=False)
    return model, data, k, width, config, time.time() - started, history


def train_cell(manifold: str, family: str, seed: int, n_train: int, n_eval: int, eps: float, steps: int | None,
               overrides: dict | None = None, noise: float = 0.0) -> dict:
    from patchreg.charts.metrics import evaluate_mixture

    model, data, k, width, config, seconds, history = train_model(manifold, family, seed, n_train, n_eval, steps, overrides,
                                                                   noise)
    metrics = evaluate_mixture(model.double(), data, n=n_eval, eps=eps, seed=seed)
    return dict(manifold=manifold, family=family, K=k, width=width, seed=seed, steps=config.total_steps,
                n_train=n_train, noise=noise, **metrics, train_seconds=seconds, final_loss=history[-1]["loss"],
                sigma=float(model.sigma), config={k: v for k, v in vars(config).items()})


def train_main(args, argv) -> int:
    cells_path = Path(args.train)
    cells_path.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in cells_path.read_text().splitlines()] if cells_path.is_file() else []
    variant = variant_of(args)
    have = {(c["manifold"], c["family"], c["seed"], c.get("variant", "defaults")) for c in done}
    for seed in ([] if args.write_only else [int(v) for v in args.seeds.split(",")]):
        for manifold in args.manifolds.split(","):
            for family in args.families.split(","):
                if (manifold, family, seed, variant) in have:
                    continue
                cell = train_cell(manifold, family, seed, args.n_train, args.n_eval, args.eps, args.steps,
                                  overrides_of(args), args.noise)
                cell.update(variant=variant, overrides=overrides_of(args))
                with cells_path.open("a") as fh:
                    fh.write(json.dumps(cell) + "\n")
                done.append(cell)
                print(f"{manifold} {family} seed {seed} {variant}: rel {cell['dist_mean_rel']:.5f} cov {cell['coverage']:.4f} "
                      f"sw2 {cell['sliced_w2']:.4f}/{cell['sliced_w2_floor']:.4f} {cell['train_seconds']:.0f}s", flush=True)
    if args.ablation:
        write_ablation(done, args, argv)
    else:
        write_converged([c for c in done if c.get("variant", "defaults") == "defaults"], args, argv)
    return 0


def goal_checks(cell: dict) -> dict[str, bool]:
    """Issue 15's goal for one cell: distance <= Alberti et al.'s code's (toys without their number: always met),
    coverage >= its floor - 0.001, sliced W2 <= 1.5x its floor."""
    authors = AUTHORS.get(cell["manifold"], (float("inf"),))[0]
    return {"dist": cell["dist_mean_rel"] <= authors, "cov": cell["coverage"] >= cell["coverage_floor"] - 1e-3,
            "W2": cell["sliced_w2"] <= 1.5 * cell["sliced_w2_floor"]}


def keep_reading(out: Path) -> str:
    """The hand-written reading below the tables (from "## Reading" on), which survives a regeneration."""
    previous = out.read_text() if out.is_file() else ""
    return previous[previous.index("\n## Reading"):] if "\n## Reading" in previous else ""


def write_ablation(cells: list[dict], args, argv) -> None:
    """One row per (manifold, family, variant, seed), variants in the order first trained, then the mean of each
    variant over its seeds next to the defaults' mean over the same seeds."""
    refresh_floors(cells, args.n_eval)
    base = next((c for c in cells if c.get("variant", "defaults") == "defaults"), cells[0])
    cfg = common_config([c for c in cells if c.get("variant", "defaults") == base.get("variant", "defaults")])
    manifolds = list(dict.fromkeys(c["manifold"] for c in cells))
    lines = ["# Chart mixture ablations (issue 15)", "",
             f"Command: `OMP_NUM_THREADS=1 .venv/bin/python bench/charts_toy_seeds.py {shlex.join(argv)}` "
             "(with `--write-only`: the table from the cells there; without it and with `--seeds` and one variant's options, "
             "as listed under Commands below if the reading has them, each run trains its cells and appends them to the same JSONL)", "",
             f"Every cell has the settings of the \"defaults\" rows (the defaults when the ablation ran) but for the "
             f"variant's changes: {base['steps']} "
             f"steps (pre-training {cfg['pretrain_steps']}, mixture {cfg['mixture_steps']}, overlap {cfg['overlap_steps']}), "
             f"batch {cfg['batch_size']}, Adam lr {cfg['lr']} ({cfg['lr_schedule']}, to {cfg['lr_final']}x), train sigma "
             f"{cfg['train_sigma']}, width {base.get('width', 64)}, seed fraction {cfg['seed_fraction']}, {base['n_train']} "
             f"{noise_text(cells)}, K as in the K column{own_settings(cells, manifolds)}.{family_settings(cells)} Metrics on {base['n_samples']} generated samples and as many held-out points, as in charts_toy_converged.md "
             "(distance relative to the diameter, coverage at eps = 0.1 and its floor, sliced W2 and its floor, held-out "
             f"NLL); {w2_note(cells)}. Goal of issue 15 (column \"goal met\"): distance <= Alberti et al.'s code's (torus 0.0014 of the "
             "diameter), coverage >= its floor - 0.001, sliced W2 <= 1.5x its floor. chart usage: the fewest and most of the generated samples any one chart drew. "
             "1 thread on the shared 2-core machine.", "",
             "| manifold | family | variant | seed | K | dist mean / diam | dist p95 / diam | coverage (floor) | "
             "sliced W2 (floor) | held-out NLL | final loss | chart usage min-max | train s | goal met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    variants = list(dict.fromkeys(c.get("variant", "defaults") for c in cells))
    variants = ["defaults"] + [v for v in variants if v != "defaults"] if "defaults" in variants else variants
    groups = []
    for name in args.manifolds.split(","):
        for family in ("fif", "vae"):
            for variant in variants:
                rs = sorted((c for c in cells if (c["manifold"], c["family"], c.get("variant", "defaults"))
                             == (name, family, variant)), key=lambda c: c["seed"])
                if rs:
                    groups.append((name, family, variant, rs))
    for name, family, variant, rs in groups:
        for c in rs:
            ok = ", ".join(f"{label} {'yes' if met else 'no'}" for label, met in goal_checks(c).items())
            lines.append(f"| {name} | {family} | {variant} | {c['seed']} | {c['K']} | {c['dist_mean_rel']:.5f} | "
                         f"{c['dist_p95_rel']:.5f} | {c['coverage']:.4f} ({c['coverage_floor']:.4f}) | "
                         f"{c['sliced_w2']:.4f} ({c['sliced_w2_floor']:.4f}) | {c['heldout_nll']:.3f} | "
                         f"{c['final_loss']:.3f} | {min(c['chart_usage'])}-{max(c['chart_usage'])} | "
                         f"{c['train_seconds']:.0f} | {ok} |")
    lines += ["", "## Means over the seeds each variant ran (defaults over the same seeds)", "",
              "| manifold | family | variant | seeds | dist mean / diam | defaults | coverage | defaults | "
              "sliced W2 | defaults |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, family, variant, rs in groups:
        seeds = [c["seed"] for c in rs]
        base = [c for c in cells if (c["manifold"], c["family"], c.get("variant", "defaults")) == (name, family, "defaults")
                and c["seed"] in seeds]
        row = [name, family, variant, ",".join(map(str, seeds))]
        for key, digits in (("dist_mean_rel", 5), ("coverage", 4), ("sliced_w2", 4)):
            row.append(f"{np.mean([c[key] for c in rs]):.{digits}f}")
            row.append(f"{np.mean([c[key] for c in base]):.{digits}f}" if len(base) == len(rs) else "-")
        lines.append("| " + " | ".join(row) + " |")
    out = Path(args.out)
    tail = keep_reading(out)
    out.write_text("\n".join(lines) + "\n" + tail)
    out.with_suffix(".json").write_text(json.dumps(cells, indent=1) + "\n")
    print("\n".join(lines))


def noise_text(cells: list[dict]) -> str:
    """The training points' noise, as text: noise-free, or the Gaussian noise levels of the cells."""
    levels = sorted({c.get("noise", 0.0) for c in cells})
    if levels == [0.0]:
        return "noise-free training points"
    return (f"training and held-out points with Gaussian noise of standard deviation {' or '.join(f'{v:g}' for v in levels)} "
            "(the variant says which; distances are the noise-free samples' to the exact manifold, sliced W2 the noisy "
            "samples' against the noisy held-out points, its floor noisy true samples')")


def refresh_floors(cells: list[dict], n_eval: int) -> None:
    """Recompute each cell's sliced-W2 floor as the mean over 5 true draws (cells written before the floor
    became a mean hold a single draw); deterministic in (manifold, seed, n)."""
    import torch

    from patchreg.charts.datasets import load_dataset
    from patchreg.charts.metrics import sliced_w2_floor

    for c in cells:
        if "sliced_w2_floor_draws" in c:
            continue
        data = load_dataset(f"toy:{c['manifold']}", 10, c["n_samples"], c["seed"])
        draws = sliced_w2_floor(data.manifold, data.test[: c["n_samples"]].to(torch.float64), c["seed"])
        c["sliced_w2_floor_single"] = c["sliced_w2_floor"]
        c["sliced_w2_floor"], c["sliced_w2_floor_draws"] = float(np.mean(draws)), draws


def own_settings(cells: list[dict], manifolds: list[str]) -> str:
    """The toys whose cells trained with settings of their own (patchreg.charts.training.TOY_SETTINGS), as text."""
    from patchreg.charts.training import toy_defaults

    # against the family's defaults, not the first cell's settings: that toy may have settings of its own
    family_defaults = {f: toy_defaults(None, f) for f in {c["family"] for c in cells}}
    def own_of(name, family):  # the settings this family's cells of this toy trained with beyond the family's
        return {k: c["config"][k] for c in cells if (c["manifold"], c["family"]) == (name, family) for k in SETTING_KEYS
                if c["config"].get(k) != family_defaults[family][k]}

    parts = []
    for name in manifolds:
        own = {f: own_of(name, f) for f in sorted(family_defaults)}
        first, *others = own.values()
        shared = {k: v for k, v in first.items() if all(o.get(k) == v for o in others)}
        if shared:
            parts.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in shared.items()))
        for f, settings in own.items():  # one family's own on this toy (FAMILY_TOY_SETTINGS)
            if settings.keys() - shared.keys():
                parts.append(f"{name} ({f} only): " + ", ".join(f"{k} {v}" for k, v in settings.items() if k not in shared))
    return (" or the toy's own (TOY_SETTINGS, FAMILY_TOY_SETTINGS; " + "; ".join(parts) + "; its K in the K column)") if parts else ""


def family_settings(cells: list[dict]) -> str:
    """A family's own settings (FAMILY_SETTINGS) that its cells trained with, as text."""
    from patchreg.charts.training import FAMILY_SETTINGS, toy_defaults

    parts = []
    for family in sorted({c["family"] for c in cells}):
        expected = {m: toy_defaults(m, family) for m in {c["manifold"] for c in cells}}  # once per toy, not per cell
        # as in the code, where every cell of the family has it (a toy's own settings may override it, as there)
        own = {k: v for k, v in FAMILY_SETTINGS.get(family, {}).items() if k in SETTING_KEYS
               and all(c["config"].get(k) == expected[c["manifold"]][k] for c in cells if c["family"] == family)}
        text = [f"{k} {v}" for k, v in own.items()]
        steps = FAMILY_SETTINGS.get(family, {}).get("steps")
        mine = [c for c in cells if c["family"] == family]
        if steps is not None and all(c["steps"] == steps for c in mine):  # its own schedule length, with its phases
            cfg = mine[0]["config"]
            text.insert(0, f"steps {steps} (pre-training {cfg['pretrain_steps']}, mixture {cfg['mixture_steps']}, "
                           f"overlap {cfg['overlap_steps']})")
        if text:
            parts.append(f"the {family} family " + ", ".join(text))
    return (" Settings of a family's own (FAMILY_SETTINGS), in every cell of that family: " + "; ".join(parts) + ".") if parts else ""


def common_config(cells: list[dict]) -> dict:
    """The common settings: the config of a cell of a toy and family without settings of their own (those are named
    by own_settings and family_settings), else the first cell's."""
    from patchreg.charts.training import TOY_DEFAULTS

    return next((c["config"] for c in cells if all(c["config"].get(k) == TOY_DEFAULTS[k] for k in SETTING_KEYS)),
                cells[0]["config"])


def write_converged(cells: list[dict], args, argv) -> None:
    refresh_floors(cells, args.n_eval)
    seeds = sorted({c["seed"] for c in cells})
    manifolds = [m for m in args.manifolds.split(",") if any(c["manifold"] == m for c in cells)]
    cfg = common_config(cells)
    lines = ["# Chart mixtures on toy manifolds at convergence (issue 15)", "",
             f"Command: `OMP_NUM_THREADS=1 .venv/bin/python bench/charts_toy_seeds.py {shlex.join(argv)}`", "",
             f"Seeds {seeds}; every cell is `patchreg train charts`'s defaults: "
             f"{cfg['pretrain_steps'] + cfg['mixture_steps'] + cfg['overlap_steps']} steps "
             f"(pre-training {cfg['pretrain_steps']}, mixture {cfg['mixture_steps']}, overlap {cfg['overlap_steps']}), "
             f"batch {cfg['batch_size']}, Adam lr {cfg['lr']} ({cfg['lr_schedule']}, to {cfg['lr_final']}x), train sigma "
             f"{cfg['train_sigma']}, seed fraction {cfg.get('seed_fraction', 1.0)}, overlap scale {cfg.get('overlap_scale', 1.5)} "
             f"(1: no hand-off), {cells[0]['n_train']} noise-free "
             f"training points, K = the manifold's suggested K{own_settings(cells, manifolds)}.{family_settings(cells)} Metrics on "
             f"{cells[0]['n_samples']} generated samples "
             f"and as many held-out points: distance to the true manifold relative to its extrinsic diameter "
             f"(patchreg.charts.metrics.manifold_diameter), coverage at eps = {cells[0]['coverage_eps']} (its floor: "
             "the coverage of as many true samples), sliced W2 to the held-out points and its floor (as many true "
             f"samples against the same points, mean of 5 draws; {w2_note(cells)}), held-out NLL in nats per point. 1 thread on the shared 2-core "
             "machine. Cells: mean (min-max) over the seeds.", "",
             "| manifold | family | K | seeds | " + " | ".join(t[1] for t in TABLE) + " | coverage floor |",
             "|---|---|---|---|" + "---|" * (len(TABLE) + 1)]
    for name in manifolds:
        for family in ("fif", "vae"):
            rs = [c for c in cells if (c["manifold"], c["family"]) == (name, family)]
            if not rs:
                continue
            cell_text = []
            for key, _, digits in TABLE + [("coverage_floor", "", 4)]:
                v = np.array([r[key] for r in rs])
                cell_text.append(f"{v.mean():.{digits}f} ({v.min():.{digits}f}-{v.max():.{digits}f})" if len(v) > 1
                                 else f"{v[0]:.{digits}f}")
            seed_list = ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"]))
            lines.append(f"| {name} | {family} | {rs[0]['K']} | {seed_list} | " + " | ".join(cell_text) + " |")
        if name in AUTHORS:
            rel, cov, w2, floor = AUTHORS[name]
            lines.append(f"| {name} | Alberti et al.'s code (issue 15) | | | {rel:.5f} | | {cov:.1f} | {w2:.3f} (20k) | "
                         f"{floor:.3f} (20k) | | | |")
        else:
            lines.append(f"| {name} | Alberti et al.'s code | | | not measured (issue 15 gives no number) | | | | | | | |")
    lines += ["", "## Goal of issue 15 per toy (FIF mixture, every seed)", "",
              "| manifold | dist mean / diam <= authors' | coverage >= its floor - 0.001 | sliced W2 <= 1.5 floor | "
              "FIF better than VAE: dist mean, dist p95, coverage, sliced W2, NLL (seeds) |",
              "|---|---|---|---|---|"]
    for name in manifolds:
        fif = {c["seed"]: c for c in cells if (c["manifold"], c["family"]) == (name, "fif")}
        vae = {c["seed"]: c for c in cells if (c["manifold"], c["family"]) == (name, "vae")}
        if not fif:
            continue
        goal = AUTHORS.get(name)
        dist = (f"{sum(c['dist_mean_rel'] <= goal[0] for c in fif.values())} of {len(fif)}" if goal
                else "no authors' number")
        cov = f"{sum(goal_checks(c)['cov'] for c in fif.values())} of {len(fif)}"
        w2 = f"{sum(goal_checks(c)['W2'] for c in fif.values())} of {len(fif)}"
        both = sorted(set(fif) & set(vae))
        wins = []
        for key, better in (("dist_mean_rel", -1), ("dist_p95_rel", -1), ("coverage", 1), ("sliced_w2", -1),
                            ("heldout_nll", -1)):
            wins.append(str(sum(better * (fif[s][key] - vae[s][key]) > 0 for s in both)))
        lines.append(f"| {name} | {dist} | {cov} | {w2} | {', '.join(wins)} of {len(both)} |")
    tail = keep_reading(Path(args.out))
    Path(args.out).write_text("\n".join(lines) + "\n" + tail)
    json_path = Path(args.out).with_suffix(".json")
    json_path.write_text(json.dumps(cells, indent=1) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", help="summary mode: charts_toy*.json files, one per seed")
    p.add_argument("--out", required=True)
    p.add_argument("--train", default=None, help="training mode: the cells' JSONL (appended, resumable)")
    p.add_argument("--manifolds", default="two_circles,sphere,torus")
    p.add_argument("--families", default="fif,vae")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=None, help="default: the CLI's default")
    p.add_argument("--write-only", action="store_true", help="training mode: write the table of the cells done, train none")
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-eval", type=int, default=5000)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--noise", type=float, default=0.0,
                   help="training mode: Gaussian noise (standard deviation) on the toy's training and held-out points")
    g = p.add_argument_group("ablations (training mode): change one setting of the defaults")
    g.add_argument("--charts", type=int, default=None, help="K (default: the manifold's suggested K)")
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--train-sigma", type=float, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--lr-final", type=float, default=None, help="the cosine schedule's last rate, as a fraction of --lr")
    g.add_argument("--seed-fraction", type=float, default=None)
    g.add_argument("--overlap-scale", type=float, default=None)
    g.add_argument("--overlap-in-loss", action="store_const", const=True, default=None,
                   help="overlap phase: the scaled prior in the charts' loss too, as Alberti et al.'s code")
    g.add_argument("--latent-blocks", type=int, default=None, help="vae: coupling blocks of the latent flow (0: none)")
    g.add_argument("--variant", default=None, help="the cells' variant name (default: the changed settings, or 'defaults')")
    g.add_argument("--ablation", action="store_true", help="write the ablation table (one row per variant and seed)")
    args = p.parse_args(argv)
    if args.train:
        return train_main(args, argv)
    if not args.runs:
        p.error("give the runs' JSON files (summary mode) or --train CELLS.jsonl")
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
