"""PatchNR at its paper's reconstruction settings on Set12, its weight tuned per task on validation (one GPU run).

For each task, in --tasks order, the weight lam = SCALE * n_image_patches / d (the MAP scale of the other priors)
is chosen among --scales by the mean PSNR on the first --val-images validation images of train400; the three
denoising levels share the scale chosen at sigma 25 (TUNED_AS). Then every Set12 image is reconstructed with it.
Settings per task are bench/priors_table.py's (40k random patches per iteration, task_defaults' PATCHNR_STEPS and PATCHNR_LR: 300
Adam iterations, 3000 for limited-angle CT; the same problems, noise seeds and PSNR).

Made for one call on a GPU: a timing probe at the start measures seconds per iteration, and a task whose estimated
cost no longer fits in --budget seconds is skipped (and said so), so the call ends with whatever finished. Every cell
is appended at once to OUT_validation.jsonl or OUT.jsonl, and a rerun skips the cells already there. OUT.md puts the
Set12 means beside EPLL, the chart prior and BM3D from --compare (later files override earlier ones), paired by image.

On a CPU (--device cpu --flow-precision bfloat16) the paper's settings fit only a subset; the issue's protocol is a
cheaper setting (--patchnr-patches) on every image with its weight tuned on validation, and the paper's settings on a
stated subset with that same weight (--lam-scale S --tuned-on TEXT skips the tuning), so the loss is measured there.

    python bench/patchnr_paper_settings.py --device cuda --tf32 --budget 480 --out bench/results/patchnr_paper_set12
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from priors_table import (Runners, cell_settings, configure_device, make_problem,  # noqa: E402
                          patchnr_schedule, prepare_clean)

from patchreg.data import load_set12, load_train400, to_tensor  # noqa: E402
from patchreg.metrics import measure, psnr, ssim  # noqa: E402
from patchreg.priors.task_defaults import PATCHNR_LR, PATCHNR_STEPS  # noqa: E402

TASK_ORDER = ("denoise25", "sr4", "ct_lowdose", "deblur", "sr2", "inpaint", "denoise15", "denoise50", "ct_limited")
TUNED_AS = {"denoise15": "denoise25", "denoise50": "denoise25"}
SAFETY = 1.2  # estimated cost x this must fit in what is left of the budget


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASK_ORDER), choices=TASK_ORDER)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.1, 0.3, 1.0],
                    help="candidate weights, in units of n_image_patches / d")
    ap.add_argument("--val-images", type=int, default=2, help="the first N validation images tune the weight")
    ap.add_argument("--images", type=int, nargs="*", default=None, help="Set12 indices (0-11); default all")
    ap.add_argument("--flow", default="pretrained:flow")
    ap.add_argument("--patchnr-patches", type=int, default=40_000)
    ap.add_argument("--patchnr-steps", type=int, default=None, help=f"default per task {PATCHNR_STEPS}, else 300")
    ap.add_argument("--patchnr-lr", type=float, default=None, help=f"default per task {PATCHNR_LR}, else 0.01")
    ap.add_argument("--ct-size", type=int, default=256)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    ap.add_argument("--tf32", action="store_true", help="float32 matrix products on TF32 tensor cores")
    ap.add_argument("--flow-precision", choices=("float32", "bfloat16"), default="float32",
                    help="the flow's arithmetic (bfloat16: patchreg.priors.flow_lowp, CPU only)")
    ap.add_argument("--fp32-control", type=int, default=1,
                    help="with --tf32: rerun the first N Set12 denoise25 images in full float32 to measure TF32's effect")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds; tasks that no longer fit are skipped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lam-scale", type=float, default=None,
                    help="skip the validation tuning and use this scale (say where it was chosen with --tuned-on)")
    ap.add_argument("--tuned-on", default=None, help="with --lam-scale: where that scale was chosen, kept in every row")
    ap.add_argument("--compare", nargs="+", default=["bench/results/priors_set12.jsonl"],
                    help="cells of the other priors (bench/priors_table.py's .jsonl); later files override earlier")
    ap.add_argument("--out", default="bench/results/patchnr_paper_set12")
    ap.add_argument("--report-only", action="store_true")
    return ap


class Session:
    """The runs of one call: the runner, the clock, and the two cell files."""

    def __init__(self, args):
        self.args = args
        self.args.patchnr_lam_scale = None  # per cell: Runners.patchnr's lam_scale and the row's settings
        self.runners = Runners(args)
        self.start = time.perf_counter()
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.test_path = out.with_suffix(".jsonl")
        self.val_path = out.parent / (out.name + "_validation.jsonl")
        # keyed by the setting too, so a cheaper setting and the paper's can share one report
        self.test_cells = {(r["task"], r["prior"], r["image"], _setting(r["settings"])): r for r in _rows(self.test_path)}
        self.val_cells = {(r["task"], r["lam_scale"], r["image"], _setting(r["settings"])): r for r in _rows(self.val_path)}
        self.seconds_per_iter = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def run(self, task, clean, seed, scale):
        """One reconstruction: (estimate, psnr, ssim, seconds, peak MB)."""
        op, y, sigma = make_problem(task, clean, seed)
        with measure(self.args.device) as m:
            x = self.runners.patchnr(task, op, y, sigma, lam_scale=scale).clamp(0, 1)
        return x, float(psnr(x, clean)[0]), float(ssim(x, clean)[0]), m.seconds, m.peak_megabytes

    def probe(self, clean) -> float:
        """Seconds per Adam iteration at the settings of this call (after a warm-up)."""
        saved = self.args.patchnr_steps
        try:
            self.args.patchnr_steps = 5
            self.run("denoise25", clean, self.args.seed, 0.3)
            self.args.patchnr_steps = 30
            seconds = self.run("denoise25", clean, self.args.seed, 0.3)[3]
        finally:
            self.args.patchnr_steps = saved
        return seconds / 30

    def fits(self, n_runs: int, steps: int) -> bool:
        cost = SAFETY * n_runs * steps * self.seconds_per_iter
        return self.elapsed() + cost <= self.args.budget


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _append(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def tune(session: Session, task: str, val_images, val_names) -> float:
    """The scale with the best mean validation PSNR for `task` (cells reused from earlier calls)."""
    args = session.args
    setting = _current_setting(args, task)
    for scale in args.scales:
        for j, (img, name) in enumerate(zip(val_images, val_names)):
            if (task, scale, name, setting) in session.val_cells:
                continue
            clean = prepare_clean(task, to_tensor(img), args.ct_size)
            _, p, s, sec, _ = session.run(task, clean, args.seed + j, scale)
            row = dict(task=task, lam_scale=scale, image=name, psnr=p, ssim=s, seconds=sec,
                       settings=_settings(args, task, scale))
            session.val_cells[(task, scale, name, setting)] = row
            _append(session.val_path, row)
            print(f"validation {task:10s} scale {scale:<5g} {name}: {p:.2f} dB  {sec:.1f} s", flush=True)
    means = {scale: statistics.mean(session.val_cells[(task, scale, n, setting)]["psnr"] for n in val_names)
             for scale in args.scales}
    return max(means, key=means.get)


def _settings(args, task, scale) -> dict:
    card = {"card": _card()} if args.device == "cuda" else {}
    tuned_on = args.tuned_on if args.lam_scale is not None else f"validation[:{args.val_images}]"
    return {**cell_settings("patchnr", args, task), "lam_scale": scale, "tuned_on": tuned_on, **card}


def _card() -> str:
    return f"{torch.cuda.get_device_name()}, torch {torch.__version__} (CUDA {torch.version.cuda})"


def test(session: Session, task: str, scale: float, images, names, indices, key_prior="patchnr") -> None:
    args = session.args
    setting = _current_setting(args, task)
    for i in indices:
        if (task, key_prior, names[i], setting) in session.test_cells:
            continue
        clean = prepare_clean(task, to_tensor(images[i]), args.ct_size)
        _, p, s, sec, mb = session.run(task, clean, args.seed + i, scale)
        row = dict(task=task, prior=key_prior, image=names[i], size=list(clean.shape[-2:]), psnr=p, ssim=s,
                   seconds=sec, peak_mb=mb, seed=args.seed + i, settings=_settings(args, task, scale))
        session.test_cells[(task, key_prior, names[i], setting)] = row
        _append(session.test_path, row)
        print(f"set12      {task:10s} {key_prior} scale {scale:<5g} {names[i]}: {p:.2f} dB  SSIM {s:.3f}  {sec:.1f} s",
              flush=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if (args.lam_scale is None) != (args.tuned_on is None):
        raise SystemExit("--lam-scale and --tuned-on go together (a fixed weight must say where it was chosen)")
    if args.lam_scale is not None and not args.lam_scale > 0:
        raise SystemExit(f"--lam-scale must be > 0, got {args.lam_scale}")
    if args.report_only:
        write_report(args, skipped={})
        return 0
    configure_device(args)
    session = Session(args)
    val_images, val_names = load_train400("validation", with_names=True)
    val_images, val_names = val_images[: args.val_images], val_names[: args.val_images]
    images, names = load_set12(with_names=True)
    indices = list(range(len(images))) if args.images is None else args.images

    session.seconds_per_iter = session.probe(prepare_clean("denoise25", to_tensor(images[0]), args.ct_size))
    print(f"probe: {1000 * session.seconds_per_iter:.1f} ms per Adam iteration "
          f"({args.patchnr_patches} patches, tf32={args.tf32})", flush=True)
    chosen, skipped = {}, {}
    for task in args.tasks:
        steps, _ = patchnr_schedule(task, args)
        tuned_as = TUNED_AS.get(task, task)
        if args.lam_scale is not None:
            chosen[tuned_as] = args.lam_scale
        setting = _current_setting(args, task)
        n_val = 0 if tuned_as in chosen else sum(
            (tuned_as, s, n, setting) not in session.val_cells for s in args.scales for n in val_names)
        n_test = sum((task, "patchnr", names[i], setting) not in session.test_cells for i in indices)
        if not session.fits(n_val + n_test, steps):
            skipped[task] = f"estimated {SAFETY * (n_val + n_test) * steps * session.seconds_per_iter:.0f} s " \
                            f"did not fit the {args.budget - session.elapsed():.0f} s left"
            print(f"skip {task}: {skipped[task]}", flush=True)
            continue
        if tuned_as not in chosen:
            chosen[tuned_as] = tune(session, tuned_as, val_images, val_names)
        test(session, task, chosen[tuned_as], images, names, indices)
    if args.tf32 and args.fp32_control and "denoise25" in chosen:
        control = indices[: args.fp32_control]
        if session.fits(len(control), 300):
            torch.backends.cuda.matmul.allow_tf32 = False
            args.tf32 = False
            test(session, "denoise25", chosen["denoise25"], images, names, control, key_prior="patchnr_fp32")
            args.tf32 = True
    write_report(args, skipped, session.seconds_per_iter)
    print(f"done in {session.elapsed():.0f} s", flush=True)
    return 0


def _setting(st: dict) -> str:
    """A cell's reconstruction setting (its settings dict) in words: patches x iterations, the flow's arithmetic."""
    arith = "TF32" if st.get("tf32") else st.get("flow_precision", "float32")
    return f"{st['n_patches']} x {st['steps']}, {arith}, {st['device']}"


def _current_setting(args, task: str) -> str:
    """The setting this call runs `task` at, in `_setting`'s words (the key of its cells)."""
    return _setting(cell_settings("patchnr", args, task))


