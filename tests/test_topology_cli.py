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
    assert verdict["charts"]["sample"] == "maxmin" and verdict["charts"]["n_points_used"] == 600  # all: fewer than 3000
    persistence = verdict["charts"]["persistence"]  # the same cover's nerve filtration, read by the long-bar rule
    assert persistence["verdict"] == "circle" and persistence["betti"]["Z2"] == [1, 1, 0]
    assert "the nerve filtration over tau" in (out / "report.md").read_text()
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


def _noise_images(tmp_path, seed):
    """A folder of two 30 x 30 noise images (28 x 28 = 784 3x3 patches each)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def test_images_at_scale_resumes_from_caches_and_names_a_model(tmp_path):
    # --images DIR with every patch (the default): patch set and kNN cached; a second run reuses both
    folder = _noise_images(tmp_path, 0)
    args = ["topology", "--images", str(folder), "--patch-size", "3", "--no-charts", "--core-ks", "10,30",
            "--core-qs", "30", "--denoise", "0", "--landmarks", "40", "--cache", str(tmp_path / "cache")]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a" / "verdict.json").read_text())
    assert first["n_points"] == first["patch_set"]["n_points"] == round(0.2 * 2 * 28 * 28)
    assert first["density"]["cached"] is False and first["core"][1] == 30.0
    assert set(first["model_fit"]["distances"]) == {"klein", "three-circle"} and "which_model_fits" in first["model_fit"]
    assert isinstance(first["persistence_fragility"]["fragile"], bool)
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    second = json.loads((tmp_path / "b" / "verdict.json").read_text())
    assert second["density"]["cached"] is True and second["n_core"] == first["n_core"]


def test_images_with_rotations_read_the_rotated_patch_set(tmp_path):
    folder = _noise_images(tmp_path, 1)
    out = tmp_path / "rot"
    assert main(["topology", "--images", str(folder), "--patch-size", "3", "--no-charts", "--core", "10,30", "--denoise",
                 "0", "--landmarks", "30", "--rotations", "3", "--out", str(out)]) == 0
    patch_set = json.loads((out / "verdict.json").read_text())["patch_set"]
    assert patch_set["rotations"] == 3 and patch_set["angles"] == [0.0, 30.0, 60.0]
    assert patch_set["n_points_per_angle"]["0"] == round(0.2 * 2 * 28 * 28)  # the level view as without --rotations
    assert patch_set["n_points"] == sum(patch_set["n_points_per_angle"].values())


def test_any_points_default_core_is_none_and_patch_default_is_auto(tmp_path):
    # a uniform sample of a closed surface must not be punctured by a patch-style density core
    path = tmp_path / "torus.npy"
    np.save(path, sample_model("torus", 1000, seed=0)[0])
    out = tmp_path / "out"
    assert main(["topology", "--points", str(path), "--any-points", "--no-charts", "--out", str(out)]) == 0
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["core"] is None and verdict["n_core"] == 1000 and verdict["landmarks_used"] == 150
    assert verdict["persistence"]["verdict"] == "torus" and verdict["persistence"]["z2_excess"] == [0, 0, 0]
    assert "Vietoris-Rips" in (out / "report.md").read_text()


def test_witness_complex_names_the_klein_bottle(tmp_path):
    # the Klein-bottle model through Carlsson et al.'s complex (lazy witness, every point a witness)
    path = tmp_path / "klein.npy"
    np.save(path, sample_model("klein", 4000, seed=0, patch_size=3)[0])
    out = tmp_path / "out"
    assert main(["topology", "--points", str(path), "--core", "none", "--complex", "witness", "--no-charts",
                 "--landmarks", "50", "--out", str(out)]) == 0
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["persistence"]["verdict"] == "Klein bottle" and verdict["complex"] == "witness"
    assert verdict["persistence"]["complex"] == "witness" and verdict["persistence"]["z2_excess"] == [0, 1, 1]
    report = (out / "report.md").read_text()
    assert "persistent homology complex: witness" in report and "lazy witness complex" in report
    assert "signature of a non-orientable surface" in report


def test_orientation_bins_take_the_core_per_orientation(circle_file, tmp_path):
    out = tmp_path / "out"
    assert main(["topology", "--points", str(circle_file), "--core", "10,50", "--orientation-bins", "8", "--denoise", "0",
                 "--no-charts", "--landmarks", "40", "--out", str(out)]) == 0
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["density"]["orientation_bins"] == 8 and abs(verdict["n_core"] - 300) <= 8  # 50% of each bin
    assert verdict["persistence"]["verdict"] == "circle"
    assert "cores per orientation (8 bins)" in (out / "report.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--orientation-bins", "-1"], "--orientation-bins must be >= 0"),
    (["--orientation-bins", "4", "--any-points"], "--orientation-bins needs patch data"),
    (["--rotations", "0"], "--rotations must be >= 1"),
    (["--rotations", "4"], "--rotations needs --images DIR"),
    (["--max-chart-points", "0"], "--max-chart-points must be >= 1"),
])
def test_bad_persistence_options_are_clear_errors(circle_file, tmp_path, capsys, extra, message):
    assert main(["topology", "--points", str(circle_file), "--out", str(tmp_path / "o"), "--no-charts"] + extra) == 2
    assert message in capsys.readouterr().err


def _result(ph_name, scan_name, filtration_name):
    """A minimal analyse_points result: persistent homology, the chart scan and the nerve filtration."""
    klein = {"Z2": (1, 2, 1), "Z3": (1, 1, 0)}
    ph = {"name": ph_name, "betti": klein, "threshold": 0.2, "longest_bar": 0.4, "gap": 2.0, "reliable": True,
          "rule": {}, "n_landmarks": 150, "covering_radius": 0.1, "top_bars": {}}
    filtration = {"name": filtration_name, "betti": klein, "gap": 2.0, "reliable": True, "orientable": False,
                  "tau_star": 0.4, "top_bars": {}}
    charts = {"name": scan_name, "stable": True, "run_length": 4, "tau": 0.1, "betti": klein, "euler_characteristic": 0,
              "orientable": False, "dim": 2, "n_charts": 48, "n_points_used": 3000, "k_selection": "given", "scan": [],
              "persistence": filtration}
    return {"n_points": 10, "core": None, "n_core": 10, "persistence": ph, "charts": charts}


def test_the_nerve_reading_in_the_verdict_is_the_one_asked_for():
    from patchreg.topology.report import verdict_json

    result = _result("Klein bottle", "other (Betti Z/2 (48, 0, 0), Z/3 (48, 0, 0))", "Klein bottle")
    scan = verdict_json(result, {})
    assert scan["verdict"].startswith("disagreement: Klein bottle / other") and scan["charts"]["reading_in_verdict"] == "scan"
    filtration = verdict_json(result, {"nerve_reading": "filtration"})
    assert filtration["verdict"] == "Klein bottle" and filtration["charts"]["reading_in_verdict"] == "filtration"
    assert verdict_json(_result("Klein bottle", "Klein bottle", "torus"), {"nerve_reading": "filtration"})["verdict"] == \
        "disagreement: Klein bottle / torus"
    with pytest.raises(ValueError, match="nerve_reading must be one of"):
        verdict_json(result, {"nerve_reading": "both"})


def test_the_nerve_cut_is_checked_first_and_reported():
    from patchreg.topology.models import sample_model
    from patchreg.topology.pipeline import analyse_points
    from patchreg.topology.report import verdict_json

    points, _ = sample_model("torus", 1500, seed=0)
    with pytest.raises(ValueError, match="nerve_cut must be one of"):
        analyse_points(points, nerve_cut="last")
    result = analyse_points(points, n_landmarks=60, n_charts=16, dim=2, nerve_cut="first-loop-death")
    reading = verdict_json(result, {})["charts"]["persistence"]
    assert reading["cut"] == "first-loop-death"
    assert reading["cut_at"] is None or reading["cut_at"] > reading["tau_star"]  # every long class is born before the cut
