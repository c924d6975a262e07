"""`patchreg topology`: end to end on small inputs, and clear errors for bad ones."""

import json

import numpy as np
import pytest

from patchreg.cli import main
from patchreg.topology.models import sample_model


@pytest.fixture()
def circle_file(tmp_path):
    points, _ = sample_model("primary-circle", 600, seed=0, patch_size=3)
    path = tmp_path / "circle.npy"
    np.save(path, points)
    return path


def test_points_end_to_end(circle_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["topology", "--points", str(circle_file), "--patch-size", "3", "--core", "10,100",
                 "--charts", "16", "--chart-dim", "1", "--landmarks", "40", "--out", str(out), "--seed", "1"])
    assert code == 0
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["verdict"] == "circle"
    assert verdict["n_core"] == 600 and verdict["charts"]["threshold_scan"]
    for name in ("report.md", "barcodes.png", "klein_square.png", "chart_patches.png"):
        assert (out / name).stat().st_size > 0
    assert "circle" in capsys.readouterr().out


def test_learned_cover_end_to_end(circle_file, tmp_path):
    # the nerve of a learned FIF chart mixture (short training) names the primary circle too
    out = tmp_path / "out"
    code = main(["topology", "--points", str(circle_file), "--patch-size", "3", "--core", "none", "--cover", "learned",
                 "--learned-steps", "80", "--learned-width", "16", "--charts", "8", "--chart-dim", "1",
                 "--landmarks", "40", "--out", str(out), "--seed", "0"])
    assert code == 0
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["charts"]["cover"].startswith("learned FIF chart mixture")
    assert verdict["charts"]["verdict"] == "circle" and verdict["charts"]["stable"]
    assert "learned FIF chart mixture" in (out / "report.md").read_text()


def test_any_point_cloud_end_to_end(tmp_path):
    path = tmp_path / "sphere.npy"
    np.save(path, sample_model("sphere", 1200, seed=0)[0] * 3.0)  # radius 3: not the patch sphere
    out = tmp_path / "out"
    assert main(["topology", "--points", str(path), "--any-points", "--core", "none", "--charts", "16",
                 "--chart-dim", "2", "--landmarks", "60", "--out", str(out)]) == 0
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["verdict"] == "sphere" and verdict["charts"]["orientable"] is True


def test_images_end_to_end(tmp_path):
    from skimage import data as skdata
    from skimage.io import imsave

    folder = tmp_path / "images"
    folder.mkdir()
    imsave(folder / "camera.png", skdata.camera()[::4, ::4])
    out = tmp_path / "out"
    assert main(["topology", "--images", str(folder), "--patch-size", "4", "--core", "10,30", "--no-charts",
                 "--landmarks", "40", "--patches-per-image", "2000", "--out", str(out)]) == 0
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["n_points"] == 400 and verdict["n_core"] == 120


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--patch-size", "1"], "--patch-size must be >= 2"),
        (["--core", "600,30"], "only 600 points"),
        (["--core", "15,0"], r"\(0, 100\]"),
        (["--core", "15,150"], r"\(0, 100\]"),
        (["--patch-size", "4"], "needs 15"),
        (["--cover", "learned", "--learned-steps", "0"], "--learned-steps must be >= 1"),
        (["--cover", "learned", "--learned-width", "1"], "--learned-width must be >= 2"),
    ],
)
def test_bad_input_is_a_clear_error(circle_file, tmp_path, capsys, extra, message):
    args = ["topology", "--points", str(circle_file), "--out", str(tmp_path / "o"), "--no-charts"]
    assert main(args + extra) == 2
    import re

    assert re.search(message, capsys.readouterr().err)


def test_points_off_the_sphere_are_refused(tmp_path, capsys):
    path = tmp_path / "off.npy"
    np.save(path, 2.0 * sample_model("primary-circle", 100, seed=0)[0])
    assert main(["topology", "--points", str(path), "--core", "none", "--out", str(tmp_path / "o")]) == 2
    assert "unit sphere" in capsys.readouterr().err
