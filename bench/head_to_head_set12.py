"""Issue 11's answer in one table: Set12, every task, every contender at the setting validation chose for it.

The cells were measured by bench/priors_table.py (EPLL, the chart prior, BM3D; CPU) and by
bench/patchnr_paper_settings.py (PatchNR at the paper's reconstruction settings: an H200, and the CPU for
limited-angle CT) into bench/results/*.jsonl. SOURCES names, per contender and task, the file and the settings
of the cells that are that contender at its best; each choice was made on the validation split (the note of
each source says which section of bench/RESULTS.md records it). This script runs nothing: it pairs the cells by
image, checks that paired cells saw the same seeded noise and image size, and writes OUT.md and OUT.json.

    python bench/head_to_head_set12.py --out bench/results/head_to_head_set12

To regenerate a cell, rerun the command in the report of its source file (every source is resumable).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("denoise15", "denoise25", "denoise50", "deblur", "sr2", "sr4", "inpaint", "ct_lowdose", "ct_limited")
DENOISE = TASKS[:3]
TASK_NAMES = {"denoise15": "denoise sigma 15", "denoise25": "denoise sigma 25", "denoise50": "denoise sigma 50",
              "deblur": "deblur (std 2, noise 0.01)", "sr2": "sr x2", "sr4": "sr x4",
              "inpaint": "inpainting (50% missing)", "ct_lowdose": "low-dose CT", "ct_limited": "limited-angle CT"}
BASELINE = "EPLL 6x6"


@dataclass(frozen=True)
class Source:
    contender: str
    file: str
    prior: str  # the "prior" field of the cells
    tasks: tuple[str, ...]
    settings: tuple[tuple[str, object], ...] = ()  # items each cell's settings must hold
    note: str = ""
    model_flags: tuple[str, ...] = ()  # bench/priors_table.py flags naming the model, when not the shipped one


SOURCES = (
    Source("EPLL 6x6", "priors_set12_epll_twinfree.jsonl", "epll", TASKS,
           note="the shipped GMM (pretrained:gmm: K 200, 40 EM iterations, twin-free); Zoran & Weiss's five betas for "
                "denoising, the schedules of patchreg.priors.task_defaults elsewhere (RESULTS: 'Twin GMM components')"),
    Source("EPLL 8x8", "priors_set12_epll8_twinfree.jsonl", "epll", DENOISE,
           note="K 200, 26 EM iterations: validation's pick over the converged 374-iteration fit (RESULTS: 'The 8x8 fit "
                "converged')", model_flags=("--gmm", "bench/results/gmm_k200_p8_it26_twinfree.safetensors")),
    Source("chart prior", "priors_set12.jsonl", "charts", ("denoise15", "denoise50", "sr4", "ct_lowdose"),
           settings=(("precision", "float32"), ("top_charts", 1)),
           note="HQS, 1 (chart, scale) pair per patch, the shipped chart mixture; six-factor schedules, which validation "
                "kept for these tasks"),
    Source("chart prior", "priors_set12_denoise25_1thread.jsonl", "charts", ("denoise25",),
           settings=(("precision", "float32"), ("top_charts", 1)), note="as above"),
    Source("chart prior", "priors_set12_charts_geometric.jsonl", "charts", ("deblur", "sr2", "inpaint", "ct_limited"),
           settings=(("precision", "float32"), ("top_charts", 1)),
           note="as above, with the longer geometric schedules validation chose for these tasks"),
    Source("PatchNR", "patchnr_paper_set12.jsonl", "patchnr", TASKS[:-1], settings=(("n_patches", 40000),),
           note="the shipped 250k-step flow at the paper's settings (40,000 patches x 300 Adam iterations), weight "
                "tuned on 2 validation images; an H200 with TF32 (RESULTS: 'PatchNR at the paper's settings')"),
    Source("PatchNR", "patchnr_ct_limited_cpu.jsonl", "patchnr", ("ct_limited",), settings=(("n_patches", 2000),),
           note="the CPU protocol: 2,000 patches x 3,000 iterations (the paper: 40,000), bfloat16 flow; on image 01 "
                "the paper's setting gained 0.18 dB (RESULTS: 'Limited-angle CT for PatchNR, on the CPU')"),
    Source("BM3D", "priors_set12.jsonl", "bm3d", DENOISE + ("deblur",),
           note="the bm3d package (bm3d.bm3d, bm3d.bm3d_deblurring) at the true noise level"),
)
# The second CT test image: the Shepp-Logan phantom on the 256x256 CT grid (bench/priors_table.py --test-set
# phantom), the same settings as on Set12; PatchNR on the CPU in bfloat16 (0.01 dB from float32 on validation).
PHANTOM_SOURCES = (
    Source("EPLL 6x6", "priors_phantom_ct.jsonl", "epll", ("ct_lowdose", "ct_limited"), note="as on Set12"),
    Source("chart prior", "priors_phantom_ct.jsonl", "charts", ("ct_lowdose", "ct_limited"),
           settings=(("precision", "float32"), ("top_charts", 1)), note="as on Set12"),
    Source("PatchNR", "priors_phantom_ct_patchnr.jsonl", "patchnr", ("ct_lowdose",), settings=(("n_patches", 40000),),
           note="the paper's settings (40,000 patches x 300 iterations), weight scale 0.3 as on Set12; the CPU, bfloat16"),
    Source("PatchNR", "priors_phantom_ct_patchnr.jsonl", "patchnr", ("ct_limited",), settings=(("n_patches", 2000),),
           note="the CPU protocol as on Set12: 2,000 patches x 3,000 iterations, weight scale 0.3; bfloat16"),
)
TEST_SETS = {"Set12": SOURCES, "Shepp-Logan phantom (CT)": PHANTOM_SOURCES}


def contenders_of(sources) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s.contender for s in sources))


CONTENDERS = contenders_of(SOURCES)


def load_cells(sources=SOURCES, root: Path = RESULTS) -> dict:
    """{(task, contender): {image: cell}} from the sources; a source whose filter keeps two cells of one image
    or a contender given one task twice is an error, not a silent choice."""
    table: dict = {}
    for src in sources:
        path = root / src.file
        if not path.exists():
            raise FileNotFoundError(f"source {src.file} of {src.contender!r} is missing under {root}")
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            cell = json.loads(line)
            if cell.get("prior") != src.prior or cell.get("task") not in src.tasks:
                continue
            settings = cell.get("settings") or {}
            if any(settings.get(k) != v for k, v in src.settings):
                continue
            cells = table.setdefault((cell["task"], src.contender), {})
            if cell["image"] in cells and cells[cell["image"]]["_source"] != src.file:
                raise ValueError(f"{src.contender!r} has {cell['task']} {cell['image']} in two sources "
                                 f"({cells[cell['image']]['_source']} and {src.file})")
            if cell["image"] in cells:
                raise ValueError(f"{src.file}: two cells of {cell['task']} {cell['image']} pass the filter of "
                                 f"{src.contender!r}; narrow its settings")
            cells[cell["image"]] = dict(cell, _source=src.file)
    check_same_problems(table)
    return table


def check_same_problems(table: dict) -> None:
    """Paired cells must have reconstructed the same problem: the same noise seed and image size."""
    for task in TASKS:
        seen: dict = {}
        for (cell_task, _), cells in table.items():
            if cell_task != task:
                continue
            for image, cell in cells.items():
                key = (cell.get("seed"), tuple(cell.get("size", ())))
                first = seen.setdefault(image, (key, cell["_source"]))
                if first[0] != key:
                    raise ValueError(f"{task} {image}: seed/size {key} in {cell['_source']} but {first[0][0]}/"
                                     f"{first[0][1]} in {first[1]}: not the same problem")


def paired(a: dict, b: dict, field: str = "psnr"):
    """Mean and standard error of a - b over the images both have, and how many a wins."""
    images = sorted(set(a) & set(b))
    if not images:
        return None
    diffs = [a[i][field] - b[i][field] for i in images]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return dict(mean=statistics.fmean(diffs), se=se, better=sum(d > 0 for d in diffs), n=len(images))


def summarize(table: dict, contenders=None) -> dict:
    contenders = contenders or tuple(dict.fromkeys(c for _, c in table))
    out = {}
    for task in [t for t in TASKS if any(k[0] == t for k in table)]:
        row = {}
        for contender in contenders:
            cells = table.get((task, contender))
            if not cells:
                continue
            by_size = {}
            for cell in cells.values():
                by_size.setdefault(max(cell["size"]), []).append(cell["seconds"])
            row[contender] = dict(
                n=len(cells), psnr=mean_of(cells, "psnr"), ssim=mean_of(cells, "ssim"),
                seconds_median={str(s): statistics.median(v) for s, v in sorted(by_size.items())},
                sources=sorted({c["_source"] for c in cells.values()}),
                per_image={i: cells[i]["psnr"] for i in sorted(cells)},
                vs_baseline=None if contender == BASELINE or (task, BASELINE) not in table
                else paired(cells, table[(task, BASELINE)]))
        out[task] = row
    return out


def mean_of(cells: dict, field: str) -> float:
    return statistics.fmean(c[field] for c in cells.values())


def winner(row: dict) -> str | None:
    """The best mean among the contenders that have every image any contender of the task has."""
    full = max(r["n"] for r in row.values())
    complete = {c: r for c, r in row.items() if r["n"] == full}
    return max(complete, key=lambda c: complete[c]["psnr"]) if complete else None


def write_report(out: Path, results: dict, argv: list[str]) -> None:
    """results: {test set title: (summary, sources)}; one block of tables per test set."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Set12 head-to-head: every contender at its best (issue 11)", "",
             f"Command: `python bench/head_to_head_set12.py {shlex.join(argv)}`. The cells were measured by the "
             "runs named under Sources; this table only pairs them (same seeded noise and image size, checked). "
             "PSNR in dB on the full image after clipping to [0, 1]; the 12 Set12 images (seven 256x256, five "
             "512x512; CT on the images resized to 256x256) and, for CT, the Shepp-Logan phantom on the same grid. "
             "Means are over each contender's own images (n: how many, when fewer than the test set has); the winner "
             "is the best mean among the contenders that have every image; the paired table compares on the images "
             "both have.", ""]
    for title, (summary, sources) in results.items():
        lines += test_set_tables(title, summary, sources)
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({t: s for t, (s, _) in results.items()}, indent=1))


