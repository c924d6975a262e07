"""Training curves of one chart mixture on a toy manifold: loss and held-out metrics against steps.

Every `--eval-every` steps a copy of the model is finalized (alpha and sigma as at the end of training)
and evaluated on `--eval-n` generated samples and held-out points: mean / p95 distance to the true
manifold relative to its diameter, coverage, sliced W2 and its true-vs-true floor at the same size,
held-out NLL. One JSON line per evaluation goes to --out (appended and flushed, so a stopped run
keeps its curve); with --checkpoint the training state is saved at every evaluation and
`--resume` continues from it (the curve's lines past the checkpoint's step are dropped).

    OMP_NUM_THREADS=1 .venv/bin/python bench/charts_convergence.py --manifold torus --family fif \\
        --steps 4000 --eval-every 500 --out /work/runs/issue15/torus_fif.jsonl

Without the model options the run uses the defaults of `patchreg train charts` (toy_train_config).
`charts_convergence.py report CURVE.jsonl ... --out FILE.md` writes the curves as markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.charts_toy_seeds import keep_reading  # noqa: E402


def build(args):
    import torch

    from patchreg.charts import build_mixture
    from patchreg.charts.datasets import load_dataset
    from patchreg.charts.training import toy_defaults, toy_train_config

    TOY_DEFAULTS = toy_defaults(args.manifold, args.family)  # with the family's and the toy's own settings
    data = load_dataset(f"toy:{args.manifold}", args.n_train, args.eval_n, args.seed, noise=args.noise)
    m = data.manifold
    k = args.charts or TOY_DEFAULTS.get("charts") or m.suggested_charts
    width = args.width or TOY_DEFAULTS["width"]
    blocks = args.blocks or TOY_DEFAULTS["blocks"]
    sigma = args.train_sigma or TOY_DEFAULTS["train_sigma"]
    torch.manual_seed(args.seed)
    model = build_mixture(args.family, k, m.ambient_dim, m.intrinsic_dim, width=width, n_blocks=blocks, sigma=sigma,
                          coupling_blocks=args.coupling_blocks)
    overrides = {key: getattr(args, key) for key in ("lr", "lr_schedule", "batch_size", "overlap_scale", "seed_fraction", "lr_final")
                 if getattr(args, key) is not None}
    config = toy_train_config(args.steps, manifold=args.manifold, family=args.family, seed=args.seed, train_sigma=sigma, **overrides)
    if args.pretrain_fraction is not None or args.overlap_fraction is not None:
        pre = int(round(args.steps * (args.pretrain_fraction if args.pretrain_fraction is not None else 0.1)))
        over = int(round(args.steps * (args.overlap_fraction if args.overlap_fraction is not None else 0.2)))
        config.pretrain_steps, config.overlap_steps = pre, over
        config.mixture_steps = args.steps - pre - over
    return data, model, config, dict(K=k, width=width, blocks=blocks)


def make_callback(data, config, out: Path, meta: dict, eval_n: int, eps: float):
    """patchreg.charts.curves.heldout_curve_callback, each evaluated record appended to `out` with `meta` and printed."""
    from patchreg.charts.curves import heldout_curve_callback

    def sink(record):
        with out.open("a") as fh:
            fh.write(json.dumps({**meta, **record}) + "\n")
        print(f"step {record['step']:6d} {record['phase']:8s} loss {record['loss']:9.4g} rel {record['dist_mean_rel']:.5f} "
              f"p95 {record['dist_p95_rel']:.5f} cov {record['coverage']:.3f} sw2 {record['sliced_w2']:.4f}/"
              f"{record['sliced_w2_floor']:.4f} covfloor {record['coverage_floor']:.3f} nll {record['heldout_nll']:.3f} "
              f"t {record['seconds']:.0f}s", flush=True)

    return heldout_curve_callback(data, config, meta["eval_every"], eval_n, eps, meta["seed"], sink)


def _parts_text(r: dict) -> str:
    """The held-out NLL's part on the manifold less log(area), and its normal part (curves since 2026-12-08)."""
    from patchreg.charts.metrics import surface_excess

    excess = surface_excess(r)
    return "- | -" if excess is None else f"{excess:.3f} | {r['heldout_nll_normal']:.3f}"


def report(paths: list[str], out: str, title: str, note: str, argv, figure: str | None = None) -> None:
    """A markdown table of the curves in the JSONL files `paths` (one section per file)."""
    lines = [f"# {title}", "", f"Command: `.venv/bin/python bench/charts_convergence.py {' '.join(argv)}`", "", note, ""]
    for path in paths:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        if not rows:
            continue
        r0 = rows[0]
        lines += [f"## {r0['manifold']}, {r0['family']}, K = {r0['K']}, {r0['tag'] or 'defaults'} (seed {r0['seed']})", "",
                  f"{r0['steps']} steps (phases {r0['phases']}), batch {r0['batch_size']}, lr {r0['lr0']} "
                  f"{r0['lr_schedule']}, train sigma {r0['train_sigma']}, width {r0['width']}, seed fraction "
                  f"{r0.get('seed_fraction', 1.0)}; {r0['n_train']} training points; file `{Path(path).name}`.", "",
                  "| step | phase | lr | loss | dist mean / diam | dist p95 / diam | coverage (floor) | sliced W2 (floor) | "
                  "held-out NLL | on the manifold - log area | normal part | train s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['step']} | {r['phase']} | {r['lr']:.2g} | {r['loss']:.4g} | {r['dist_mean_rel']:.5f} | "
                         f"{r['dist_p95_rel']:.5f} | {r['coverage']:.4f} ({r.get('coverage_floor', float('nan')):.4f}) | "
                         f"{r['sliced_w2']:.4f} ({r['sliced_w2_floor']:.4f}) | {r['heldout_nll']:.3f} | {_parts_text(r)} | "
                         f"{r['seconds']:.0f} |")
        lines.append("")
    if figure:
        plot_curves(paths, figure)
        lines += [f"![curves]({Path(figure).name})", ""]
    reading = keep_reading(Path(out))  # the hand-written reading survives a regeneration
    Path(out).write_text("\n".join(lines) + "\n" + reading.lstrip("\n"))
    print("\n".join(lines))


