"""bench/charts_intrinsic_density.py (issue 15): the surface parameters of the Klein bottle in its fundamental
domain, the total variation, and a tiny end-to-end run whose checkpoint a rerun reuses."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
pytest.importorskip("matplotlib")
cid = pytest.importorskip("bench.charts_intrinsic_density")
from patchreg.data.toy_manifolds import KleinBottle  # noqa: E402


def test_klein_parameters_come_back_in_the_fundamental_domain():
    klein = KleinBottle()
    rng = np.random.default_rng(0)
    u, v = rng.uniform(0.05, 2 * math.pi - 0.05, 200), rng.uniform(0.05, 2 * math.pi - 0.05, 200)
    uv = cid.surface_params(klein, klein.param(u, v))
    assert ((uv >= 0) & (uv < 2 * math.pi)).all()
    # the same surface point, whichever representative (u, v) or (u + 2 pi, -v) the search found
    np.testing.assert_allclose(klein.param(uv[:, 0], uv[:, 1]), klein.param(u, v), atol=1e-6)
    np.testing.assert_allclose(uv, np.stack([u, v], 1), atol=1e-4)


def test_total_variation():
    a = np.array([[1.0, 1.0], [1.0, 1.0]])
    assert cid.total_variation(a, 3 * a) == 0.0
    assert cid.total_variation(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == pytest.approx(1.0)


def test_tiny_run_writes_the_table_and_reuses_its_checkpoint(tmp_path):
    out, ckpt = tmp_path / "density.md", tmp_path / "ckpt"
    argv = ["--steps", "3", "--n", "1000", "--bins", "4,2", "--ckpt-dir", str(ckpt), "--out", str(out)]
    assert cid.main(argv) == 0
    rows = [r for r in out.read_text().splitlines() if r.startswith("| 3 |")]
    assert len(rows) == 1 and rows[0].endswith("of 8 |")
    saved = next(ckpt.glob("klein_bottle_fif_s0_3.safetensors"))
    stamp = saved.stat().st_mtime_ns
    report = json.loads(out.with_suffix(".json").read_text())
    assert 0 <= report["rows"][0]["tv"] <= 1 and report["floor_tv"] < 0.5
    out.write_text(out.read_text() + "\n## Reading\n\nby hand\n")
    assert cid.main(argv) == 0
    assert saved.stat().st_mtime_ns == stamp and out.read_text().endswith("## Reading\n\nby hand\n")
    with pytest.raises(SystemExit):
        cid.main(["--steps", "3", "--n", "10", "--ckpt-dir", str(ckpt), "--out", str(out)])
