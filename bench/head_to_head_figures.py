"""Figure grids of the Set12 head-to-head: one image per task, every contender at the setting of its table cell.

For each task, Set12 image --image (default 0: 01.png, 256x256) is reconstructed by every contender of
bench/head_to_head_set12.py with the settings stored in that contender's cell for the image, so a panel shows what
the table measured. The CPU contenders are deterministic and must reproduce their cell's PSNR (the difference is
printed and reported); PatchNR's GPU cells are rerun on --device (bfloat16 on a CPU), so its panel may differ from its
cell by the device's rounding (reported too). Every reconstruction is cached as OUT_cache/TASK_CONTENDER.npy, so a
rerun resumes, and several processes may share the cache with disjoint --tasks.

    python bench/head_to_head_figures.py --out bench/results/head_to_head_set12_fig

Writes OUT_TASK.png (ground truth, the observation or the operator's start image, each contender with its PSNR)
and OUT.md (each panel's PSNR beside its table cell).
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import head_to_head_set12 as h2h  # noqa: E402
import priors_table  # noqa: E402

from patchreg.data import load_set12, to_tensor  # noqa: E402
from patchreg.metrics import psnr  # noqa: E402


def rerun_flags(cell: dict, source: h2h.Source, device: str, flow_precision: str) -> list[str]:
    """bench/priors_table.py flags that reproduce a cell from the settings it stored."""
    st = cell.get("settings") or {}
    flags = list(source.model_flags)
    if cell["prior"] in ("epll", "charts"):
        flags += ["--precision", st.get("precision", "float64")]
        if st.get("hqs_start") is not None:
            flags += ["--hqs-start", str(st["hqs_start"])]
        if cell["prior"] == "charts":
            flags += ["--top-charts", str(st.get("top_charts", 2))]
        if "lam_scale" in st:
            flags += ["--epll-lam-scale", str(st["lam_scale"])]
        if "beta_factors" in st:
            flags += ["--epll-beta-factors", ",".join(str(f) for f in st["beta_factors"])]
    elif cell["prior"] == "patchnr":
        flags += ["--patchnr-patches", str(st["n_patches"]), "--patchnr-steps", str(st["steps"]),
                  "--patchnr-lr", str(st["lr"]), "--patchnr-lam-scale", str(st["lam_scale"]), "--device", device]
        if device == "cpu":
            flags += ["--flow-precision", st.get("flow_precision", flow_precision)]
        elif st.get("tf32"):
            flags += ["--tf32"]
    return flags


def source_of(contender: str, task: str) -> h2h.Source:
    return next(s for s in h2h.SOURCES if s.contender == contender and task in s.tasks)


@functools.lru_cache(maxsize=None)
def runners_for(flags: tuple[str, ...]) -> "priors_table.Runners":
    """One priors_table.Runners per setting, so its models load once for all the tasks that share it."""
    run_args = priors_table.build_parser().parse_args(list(flags))
    priors_table.configure_device(run_args)
    return priors_table.Runners(run_args)


def reconstruct(task, contender, cell, source, op, y, sigma, args, cache: Path) -> tuple[torch.Tensor, float]:
    path = cache / f"{task}_{contender.replace(' ', '_')}.npy"
    if path.exists():
        return torch.from_numpy(np.load(path))[None, None], float("nan")
    runners = runners_for(tuple(rerun_flags(cell, source, args.device, args.flow_precision)))
    start = time.perf_counter()
    x = getattr(runners, cell["prior"])(task, op, y, sigma).clamp(0, 1)
    seconds = time.perf_counter() - start
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, x[0, 0].double().numpy())
    tmp.replace(path)  # atomic: a stopped run leaves no half-written panel
    return x, seconds


def panel_grid(out: Path, task: str, panels: list[tuple[str, torch.Tensor]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.0))
    for ax, (title, img) in zip(np.atleast_1d(axes), panels):
        ax.imshow(img[0, 0].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(h2h.TASK_NAMES[task], fontsize=9)
    fig.tight_layout()
    fig.savefig(f"{out}_{task}.png", dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(h2h.TASKS), choices=h2h.TASKS)
    ap.add_argument("--image", type=int, default=0, help="Set12 index (0-11)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="PatchNR's device")
    ap.add_argument("--flow-precision", choices=("float32", "bfloat16"), default="bfloat16",
                    help="PatchNR on a CPU: the flow's arithmetic (its CPU cells' setting)")
    ap.add_argument("--results", default=str(h2h.RESULTS))
    ap.add_argument("--out", default=str(h2h.RESULTS / "head_to_head_set12_fig"))
    args = ap.parse_args(argv)
    images, names = load_set12(with_names=True)
    if not 0 <= args.image < len(images):
        raise SystemExit(f"--image must be in [0, {len(images) - 1}], got {args.image}")
    table = h2h.load_cells(root=Path(args.results))
    out = Path(args.out)
    cache = Path(f"{out}_cache")
    cache.mkdir(parents=True, exist_ok=True)
    name = names[args.image]
    rows = []
    for task in args.tasks:
        clean = priors_table.prepare_clean(task, to_tensor(images[args.image]), 256)
        op, y, sigma = priors_table.make_problem(task, clean, args.image)  # the table's noise: seed 0 + image index
        shown = y if y.shape == clean.shape else op.initial_guess(y)
        panels = [("ground truth", clean),
                  (("observation" if y.shape == clean.shape else "start") + f" {float(psnr(shown.clamp(0, 1), clean)[0]):.2f} dB",
                   shown)]
        for contender in h2h.CONTENDERS:
            cell = table.get((task, contender), {}).get(name)
            if cell is None:
                continue
            if cell["seed"] != args.image:
                raise ValueError(f"{task} {contender}: the cell's noise seed {cell['seed']} is not the figure's {args.image}")
            x, seconds = reconstruct(task, contender, cell, source_of(contender, task), op, y, sigma, args, cache)
            value = float(psnr(x, clean)[0])
            panels.append((f"{contender} {value:.2f} dB", x))
            rows.append(dict(task=task, contender=contender, psnr=value, cell_psnr=cell["psnr"],
                             difference=value - cell["psnr"], seconds=seconds, cell_source=cell["_source"]))
            print(f"{task:10s} {contender:12s} {value:.3f} dB (cell {cell['psnr']:.3f}, {value - cell['psnr']:+.3f})",
                  flush=True)
        panel_grid(out, task, panels)
    write_report(out, name, rows, argv)
    return 0


def write_report(out: Path, name: str, rows: list[dict], argv: list[str]) -> None:
    lines = [f"# Set12 head-to-head: figure grids ({name})", "",
             f"Command: `python bench/head_to_head_figures.py {shlex.join(argv)}`. Each panel is a rerun of the "
             "contender's table cell for this image with the settings the cell stored (bench/head_to_head_set12.py's "
             "sources); difference = panel - cell, 0 to rounding for the deterministic CPU cells. PatchNR's panels ran "
             "on this run's device, its cells (except limited-angle CT) on an H200.", "",
             "| task | contender | panel PSNR dB | table cell dB | difference | figure |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['contender']} | {r['psnr']:.3f} | {r['cell_psnr']:.3f} | {r['difference']:+.3f} "
                     f"| [{out.name}_{r['task']}.png]({out.name}_{r['task']}.png) |")
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    Path(f"{out}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
