"""bench/chart_zstep_ablation.py on a tiny chart model and one small image: every row runs, the report and its
JSON are written, and EPLL (the reference row) denoises."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import chart_zstep_ablation as bench  # noqa: E402

from patchreg.cli import main as cli  # noqa: E402
from patchreg.data import bundled_image  # noqa: E402


def test_ablation_runs_every_row(tmp_path, monkeypatch):
    ckpt = tmp_path / "tiny.safetensors"
    assert cli(["train", "charts", "--data", "bundled", "--patch-size", "6", "--charts", "2", "--latent-dim", "2",
                "--steps", "8", "--batch-size", "64", "--width", "8", "--blocks", "1", "--selector-points", "500",
                "--no-progress", "--out", str(ckpt)]) == 0
    crop = np.asarray(bundled_image("camera"), dtype=np.float64)[100:148, 100:148]
    monkeypatch.setattr(bench, "validation_images", lambda count: [torch.as_tensor(crop, dtype=torch.float32)[None, None]])
    out = tmp_path / "ablation.md"
    bench.main(["--charts", str(ckpt), "--images", "1", "--sigmas", "25", "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())
    assert len(rows) == 4 and all(math.isfinite(r["mean"]) for r in rows)
    assert "selector Gaussians" in out.read_text()
    noisy_psnr = 20 * math.log10(255 / 25)
    assert rows[0]["method"].startswith("EPLL") and rows[0]["mean"] > noisy_psnr + 3