def _panel_value(r: dict, key: str) -> float:
    if key == "w2_ratio":
        return r["sliced_w2"] / r["sliced_w2_floor"]
    if key == "surface_excess":  # curves from before the NLL split: no point
        from patchreg.charts.metrics import surface_excess

        excess = surface_excess(r)
        return float("nan") if excess is None else excess
    return r[key]


def plot_curves(paths: list[str], figure: str) -> None:
    """One PNG: loss, distance / diameter (log), sliced W2 / its floor and held-out NLL against steps, a line per curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("loss", "training loss", False), ("dist_mean_rel", "mean distance / diameter", True),
              ("w2_ratio", "sliced W2 / floor", False), ("heldout_nll", "held-out NLL", False),
              ("surface_excess", "held-out NLL on the manifold - log area", False))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    colours = {}  # one colour per toy, the line style tells the family
    for path in paths:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        if not rows:
            continue
        label = f"{rows[0]['manifold']} {rows[0]['family']}" + (f" {rows[0]['tag']}" if rows[0]["tag"] not in ("", "defaults") else "")
        style = "-" if rows[0]["family"] == "fif" else "--"
        colour = colours.setdefault(rows[0]["manifold"], f"C{len(colours) % 10}")
        steps = [r["step"] for r in rows]
        for ax, (key, title, log) in zip(axes, panels):
            values = [_panel_value(r, key) for r in rows]
            ax.plot(steps, values, style, color=colour, marker="o", markersize=3, label=label)
            ax.set_title(title)
            ax.set_xlabel("step")
            if log:
                ax.set_yscale("log")
    axes[2].axhline(1.5, color="gray", lw=0.8, ls=":")
    axes[-1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(figure, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "report":
        r = argparse.ArgumentParser(description="a markdown table of training curves")
        r.add_argument("report")
        r.add_argument("curves", nargs="+", help="JSONL files of this script")
        r.add_argument("--out", required=True)
        r.add_argument("--title", default="Chart mixtures: training curves")
        r.add_argument("--note", default="")
        r.add_argument("--figure", default=None, help="also a PNG of the curves (linked from the markdown)")
        a = r.parse_args(argv)
        report(a.curves, a.out, a.title, a.note, argv, a.figure)
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifold", default="torus")
    p.add_argument("--family", choices=("fif", "vae"), default="fif")
    p.add_argument("--charts", type=int, default=None, help="K (default: the toy's TOY_SETTINGS K, else the manifold's suggested K)")
    p.add_argument("--steps", type=int, default=None, help="default: the CLI's default")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--train-sigma", type=float, default=None)
    p.add_argument("--overlap-scale", type=float, default=None)
    p.add_argument("--seed-fraction", type=float, default=None)
    p.add_argument("--lr-final", type=float, default=None)
    p.add_argument("--pretrain-fraction", type=float, default=None)
    p.add_argument("--overlap-fraction", type=float, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--blocks", type=int, default=None)
    p.add_argument("--coupling-blocks", type=int, default=5)
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--noise", type=float, default=0.0, help="Gaussian noise (std) on the training and held-out points")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-n", type=int, default=2000)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    p.add_argument("--out", required=True, help="JSONL of the curve (appended)")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    import torch

    from patchreg.charts import train_mixture
    from patchreg.charts.training import toy_defaults

    torch.set_num_threads(1)
    args.steps = args.steps or toy_defaults(args.manifold, args.family)["steps"]  # the family's and the toy's own too
    data, model, config, extra = build(args)
    config.checkpoint_every = args.eval_every if args.checkpoint else 0
    config.log_every = min(50, args.eval_every)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    resume = bool(args.resume and args.checkpoint and Path(args.checkpoint).is_file())
    if resume:
        from patchreg.io import load_checkpoint

        step = load_checkpoint(args.checkpoint, "charts")[1]["training"]["step"]
        keep = [line for line in out.read_text().splitlines() if json.loads(line)["step"] <= step] if out.is_file() else []
        out.write_text("".join(line + "\n" for line in keep))
    elif out.is_file():
        out.unlink()
    meta = dict(tag=args.tag, manifold=args.manifold, family=args.family, seed=args.seed, steps=args.steps,
                eval_every=args.eval_every, lr0=config.lr, lr_schedule=config.lr_schedule, batch_size=config.batch_size,
                train_sigma=config.train_sigma, phases=[config.pretrain_steps, config.mixture_steps, config.overlap_steps],
                n_train=args.n_train, noise=args.noise, seed_fraction=config.seed_fraction, lr_final=config.lr_final, **extra)
    started = time.time()
    train_mixture(model, data.train.float(), config, args.checkpoint, resume=resume, progress=False,
                  callback=make_callback(data, config, out, meta, args.eval_n, args.eps))
    print(f"wall {time.time() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
