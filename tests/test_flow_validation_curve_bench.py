"""bench/flow_validation_curve.py reads a checkpoint's validation history and applies the patience rule."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import flow_validation_curve as bench  # noqa: E402

from patchreg.priors.flow import PatchFlow  # noqa: E402


class _Stream:
    def __init__(self):
        self.g = torch.Generator().manual_seed(0)

    def sample(self, n):
        return 0.5 + 0.1 * torch.randn(n, 4, generator=self.g)


def test_verdict_counts_steps_since_the_best():
    assert bench.verdict([(0, 5.0), (10, 4.0), (20, 4.5), (30, 4.0)], patience=20)["rule_met"] is True
    v = bench.verdict([(0, 5.0), (10, 4.0), (20, 3.9)], patience=20)
    assert (v["best_step"], v["stalled_for"], v["rule_met"]) == (20, 0, False)


def test_report_from_a_checkpoint(tmp_path):
    path = tmp_path / "f.safetensors"
    val = 0.5 + 0.1 * torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    PatchFlow(patch_size=2, n_blocks=1, hidden=8).fit(_Stream(), 6, lr=1e-2, batch_size=8, validation=val,
                                                      val_every=3, checkpoint=path, progress=False)
    out = tmp_path / "curve"
    bench.main([str(path), "--patience", "3", "--window", "3", "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    assert [h[0] for h in data["validation"]] == [0, 3, 6]
    assert "| 3 |" in out.with_suffix(".md").read_text()
    bare = tmp_path / "bare.safetensors"
    PatchFlow(patch_size=2, n_blocks=1, hidden=8).fit(_Stream(), 2, checkpoint=bare, progress=False)
    with pytest.raises(SystemExit, match="no validation history"):
        bench.main([str(bare), "--out", str(out)])
