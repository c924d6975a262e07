"""bench/patchnr_block_rows.py: one tiny run writes a table and JSON with one row per block size, and bad
arguments are refused before any work."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import patchnr_block_rows as bench  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_bench_reports_every_block_size(tmp_path):
    out = tmp_path / "blocks"
    bench.main(["--n-patches", "300", "--blocks", "64,300", "--rounds", "2", "--out", str(out)])
    report = json.loads(out.with_suffix(".json").read_text())
    rows = report["rows"]
    assert [r["block_rows"] for r in rows] == [64, 300]
    assert all(len(r["rounds"]) == 2 and r["seconds"] > 0 for r in rows)
    assert min(r["slower_than_fastest"] for r in rows) == 1.0
    assert rows[0]["memory_mb"] < rows[1]["memory_mb"]  # buffers scale with the block, not with N_p
    assert "| 64 |" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("argv, message", [(["--blocks", "0,64"], "--blocks must list integers >= 1"),
                                           (["--rounds", "0"], "--rounds must be >= 1"),
                                           (["--n-patches", "0"], "--n-patches must be >= 1")])
def test_bad_arguments_exit_with_a_message(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        bench.main(argv + ["--out", str(tmp_path / "x")])
    assert message in capsys.readouterr().err
