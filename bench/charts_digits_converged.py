"""Chart mixtures on 8x8 digits trained to convergence (issue 15): FD against steps, 3 training seeds.

Trains every (model, seed) of `--models` x `--seeds` one after the other in this process (1 thread) with the
digits setup of bench/charts_experiments.py --task digits (K 10, d 6, batch 128, constant lr, phases 1/4
pre-training, 1/2 mixture, 1/4 overlap), scoring a finalized copy every `--eval-every` steps (FD,
precision/recall, held-out NLL; bench.charts_experiments.digits_scores). Each finished run is appended to
RUNS.jsonl (runs already there are skipped, so a stopped sweep resumes; the curve points of the run in progress
go to RUNS.curve.jsonl), then the report is written: FD-vs-steps table and PNG, whether FD stopped improving,
the final metrics over the seeds (mean, min-max, 95% t-interval) and the paired VAE-FIF difference.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/charts_digits_converged.py \\
        --runs /work/runs/issue15/digits_runs.jsonl --models vae:mlp,fif:mlp --seeds 0,1,2 --steps 3000 \\
        --eval-every 250 --out bench/results/charts_digits_converged.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.charts_experiments import MACHINE, digit_classifier, frechet_distance, precision_recall, run_digits  # noqa: E402

KEYS = ("family", "architecture", "seed", "steps", "lr", "train_sigma", "width", "K", "d")
METRICS = [("frechet", "FD", 2), ("precision", "precision", 3), ("recall", "recall", 3),
           ("heldout_nll", "held-out NLL", 1), ("train_seconds", "train s", 0)]
PAIRED = [("frechet_draws", "FD 5 draws", 2)] + METRICS[:4]


def job_of(args, model: str, seed: int, steps: int) -> dict:
    family, arch = model.split(":")
    return dict(family=family, architecture=arch, K=args.charts, d=args.latent, seed=seed, data_seed=args.data_seed,
                steps=steps, width=args.width if arch == "mlp" else 16, lr=args.lr, train_sigma=args.train_sigma,
                eval_every=args.eval_every, fd_draws=5)


def key_of(run: dict) -> tuple:
    return tuple(run[k] for k in KEYS)


def t_interval(values) -> tuple[float, float]:
    """Two-sided 95% Student-t interval of the mean (nan for one value)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


