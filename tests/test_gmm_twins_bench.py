"""bench/gmm_twins.py on a tiny GMM with planted twins: they are counted, and the held-out NLL is the
GMM's own mean-free marginal."""

import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gmm_twins as bench  # noqa: E402

from patchreg.data import bundled_image  # noqa: E402
from patchreg.priors import GMM  # noqa: E402


def test_bench_counts_planted_twins(tmp_path, monkeypatch):
    image = torch.as_tensor(bundled_image("camera"), dtype=torch.float64)[100:164, 100:164] / 255
    model = GMM(4, patch_size=3).fit(torch.randn(2000, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.1,
                                     n_iter=2, seed=0, progress=False)
    model.means[3] = model.means[1]
    model.covariances[3] = model.covariances[1]
    ckpt = model.save(tmp_path / "twins.safetensors")
    monkeypatch.setattr(bench, "load_train400", lambda split: [image])
    out = tmp_path / "twins"
    bench.main(["--gmm", str(ckpt), "--n", "500", "--out", str(out)])
    (row,) = json.loads(out.with_suffix(".json").read_text())
    assert (row["components"], row["distinct"], row["twin_groups"], row["largest_group"]) == (4, 3, 1, 2)
    assert row["em_iterations"] == 2 and math.isfinite(row["heldout_nll"])
    assert "| 4 | 3 | 1 (2) |" in out.with_suffix(".md").read_text()
