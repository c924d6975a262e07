"""Low-dose CT: what the weighted least squares of the Poisson counts gains over unweighted least squares.

`ct_lowdose` (bench/priors_table.py: 60 angles over 180 degrees, 4096 photons, log-transformed counts)
is solved by EPLL's splitting on the whitened data term 1/2 sum_j w_j (A x - y)_j^2, w_j = N_j mu^2 the
inverse variance of y_j (patchreg.physics.whitened). The alternative a user would try first is plain
least squares: the same splitting with one weight for every ray, here the mean of the w_j (so that the
data weight keeps its scale). Each data term gets its own HQS start s and data-weight scale, tuned on
validation images of train400 by the same grid (never on Set12); then both run on the Set12 images.

    python bench/ct_weighting_gain.py --tune-images 3 --out bench/results/ct_weighting_gain
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

from patchreg.data import load_set12, load_train400, to_tensor  # noqa: E402
from patchreg.metrics import psnr  # noqa: E402
from patchreg.physics import Whitened, poisson_weights  # noqa: E402
from patchreg.pretrained import resolve_checkpoint  # noqa: E402
from patchreg.priors import GMM, epll_restore  # noqa: E402
from patchreg.priors.task_defaults import schedule_from_start  # noqa: E402

TASK = "ct_lowdose"
DATA_TERMS = ("weighted", "unweighted")


def data_term(op, y, kind: str):
    """(operator, measurements) of the splitting: the weighted least squares, or one weight (the mean) for all rays."""
    w = poisson_weights(op.noise_model, y)
    if kind == "unweighted":
        w = torch.full_like(w, float(w.mean()))
    whitened = Whitened(op, w)
    return whitened, whitened.whiten(y)


def restore(gmm, op, y, kind: str, start: float, lam_scale: float) -> torch.Tensor:
    x0 = op.initial_guess(y)
    A, yw = data_term(op, y, kind)
    return epll_restore(yw, A, gmm, 1.0, betas=schedule_from_start(start), lam=lam_scale * gmm.dim, x0=x0)


def problems(images, ct_size: int, seed: int):
    out = []
    for i, im in enumerate(images):
        clean = prepare_clean(TASK, to_tensor(im, torch.float64), ct_size)
        op, y, _ = make_problem(TASK, clean, seed + i)
        out.append((clean, op, y.float()))
    return out


def score(gmm, cases, kind, start, lam_scale):
    t0 = time.perf_counter()
    values = [float(psnr(restore(gmm, op, y, kind, start, lam_scale).double().clamp(0, 1), clean)[0])
              for clean, op, y in cases]
    return values, (time.perf_counter() - t0) / len(cases)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gmm", default="pretrained:gmm")
    ap.add_argument("--tune-images", type=int, default=3, help="the first N validation images for the grid")
    ap.add_argument("--starts", type=float, nargs="+", default=[0.04, 0.08, 0.16, 0.32])
    ap.add_argument("--lam-scales", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    ap.add_argument("--test-images", type=int, nargs="*", default=None, help="Set12 indices (default all 12)")
    ap.add_argument("--ct-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/ct_weighting_gain")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    gmm = GMM.load(resolve_checkpoint(args.gmm))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    store = out.with_suffix(".json")
    state = json.loads(store.read_text()) if store.is_file() else {"grid": [], "test": []}

    def save():
        store.write_text(json.dumps(state, indent=1))  # resumable: written after every cell

    tune = problems(load_train400("validation")[: args.tune_images], args.ct_size, args.seed)
    done = {(r["data_term"], r["start"], r["lam_scale"]) for r in state["grid"]}
    for kind, start, lam_scale in itertools.product(DATA_TERMS, args.starts, args.lam_scales):
        if (kind, start, lam_scale) in done:
            continue
        values, sec = score(gmm, tune, kind, start, lam_scale)
        state["grid"].append(dict(data_term=kind, start=start, lam_scale=lam_scale, psnr=statistics.mean(values),
                                  per_image=values, seconds=sec))
        save()
        print(f"tune {kind:10s} s={start:<5g} x{lam_scale:<3g} {state['grid'][-1]['psnr']:.2f} dB {sec:.1f} s/image",
              flush=True)
    best = {kind: max((r for r in state["grid"] if r["data_term"] == kind), key=lambda r: r["psnr"])
            for kind in DATA_TERMS}
    images, names = load_set12(with_names=True)
    indices = range(len(images)) if args.test_images is None else args.test_images
    # a test row is kept per (data term, image, settings): widening the grid cannot leave stale rows in use
    done = {(r["data_term"], r["image"], r["start"], r["lam_scale"]) for r in state["test"]}
    for i in indices:
        (clean, op, y), = problems([images[i]], args.ct_size, args.seed + i)  # the seeds of bench/priors_table.py
        for kind in DATA_TERMS:
            b = best[kind]
            if (kind, names[i], b["start"], b["lam_scale"]) in done:
                continue
            values, sec = score(gmm, [(clean, op, y)], kind, b["start"], b["lam_scale"])
            state["test"].append(dict(data_term=kind, image=names[i], psnr=values[0], seconds=sec,
                                      start=b["start"], lam_scale=b["lam_scale"]))
            save()
            print(f"test {names[i]} {kind:10s} {values[0]:.2f} dB {sec:.1f} s", flush=True)
    write_report(out, state, best, "python bench/ct_weighting_gain.py " + " ".join(
        argv if argv is not None else sys.argv[1:]))
    return 0


def write_report(out: Path, state: dict, best: dict, command: str) -> None:
    lines = ["# Low-dose CT: weighted against unweighted least squares (EPLL, HQS)", "", f"Command: `{command}`", "",
             f"Machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads (shared: "
             "times indicative). Task ct_lowdose of bench/priors_table.py (60 angles over 180 degrees, 4096 photons, "
             "images resized to at most 256x256); EPLL with the shipped GMM; 'unweighted': one weight, the mean of the "
             "inverse variances, for every ray. Each data term's HQS start s and data-weight scale come from the same "
             "grid on validation images of train400.", "",
             "## Grid on validation (mean PSNR dB)", "", "| data term | s | lam scale | PSNR | s/image |", "|---|---|---|---|---|"]
    for r in state["grid"]:
        mark = "**" if r is best[r["data_term"]] else ""
        lines.append(f"| {r['data_term']} | {r['start']:g} | {r['lam_scale']:g} | {mark}{r['psnr']:.2f}{mark} | "
                     f"{r['seconds']:.1f} |")
    tests = {}
    for r in state["test"]:
        b = best[r["data_term"]]
        if (r["start"], r["lam_scale"]) == (b["start"], b["lam_scale"]):
            tests.setdefault(r["image"], {})[r["data_term"]] = r
    pairs = [t for t in tests.values() if all(k in t for k in DATA_TERMS)]
    lines += ["", "## Set12 (PSNR dB, the validation-chosen settings)", "",
              "| image | weighted | unweighted | gain |", "|---|---|---|---|"]
    for name, t in tests.items():
        w, u = t.get("weighted"), t.get("unweighted")
        gain = f"{w['psnr'] - u['psnr']:+.2f}" if w and u else "-"
        lines.append(f"| {name} | {w['psnr']:.2f} | " if w else f"| {name} | - | ")
        lines[-1] += (f"{u['psnr']:.2f} | {gain} |" if u else f"- | {gain} |")
    if pairs:
        wm = statistics.mean(t["weighted"]["psnr"] for t in pairs)
        um = statistics.mean(t["unweighted"]["psnr"] for t in pairs)
        wins = sum(t["weighted"]["psnr"] > t["unweighted"]["psnr"] for t in pairs)
        lines += ["", f"Mean over {len(pairs)} images: weighted **{wm:.2f}** dB, unweighted **{um:.2f}** dB, gain "
                  f"**{wm - um:+.2f}** dB; the weighted term is better on {wins} of {len(pairs)} images."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
