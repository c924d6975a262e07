"""bench/head_to_head_set12.py on planted cells: sources filtered by prior, task and settings, paired by image,
a mismatched noise seed or an ambiguous filter refused, and the committed sources readable."""

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import head_to_head_set12 as bench  # noqa: E402


def cell(task, prior, image, psnr, seed, settings=None, size=(256, 256), seconds=1.0):
    return dict(task=task, prior=prior, image=image, size=list(size), psnr=psnr, ssim=psnr / 40, seconds=seconds,
                seed=seed, settings=settings or {})


def write(path, cells):
    path.write_text("".join(json.dumps(c) + "\n" for c in cells))


SOURCES = (
    bench.Source("EPLL 6x6", "epll.jsonl", "epll", ("denoise25",)),
    bench.Source("chart prior", "charts.jsonl", "charts", ("denoise25",), settings=(("top_charts", 1),)),
)


def planted(tmp_path, charts_seed=1):
    write(tmp_path / "epll.jsonl", [cell("denoise25", "epll", "01.png", 30.0, 0), cell("denoise25", "epll", "02.png", 28.0, 1),
                                    cell("denoise25", "bm3d", "01.png", 99.0, 0)])
    write(tmp_path / "charts.jsonl", [cell("denoise25", "charts", "01.png", 29.0, 0, {"top_charts": 1}),
                                      cell("denoise25", "charts", "02.png", 28.5, charts_seed, {"top_charts": 1}),
                                      cell("denoise25", "charts", "02.png", 20.0, 1, {"top_charts": 2})])


def test_cells_are_filtered_and_paired(tmp_path):
    planted(tmp_path)
    table = bench.load_cells(SOURCES, root=tmp_path)
    assert {i: c["psnr"] for i, c in table[("denoise25", "chart prior")].items()} == {"01.png": 29.0, "02.png": 28.5}
    row = bench.summarize(table)["denoise25"]
    assert row["EPLL 6x6"]["psnr"] == pytest.approx(29.0) and row["EPLL 6x6"]["n"] == 2
    d = row["chart prior"]["vs_baseline"]
    # differences -1.0 and +0.5: mean -0.25, sample s.d. 1.0607, s.e. 0.75
    assert d["mean"] == pytest.approx(-0.25) and d["se"] == pytest.approx(math.sqrt(1.125 / 2)) and d["better"] == 1
    assert bench.winner(row) == "EPLL 6x6"


def test_a_different_noise_seed_is_refused(tmp_path):
    planted(tmp_path, charts_seed=7)
    with pytest.raises(ValueError, match="02.png.*not the same problem"):
        bench.load_cells(SOURCES, root=tmp_path)


def test_an_ambiguous_filter_is_refused(tmp_path):
    planted(tmp_path)
    loose = (bench.Source("chart prior", "charts.jsonl", "charts", ("denoise25",)),)
    with pytest.raises(ValueError, match="two cells of denoise25 02.png"):
        bench.load_cells(loose, root=tmp_path)


def test_committed_sources_give_every_task(tmp_path):
    bench.main(["--out", str(tmp_path / "h2h")])
    summary = json.loads((tmp_path / "h2h.json").read_text())["Set12"]
    assert set(summary) == set(bench.TASKS)
    assert all(summary[t]["EPLL 6x6"]["n"] == 12 and summary[t]["PatchNR"]["n"] == 12 for t in bench.TASKS)
    assert "| denoise sigma 25 |" in (tmp_path / "h2h.md").read_text()


def test_one_image_pairs_without_a_standard_error(tmp_path):
    planted(tmp_path)
    table = bench.load_cells(SOURCES, root=tmp_path)
    table = {k: {"01.png": v["01.png"]} for k, v in table.items()}
    summary = bench.summarize(table)
    lines = bench.test_set_tables("phantom", summary, SOURCES)
    assert "| denoise sigma 25 | -1.00 (0/1) |" in lines


def test_figure_flags_reproduce_every_cpu_cells_settings():
    """bench/head_to_head_figures.py reruns a cell from the flags rerun_flags builds; parsed by priors_table, they
    must give back the settings the cell stored (the GPU cells' device and card are what a CPU rerun changes)."""
    import head_to_head_figures as figures
    import priors_table

    table = bench.load_cells()
    checked = 0
    for (task, contender), cells in table.items():
        source = figures.source_of(contender, task)
        for cell in cells.values():
            if (cell.get("settings") or {}).get("device") == "cuda":
                continue
            args = priors_table.build_parser().parse_args(figures.rerun_flags(cell, source, "cpu", "bfloat16"))
            stored = {k: v for k, v in (cell.get("settings") or {}).items() if k != "tuned_on"}
            assert priors_table.cell_settings(cell["prior"], args, task) == stored, (task, contender, cell["image"])
            checked += 1
    assert checked >= 12 * 5
