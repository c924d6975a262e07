"""Tune the splitting's beta schedule per task (deblur, sr2, sr4, inpaint, ct_limited, ct_lowdose) on the validation
split of train400, for EPLL and the chart prior (never on the test images).

The observations have small noise (0.01) or a non-identity operator, so Zoran & Weiss's schedule
(1/sigma^2)[1, 4, 8, 16, 32], which starts at the noise level of y, hardly lets the prior act. The
schedule here starts from an image-domain noise level s and grows: betas = (1/s^2)[1, 4, 8, 16, 32, 64]
(ending at s / 8), or with --ends and --steps, STEPS geometric betas from 1/s^2 to 1/END^2; the data
weight is lam = scale * d / sigma^2 (1: the MAP weight). Grid over s, scale, (end, steps); the best mean PSNR over
--images validation images is the default of `patchreg.priors.task_defaults` (the CLI and
bench/priors_table.py read it from there). ct_lowdose (Poisson counts) uses the weighted least squares of
the counts (patchreg.priors.hqs.weighted_problem), whose weights are the inverse variances: sigma = 1 there.

    python bench/hqs_task_tuning.py --images 3 --out bench/results/hqs_task_tuning
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from priors_table import make_problem, prepare_clean  # noqa: E402

from patchreg.data import load_train400, to_tensor  # noqa: E402
from patchreg.metrics import psnr  # noqa: E402
from patchreg.pretrained import resolve_checkpoint  # noqa: E402
from patchreg.priors import GMM, PatchCharts, charts_restore, epll_restore  # noqa: E402
from patchreg.priors.hqs import weighted_problem  # noqa: E402
from patchreg.priors.task_defaults import SCHEDULE, schedule_from_start  # noqa: E402

TASKS = ("deblur", "sr2", "sr4", "inpaint", "ct_limited", "ct_lowdose")
TIE_DB = 0.02  # settings this close to the best count as ties, and the one with the fewest betas wins


def restore(prior, model, task, op, y, sigma, start, lam_scale, end=None, steps=None):
    betas = schedule_from_start(start, end, steps)
    x0 = op.initial_guess(y)
    op, y = weighted_problem(op, y)  # Poisson counts: the whitened weighted least squares (sigma = 1)
    lam = lam_scale * model.dim / sigma**2
    if prior == "epll":
        return epll_restore(y, op, model, sigma, betas=betas, lam=lam, x0=x0)
    return charts_restore(y, op, model, sigma, betas=betas, lam=lam, x0=x0, top_charts=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--priors", nargs="+", default=["epll", "charts"], choices=("epll", "charts"))
    ap.add_argument("--starts", type=float, nargs="+", default=[0.02, 0.04, 0.08, 0.16, 0.32])
    ap.add_argument("--lam-scales", type=float, nargs="+", default=[1.0],
                    help="data weight lam = SCALE * d / sigma^2 (1: the MAP weight)")
    ap.add_argument("--ends", type=float, nargs="*", default=[],
                    help="geometric schedules: end levels (with --steps; the six-factor schedule when empty)")
    ap.add_argument("--steps", type=int, nargs="*", default=[], help="geometric schedules: numbers of betas")
    ap.add_argument("--images", type=int, default=3, help="the first N validation images")
    ap.add_argument("--gmm", default="pretrained:gmm")
    ap.add_argument("--charts", default="pretrained:charts")
    ap.add_argument("--ct-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/hqs_task_tuning")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    models = {"epll": GMM.load(resolve_checkpoint(args.gmm)) if "epll" in args.priors else None,
              "charts": PatchCharts.load(resolve_checkpoint(args.charts)) if "charts" in args.priors else None}
    images, names = load_train400("validation", with_names=True)
    images = [to_tensor(im, torch.float32) for im in images[: args.images]]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else {}
    rows = previous.get("rows", [])  # a rerun adds starts and tasks to the earlier grid
    for r in rows:
        r.setdefault("lam_scale", 1.0)
        r.setdefault("end", None)
        r.setdefault("steps", None)
    done = {(r["task"], r["prior"], r["start"], r["lam_scale"], r["end"], r["steps"]) for r in rows}
    if bool(args.ends) != bool(args.steps):
        ap.error("--ends and --steps go together")
    schedules = list(itertools.product(args.ends, args.steps)) if args.ends else [(None, None)]
    for task in args.tasks:
        problems = []
        for i, im in enumerate(images):
            clean = prepare_clean(task, im, args.ct_size)
            op, y, sigma = make_problem(task, clean, args.seed + i)
            problems.append((clean, op, y.float(), sigma))
        for prior in args.priors:
            for start, lam_scale, (end, steps) in itertools.product(args.starts, args.lam_scales, schedules):
                if (task, prior, start, lam_scale, end, steps) in done or (end is not None and end > start):
                    continue
                t0 = time.perf_counter()
                values = [float(psnr(restore(prior, models[prior], task, op, y, sigma, start, lam_scale, end, steps)
                                     .clamp(0, 1), clean)[0]) for clean, op, y, sigma in problems]
                rows.append(dict(task=task, prior=prior, start=start, lam_scale=lam_scale, end=end, steps=steps,
                                 psnr=statistics.mean(values), per_image=values,
                                 seconds=(time.perf_counter() - t0) / len(problems)))
                out.with_suffix(".json").write_text(json.dumps({**previous, "rows": rows}, indent=1))  # resumable
                print(f"{task:10s} {prior:6s} s={start:<5g} lam x{lam_scale:<4g} {_schedule_name(end, steps):14s} "
                      f"{rows[-1]['psnr']:.2f} dB  {rows[-1]['seconds']:.1f} s/image", flush=True)
    commands = previous.get("commands", [previous["command"]] if "command" in previous else [])
    commands.append("python bench/hqs_task_tuning.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    write_report(out, rows, commands, names[: args.images], args.ct_size)
    return 0


def _schedule_name(end, steps) -> str:
    return "six factors" if end is None else f"{steps} to {end:g}"


def write_report(out: Path, rows: list, commands: list, names: list, ct_size: int) -> None:
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    priors = list(dict.fromkeys(r["prior"] for r in rows))
    starts = sorted({r["start"] for r in rows})
    best = {}
    for task in tasks:
        for prior in priors:
            cand = [r for r in rows if r["task"] == task and r["prior"] == prior]
            if cand:  # the best PSNR; within TIE_DB of it, the shortest schedule (the cheapest)
                best_psnr = max(r["psnr"] for r in cand)
                top = min((r for r in cand if r["psnr"] >= best_psnr - TIE_DB), key=lambda r: (r["steps"] or len(SCHEDULE), -r["psnr"]))
                best.setdefault(prior, {})[task] = {k: top[k] for k in ("start", "lam_scale", "end", "steps")}
    out.with_suffix(".json").write_text(json.dumps({"commands": commands, "rows": rows, "best": best}, indent=1))
    lines = ["# HQS schedule per task, tuned on the validation split of train400", "",
             "Commands (a rerun adds to the grid):", ""] + [f"    {c}" for c in commands] + [
             "", f"Machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads (a "
             f"shared machine: times are indicative); images: validation {names}; CT at most {ct_size}x{ct_size}.", "",
             "Schedule: six factors = (1/s^2)[1, 4, 8, 16, 32, 64]; 'N to e' = N geometric betas from 1/s^2 to 1/e^2. "
             "lam = scale * d / sigma^2 (scale 1: the MAP weight); PSNR (dB) averaged over the images, time per image.",
             "", "| task | prior | lam scale | schedule | " + " | ".join(f"s = {s:g}" for s in starts) + " |",
             "|---|---|---|---|" + "---|" * len(starts)]
    for task in tasks:
        for prior in priors:
            mine = [r for r in rows if r["task"] == task and r["prior"] == prior]
            variants = sorted({(r["lam_scale"], r["end"], r["steps"]) for r in mine},
                              key=lambda v: (v[0], v[1] or 0.0, v[2] or 0))  # six factors (None) first
            for lam_scale, end, steps in variants:
                cells = {r["start"]: r for r in mine if (r["lam_scale"], r["end"], r["steps"]) == (lam_scale, end, steps)}
                chosen = best[prior][task]
                key = (lam_scale, end, steps)
                lines.append(f"| {task} | {prior} | {lam_scale:g} | {_schedule_name(end, steps)} | " + " | ".join(
                    "-" if s not in cells else
                    (f"**{cells[s]['psnr']:.2f}**" if (s, *key) == tuple(chosen[k] for k in ("start", "lam_scale", "end", "steps"))
                     else f"{cells[s]['psnr']:.2f}") + f" ({cells[s]['seconds']:.1f} s)" for s in starts) + " |")
    lines += ["", f"Chosen (bold): the best mean PSNR; among settings within {TIE_DB} dB of it, the fewest betas. " + "; ".join(f"{prior}: " + ", ".join(
        f"{task} s={b['start']:g} x{b['lam_scale']:g} {_schedule_name(b['end'], b['steps'])}" for task, b in tb.items())
        for prior, tb in best.items())]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(json.dumps(best))


if __name__ == "__main__":
    sys.exit(main())
