"""Where a bench report goes: the markdown path and, beside it, a folder of the same name for its figures."""

from __future__ import annotations

from pathlib import Path

import torch


def single_threaded_report(out) -> tuple[Path, Path]:
    """(report path, its figure folder, created); the run is pinned to one torch thread (shared machines)."""
    torch.set_num_threads(1)
    out = Path(out)
    fig_dir = out.with_suffix("")
    fig_dir.mkdir(parents=True, exist_ok=True)
    return out, fig_dir
