"""bench/gmm_em_speed.py: its baseline (the dense upper-triangle statistics used until 2026-12-07) sums the same
statistics as `_Statistics` keeping every pair, and one run on a tiny GMM writes a report whose three paths agree."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gmm_em_speed as bench  # noqa: E402

from patchreg.data import bundled_image  # noqa: E402
from patchreg.priors import GMM  # noqa: E402
from patchreg.priors.gmm import _Statistics  # noqa: E402


def test_dense_baseline_equals_statistics_without_floor():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 6, generator=g, dtype=torch.float64)
    resp = torch.softmax(3 * torch.randn(400, 5, generator=g, dtype=torch.float64), dim=1)
    dense = bench.DenseUpperStatistics.zeros(5, 6, "cpu")
    exact = _Statistics.zeros(5, 6, "cpu", resp_floor=0.0)
    for part in (slice(0, 150), slice(150, 400)):
        dense.add(x[part], resp[part], 0.0)
        exact.add(x[part], resp[part], 0.0)
    torch.testing.assert_close(dense.second_matrix(), exact.second_matrix(), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(dense.first, exact.first, rtol=1e-12, atol=1e-13)


def test_bench_reports_both_paths(tmp_path, monkeypatch):
    image = torch.as_tensor(bundled_image("camera"), dtype=torch.float64)[100:164, 100:164] / 255
    data = torch.randn(3000, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.1
    ckpt = GMM(6, patch_size=3).fit(data, n_iter=2, seed=0, progress=False).save(tmp_path / "g.safetensors")
    monkeypatch.setattr(bench, "load_train400", lambda split: [image])
    out = tmp_path / "speed"
    bench.main(["--gmm", str(ckpt), "--n", "600", "--batch", "256", "--rounds", "2", "--out", str(out)])
    (row,) = json.loads(out.with_suffix(".json").read_text())
    ll = row["mean_loglik"]
    assert ll["sparse"] == ll["exact"] and ll["candidates"] == pytest.approx(ll["exact"], rel=1e-13, abs=1e-13)
    for path in ("sparse", "candidates"):
        assert max(row["m_step_max_rel_diff"][path].values()) < 1e-9
    assert 1 <= row["pairs_kept_per_patch"] <= 6 and min(row["stats_speedup"].values()) > 0
    assert "| 3 | 6 | 600 |" in out.with_suffix(".md").read_text()