def test_set_tables(title: str, summary: dict, sources) -> list[str]:
    names = [c for c in contenders_of(sources) if any(c in row for row in summary.values())]
    full = max((r["n"] for row in summary.values() for r in row.values()), default=0)
    lines = [f"## {title}: mean PSNR (best in bold)", "",
             "| task | " + " | ".join(names) + " | winner |", "|---|" + "---|" * (len(names) + 1)]
    for task, row in summary.items():
        best = winner(row)
        cells = []
        for c in names:
            if c not in row:
                cells.append("-")
                continue
            text = f"{row[c]['psnr']:.2f}" + ("" if row[c]["n"] == full else f" (n {row[c]['n']})")
            cells.append(f"**{text}**" if c == best else text)
        lines.append(f"| {TASK_NAMES[task]} | " + " | ".join(cells) + f" | {best} |")
    others = [c for c in names if c != BASELINE]
    lines += ["", f"## {title}: paired difference to {BASELINE} (dB, mean +- standard error, images better)", "",
              "| task | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
    for task, row in summary.items():
        cells = []
        for c in others:
            d = row.get(c, {}).get("vs_baseline")
            if d is None:
                cells.append("-")
            else:
                se = f" +-{d['se']:.2f}" if d["n"] > 1 else ""
                cells.append(f"{d['mean']:+.2f}{se} ({d['better']}/{d['n']})")
        lines.append(f"| {TASK_NAMES[task]} | " + " | ".join(cells) + " |")
    lines += ["", f"## {title}: mean SSIM (scikit-image)", "", "| task | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for task, row in summary.items():
        lines.append(f"| {TASK_NAMES[task]} | " + " | ".join(
            f"{row[c]['ssim']:.4f}" if c in row else "-" for c in names) + " |")
    lines += ["", f"## {title}: time per image (median s, 256x256 / 512x512)", "",
              "Measured where each source ran (Sources): the CPU cells on a 2-core CPU at 1-2 threads, with other jobs "
              "beside them in some runs; the GPU cells on an H200. Compare within a column, not across devices.", "",
              "| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for task, row in summary.items():
        cells = []
        for c in names:
            if c not in row:
                cells.append("-")
                continue
            t = row[c]["seconds_median"]
            cells.append(" / ".join(f"{t[s]:.1f}" if s in t else "-" for s in ("256", "512")))
        lines.append(f"| {TASK_NAMES[task]} | " + " | ".join(cells) + " |")
    lines += ["", f"## {title}: sources", ""]
    lines += [f"- **{s.contender}**, {', '.join(s.tasks)}: `bench/results/{s.file}`"
              + (f" (cells with {', '.join(f'{k} = {v}' for k, v in s.settings)})" if s.settings else "")
              + f". {s.note[:1].upper() + s.note[1:]}" for s in sources]
    lines += ["", f"## {title}: per image (PSNR dB)", ""]
    for task, row in summary.items():
        images = sorted({i for r in row.values() for i in r["per_image"]})
        lines += [f"### {TASK_NAMES[task]}", "", "| image | " + " | ".join(c for c in names if c in row) + " |",
                  "|---|" + "---|" * sum(c in row for c in names)]
        for i in images:
            lines.append(f"| {i} | " + " | ".join(
                f"{row[c]['per_image'][i]:.2f}" if i in row[c]["per_image"] else "-" for c in names if c in row) + " |")
        lines.append("")
    return lines


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(RESULTS), help="folder of the source .jsonl files")
    ap.add_argument("--out", default=str(RESULTS / "head_to_head_set12"))
    args = ap.parse_args(argv)
    root = Path(args.results)
    results = {}
    for title, sources in TEST_SETS.items():
        if title != "Set12" and not all((root / s.file).exists() for s in sources):
            print(f"{title}: skipped, a source file is missing")  # the optional test sets may not be run yet
            continue
        results[title] = (summarize(load_cells(sources, root=root), contenders_of(sources)), sources)
    write_report(Path(args.out), results, argv)
    for title, (summary, _) in results.items():
        for task, row in summary.items():
            print(f"{title[:6]:6s} {task:10s} " + "  ".join(f"{c} {r['psnr']:.2f} ({r['n']})" for c, r in row.items())
                  + f"  -> {winner(row)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