def plateau(curve: list[dict]) -> dict:
    """FD (mean of the sample draws) has stopped improving when the best of the last third of the evaluations is
    not lower than the best before it by more than the caller's noise; returns both bests."""
    fd = [p["frechet_mean"] for p in curve]
    cut = len(fd) - max(1, len(fd) // 3)
    return {"best_before": min(fd[:cut]), "best_last_third": min(fd[cut:]), "last_third_from": curve[cut]["step"]}


def reference(seed: int) -> dict:
    """The metrics of the training images (449 of them) against the test images: what a perfect model scores."""
    import torch

    from patchreg.charts.datasets import load_dataset

    data = load_dataset("digits", seed=seed)
    classifier, accuracy = digit_classifier(seed)
    with torch.no_grad():
        f_test, f_train = classifier[:4](data.test).numpy(), classifier[:4](data.train[: len(data.test)]).numpy()
    p, r = precision_recall(f_test, f_train)
    return {"frechet": frechet_distance(f_test, f_train), "precision": p, "recall": r, "accuracy": accuracy}


def every_text(runs: list[dict]) -> str:
    """The evaluation interval of each run length, as text ("250 (5000-step runs)", ...)."""
    every = dict(sorted({r["steps"]: r["eval_every"] for r in runs}.items(), reverse=True))
    if len(set(every.values())) == 1:
        return str(next(iter(every.values())))
    return ", ".join(f"{e} ({s}-step runs)" for s, e in every.items())


def plot_curves(runs: list[dict], path: Path, ref_fd: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys((r["family"], r["architecture"], r["steps"]) for r in runs))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (f, a, steps) in enumerate(models):
        for r in (r for r in runs if (r["family"], r["architecture"], r["steps"]) == (f, a, steps)):
            x = [p["step"] for p in r["curve"]]
            label = f"{f}/{a} ({steps} steps)" if r["seed"] == min(q["seed"] for q in runs) else None
            axes[0].plot(x, [p["frechet_mean"] for p in r["curve"]], color=f"C{i}", marker=".", label=label, alpha=0.8)
            axes[1].plot(x, [p["heldout_nll"] for p in r["curve"]], color=f"C{i}", marker=".", alpha=0.8)
    axes[0].axhline(ref_fd, color="k", ls="--", lw=1, label="training vs test images")
    axes[0].set(xlabel="step", ylabel="FD, mean of 5 draws of 449 samples", ylim=(0, None), title="FD against steps (one line per seed)")
    axes[1].set(xlabel="step", ylabel="held-out NLL (nats / image)", title="held-out NLL against steps")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cell(values, digits: int) -> str:
    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    lo, hi = t_interval(v)
    return f"{v.mean():.{digits}f} ({v.min():.{digits}f} to {v.max():.{digits}f}; CI {lo:.{digits}f} to {hi:.{digits}f})"


def write_report(runs: list[dict], args, argv) -> None:
    out = Path(args.out)
    ref = reference(args.data_seed)
    groups = list(dict.fromkeys((r["family"], r["architecture"], r["steps"]) for r in runs))
    r0 = runs[0]
    lines = ["# Chart mixtures on 8x8 digits trained to convergence (issue 15)", "",
             f"Command: `OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/charts_digits_converged.py {shlex.join(argv)}` "
             "(runs already in the JSONL are not retrained; `--write-only` rewrites this file from it)", "",
             f"Setup of charts_digits.md (bench/charts_experiments.py --task digits) but longer: K = {r0['K']} charts, latent d = "
             f"{r0['d']}, batch 128, Adam lr {r0['lr']} constant, phases 1/4 pre-training, 1/2 mixture, 1/4 overlap of each "
             f"run's steps, train sigma {r0['train_sigma']}, MLP width {args.width} (conv: 16); data split and feature classifier of "
             f"seed {args.data_seed} (classifier test accuracy {ref['accuracy']:.3f}), training seeds as listed. FD: Frechet "
             "distance of 449 samples to the 449 test images in the classifier's 64-D penultimate features; precision/recall: "
             "k = 3 nearest-neighbour balls; held-out NLL in nats per image. Every "
             f"{every_text(runs)} steps a copy of the model is finalized (alpha and sigma as at the end) and scored with "
             "the same sample seeds. Machine: " + MACHINE + "; 1 thread; train s excludes the evaluations.", "",
             f"Reference (449 training images vs the test images): FD {ref['frechet']:.3f}, precision {ref['precision']:.3f}, "
             f"recall {ref['recall']:.3f}.", ""]
    # FD sampling noise: the spread of the final model's FD over 5 sample draws, and of their mean
    noise = float(np.mean([np.std(r["frechet_draws"], ddof=1) for r in runs]))
    noise5 = noise / np.sqrt(5)
    lines += ["## FD against steps", "",
              f"FD of the finalized model at each evaluation, mean over 5 draws of 449 samples (sample seeds seed + 1 .. "
              f"seed + 5, the same at every evaluation). Sampling noise of one draw's FD (std over the 5 draws of the final "
              f"model, mean over the runs): {noise:.2f}, so about {noise5:.2f} for the mean of 5. \"Stopped improving\": "
              "the best 5-draw FD of the last third of the evaluations is not lower than the best before it by more than "
              "twice that (2 x noise / sqrt 5).", ""]
    for f, a, steps in groups:
        rs = sorted((r for r in runs if (r["family"], r["architecture"], r["steps"]) == (f, a, steps)), key=lambda r: r["seed"])
        lines += [f"### {f} / {a}, {steps} steps", "", "| step | phase | " + " | ".join(f"FD seed {r['seed']}" for r in rs)
                  + " | FD mean | " + " | ".join(f"NLL seed {r['seed']}" for r in rs) + " | NLL mean | train-image NLL mean |",
                  "|---|---|" + "---|" * (2 * len(rs) + 3)]
        for i, p in enumerate(rs[0]["curve"]):
            at = [r["curve"][i] for r in rs if i < len(r["curve"])]
            row = [str(p["step"]), p["phase"]] + [f"{r['curve'][i]['frechet_mean']:.2f}" if i < len(r["curve"]) else "" for r in rs]
            row.append(f"{np.mean([q['frechet_mean'] for q in at]):.2f}")
            row += [f"{r['curve'][i]['heldout_nll']:.1f}" if i < len(r["curve"]) else "" for r in rs]
            row.append(f"{np.mean([q['heldout_nll'] for q in at]):.1f}")
            train = [q["train_nll"] for q in at if "train_nll" in q]  # not in the first runs' curves
            row.append(f"{np.mean(train):.1f} ({len(train)} seeds)" if train else "-")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        for r in rs:
            pl = plateau(r["curve"])
            stopped = pl["best_last_third"] >= pl["best_before"] - 2 * noise5
            lines.append(f"- seed {r['seed']}: best FD before step {pl['last_third_from']} {pl['best_before']:.2f}, in the last "
                         f"third {pl['best_last_third']:.2f}: {'stopped improving' if stopped else 'STILL IMPROVING'}")
        lines.append("")
    lines += ["Figure: `" + out.with_suffix(".png").name + "` (FD and held-out NLL against steps, one line per seed).", "",
              "## Final models over the training seeds", "",
              "Mean (min to max; 95% t-interval of the mean over the seeds).", "",
              "| family | architecture | steps | seeds | " + " | ".join(m[1] for m in METRICS) + " | FD of 5 draws (mean) |",
              "|---|---|---|---|" + "---|" * (len(METRICS) + 1)]
    for f, a, steps in groups:
        rs = [r for r in runs if (r["family"], r["architecture"], r["steps"]) == (f, a, steps)]
        seeds = ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"]))
        lines.append(f"| {f} | {a} | {steps} | {seeds} | " + " | ".join(cell([r[k] for r in rs], d) for k, _, d in METRICS)
                     + f" | {cell([np.mean(r['frechet_draws']) for r in rs], 2)} |")
    lines += paired_differences(runs, groups)
    lines += ["", "## Every run", "", "| family | architecture | steps | seed | FD | FD draws | precision | recall | classes covered "
              "| held-out NLL | train s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['family']} | {r['architecture']} | {r['steps']} | {r['seed']} | {r['frechet']:.3f} | "
                     f"{' '.join(f'{v:.2f}' for v in r['frechet_draws'])} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['classes_covered']} | {r['heldout_nll']:.1f} | {r['train_seconds']:.0f} |")
    tail = previous_reading(out)
    out.write_text("\n".join(lines) + "\n" + tail)
    out.with_suffix(".json").write_text(json.dumps({"reference": ref, "fd_sampling_noise": noise, "runs": runs}, indent=1) + "\n")
    plot_curves(runs, out.with_suffix(".png"), ref["frechet"])
    print("\n".join(lines))


def value(run: dict, key: str) -> float:
    return float(np.mean(run["frechet_draws"])) if key == "frechet_draws" else run[key]


def paired_differences(runs: list[dict], groups: list[tuple]) -> list[str]:
    """Per-seed differences between the models with the same steps (first minus second), with their t-interval."""
    lines = []
    for i, g in enumerate(groups):
        for h in groups[i + 1:]:
            if g[2] != h[2]:
                continue
            a = {r["seed"]: r for r in runs if (r["family"], r["architecture"], r["steps"]) == g}
            b = {r["seed"]: r for r in runs if (r["family"], r["architecture"], r["steps"]) == h}
            seeds = sorted(set(a) & set(b))
            if len(seeds) < 2:
                continue
            if not lines:
                lines = ["", "## Paired differences (same seed)", "",
                         "Mean over the seeds of the per-seed difference (95% t-interval; per seed). FD 5 draws: the mean "
                         "FD of the 5 sample draws, less noisy than one draw's.", "",
                         "| difference | seeds | " + " | ".join(m[1] for m in PAIRED) + " |", "|---|---|" + "---|" * len(PAIRED)]
            row = [f"{g[0]}/{g[1]} minus {h[0]}/{h[1]} ({g[2]} steps)", ",".join(map(str, seeds))]
            for k, _, d in PAIRED:
                diff = [value(a[s], k) - value(b[s], k) for s in seeds]
                lo, hi = t_interval(diff)
                row.append(f"{np.mean(diff):+.{d}f} (CI {lo:+.{d}f} to {hi:+.{d}f}; per seed {', '.join(f'{v:+.{d}f}' for v in diff)})")
            lines.append("| " + " | ".join(row) + " |")
    return lines


def previous_reading(out: Path) -> str:
    """The hand-written reading (from "## Reading" on), kept when the file is regenerated."""
    text = out.read_text() if out.is_file() else ""
    return text[text.index("\n## Reading"):] if "\n## Reading" in text else ""


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="finished runs' JSONL (appended, resumable)")
    p.add_argument("--out", required=True)
    p.add_argument("--models", default="vae:mlp,fif:mlp", help="family:architecture list")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--charts", type=int, default=10)
    p.add_argument("--latent", type=int, default=6)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--train-sigma", type=float, default=0.05)
    p.add_argument("--write-only", action="store_true", help="write the report from the runs there, train none")
    args = p.parse_args(argv)
    path = Path(args.runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    have = {key_of(r) for r in runs}
    for seed in ([] if args.write_only else [int(s) for s in args.seeds.split(",")]):
        for model in args.models.split(","):
            job = job_of(args, model, seed, args.steps)
            if key_of(job) in have:
                continue
            job["curve_path"] = str(path.with_suffix(".curve.jsonl"))
            started = time.time()
            run = {k: v for k, v in run_digits(job).items() if k not in ("grid", "curve_path")}
            with path.open("a") as fh:
                fh.write(json.dumps(run) + "\n")
            runs.append(run)
            print(f"{model} seed {seed} {args.steps} steps: FD {run['frechet']:.3f} P {run['precision']:.3f} "
                  f"R {run['recall']:.3f} NLL {run['heldout_nll']:.1f} train {run['train_seconds']:.0f}s "
                  f"(wall {time.time() - started:.0f}s)", flush=True)
    if runs:
        write_report(runs, args, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
