"""bench/priors_table.py's test sets: the phantom on the CT grid, and a task or image index the test set does not
have refused before anything runs."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import priors_table as bench  # noqa: E402


def test_phantom_is_one_image_on_the_ct_grid():
    images, names = bench.load_test_images("phantom", 64)
    assert names == ["shepp_logan.png"] and images[0].shape == (64, 64)
    assert 0.0 <= images[0].min() and images[0].max() <= 1.0


@pytest.mark.parametrize("argv, message", [
    (["--test-set", "phantom", "--tasks", "ct_limited", "denoise25"], "CT tasks only"),
    (["--test-set", "phantom", "--tasks", "ct_lowdose", "--images", "1"], r"indices in \[0, 0\]"),
    (["--tasks", "deblur", "--images", "12"], r"indices in \[0, 11\]"),
])
def test_selection_the_test_set_lacks_is_refused(tmp_path, monkeypatch, argv, message):
    def no_runs(*args, **kwargs):
        raise AssertionError("a reconstruction started before the arguments were checked")

    monkeypatch.setattr(bench, "Runners", no_runs)
    with pytest.raises(SystemExit, match=message):
        bench.main(argv + ["--priors", "epll", "--out", str(tmp_path / "t")])