def _task_settings(tests: list[dict]) -> list[tuple[str, str]]:
    """(task, setting) pairs present among the PatchNR cells, tasks in TASK_ORDER."""
    seen = {(r["task"], _setting(r["settings"])) for r in tests if r.get("prior", "patchnr") == "patchnr"}
    return sorted(seen, key=lambda ts: (TASK_ORDER.index(ts[0]), ts[1]))


def write_report(args, skipped: dict, seconds_per_iter: float | None = None) -> None:
    out = Path(args.out)
    tests = _rows(out.with_suffix(".jsonl"))
    vals = _rows(out.parent / (out.name + "_validation.jsonl"))
    others = {(r["task"], r["prior"], r["image"]): r for path in args.compare for r in _rows(Path(path))}
    cards = sorted({r["settings"].get("card", r["settings"]["device"]) for r in tests + vals})
    lines = ["# PatchNR at the paper's settings on Set12, weight tuned on validation", "",
             f"Cells: {out.name}.jsonl (Set12) and {out.name}_validation.jsonl (tuning). Command: "
             f"`python bench/patchnr_paper_settings.py {' '.join(sys.argv[1:])}`", "",
             f"Device of the cells: {'; '.join(cards)}.",
             "Per cell (the settings column): random 6x6 patches per Adam iteration (redrawn each iteration), Adam "
             f"iterations (default {PATCHNR_STEPS}, else 300; learning rate {PATCHNR_LR}, else 0.01), the flow's "
             "arithmetic; lam = scale x n_image_patches / d; the flow `pretrained:flow` (250k steps). PSNR on the full "
             "image after clipping to [0, 1].", ""]
    if seconds_per_iter is not None:
        lines.append(f"Timing probe: {1000 * seconds_per_iter:.1f} ms per Adam iteration.")
    lines += ["", "## Weight chosen on validation (mean PSNR dB per scale)", "",
              "| task | settings | " + " | ".join(f"scale {s:g}" for s in sorted({v['lam_scale'] for v in vals})) + " |",
              "|---" * (2 + len({v['lam_scale'] for v in vals})) + "|"]
    for task, setting in _task_settings(vals):
        row = []
        for s in sorted({v["lam_scale"] for v in vals}):
            ps = [v["psnr"] for v in vals if v["task"] == task and v["lam_scale"] == s
                  and _setting(v["settings"]) == setting]
            row.append(f"{statistics.mean(ps):.2f} ({len(ps)})" if ps else "-")
        lines.append(f"| {task} | {setting} | " + " | ".join(row) + " |")
    lines += ["", "## Set12 (paired means over the images PatchNR has)", "",
              "| task | settings | images | scale | PatchNR | SSIM | EPLL | charts | BM3D | time s / image (median) | peak MB |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for task, setting in _task_settings(tests):
        rows = [r for r in tests if r["task"] == task and r["prior"] == "patchnr" and _setting(r["settings"]) == setting]
        imgs = [r["image"] for r in rows]

        def paired(prior):
            got = [others[(task, prior, n)]["psnr"] for n in imgs if (task, prior, n) in others]
            return f"{statistics.mean(got):.2f} ({len(got)})" if got else "-"

        lines.append(f"| {task} | {setting} | {len(rows)} | {rows[0]['settings']['lam_scale']:g} | "
                     f"{statistics.mean(r['psnr'] for r in rows):.2f} | {statistics.mean(r['ssim'] for r in rows):.4f} | "
                     f"{paired('epll')} | {paired('charts')} | {paired('bm3d')} | "
                     f"{statistics.median(r['seconds'] for r in rows):.1f} | {max(r['peak_mb'] for r in rows):.0f} |")
    controls = [r for r in tests if r["prior"] == "patchnr_fp32"]
    if controls:
        lines += ["", "TF32 against full float32 (denoise25, same image, seed and weight):", ""]
        for c in controls:
            t = next((r for r in tests if r["task"] == c["task"] and r["prior"] == "patchnr" and r["image"] == c["image"]), None)
            if t:
                lines.append(f"- {c['image']}: TF32 {t['psnr']:.3f} dB in {t['seconds']:.1f} s, float32 "
                             f"{c['psnr']:.3f} dB in {c['seconds']:.1f} s")
    if skipped:
        lines += ["", "Skipped for time in the last call: " + "; ".join(f"{t} ({why})" for t, why in skipped.items())]
    lines += ["", "## Per image (PSNR dB)", "",
              "| task | settings | " + " | ".join(f"{i:02d}" for i in range(1, 13)) + " |", "|---" * 14 + "|"]
    for task, setting in _task_settings(tests):
        by = {r["image"]: r["psnr"] for r in tests if r["task"] == task and r["prior"] == "patchnr"
              and _setting(r["settings"]) == setting}
        if by:
            lines.append(f"| {task} | {setting} | " + " | ".join(f"{by[f'{i:02d}.png']:.2f}" if f"{i:02d}.png" in by else "-"
                                                     for i in range(1, 13)) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
