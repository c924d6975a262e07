"""`patchreg reconstruct`: argument validation (before any work), outputs, solvers, priors.

Every rejected command must exit with status 2, name the offending argument in its message and
write nothing. "Before any work" is checked by making the problem loader fail the test if called.
Models are tiny (3x3 patches) and images 16x16, so each run takes a fraction of a second.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from patchreg import io as pio
from patchreg.cli import main
from patchreg.cli import reconstruct as cli_reconstruct
from patchreg.priors import task_defaults

SIZE = 16


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import imageio.v3 as iio
    import skimage.data

    from patchreg.priors import GMM, PatchFlow

    root = tmp_path_factory.mktemp("inputs")
    crop = skimage.data.camera()[200 : 200 + SIZE, 200 : 200 + SIZE]
    paths = {
        "image": root / "clean.png",
        "gmm": root / "gmm.safetensors",
        "flow": root / "flow.safetensors",
        "charts": root / "charts.safetensors",
        "observation": root / "y.npy",
        "mask": root / "mask.npy",
        "not_checkpoint": root / "not_a_checkpoint.safetensors",
    }
    iio.imwrite(paths["image"], crop)
    GMM(2, 3).save(paths["gmm"])
    PatchFlow(patch_size=3, n_blocks=1, hidden=8).save(paths["flow"])
    pio.save_checkpoint(paths["charts"], "charts", {"a": torch.zeros(1)})  # kind only
    rng = np.random.default_rng(0)
    clean = crop / 255.0
    np.save(paths["observation"], clean + 0.05 * rng.standard_normal(clean.shape))
    np.save(paths["mask"], (rng.random(clean.shape) > 0.3).astype(np.float64))
    paths["not_checkpoint"].write_bytes(b"hello, not a checkpoint")
    paths["clean"] = clean
    return paths


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of `patchreg reconstruct ARGV --quiet`."""
    code = main(["reconstruct", *map(str, argv), "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def base(files, out, task="denoise", prior="epll", checkpoint=None):
    if checkpoint is None:
        checkpoint = files[{"epll": "gmm", "patchnr": "flow", "charts": "charts"}[prior]]
    return ["--task", task, "--prior", prior, "--checkpoint", checkpoint, "--output", out]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the command gets as far as loading the problem."""

    def forbidden(args):
        raise AssertionError("validation should have failed before loading anything")

    monkeypatch.setattr(cli_reconstruct, "_load_problem", forbidden)


def assert_rejected(capsys, argv, *fragments, folder=None):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (out, err)
    assert err.startswith("patchreg reconstruct: error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    if folder is not None:
        assert sorted(p.name for p in folder.iterdir()) == [], "a rejected command wrote files"
    return err


# ------------------------------------------------------------------------------------ outputs
def test_png_output_writes_the_png_and_a_float_npy_beside_it(files, tmp_path, capsys):
    out = tmp_path / "sub" / "x.png"
    code, stdout, err = run_cli(capsys, *base(files, out), "--image", files["image"], "--metrics", tmp_path / "m.json")
    assert code == 0, err
    assert out.is_file() and out.with_suffix(".npy").is_file()
    estimate = np.load(out.with_suffix(".npy"))
    assert estimate.shape == (SIZE, SIZE) and estimate.dtype == np.float64
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["solver"] == "hqs" and metrics["prior"] == "epll" and "psnr" in metrics
    assert "(hqs)" in stdout


def test_npy_output_writes_only_the_float_array(files, tmp_path, capsys):
    out = tmp_path / "x.npy"
    code, _, err = run_cli(capsys, *base(files, out), "--image", files["image"])
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]
    estimate = np.load(out)
    assert estimate.shape == (SIZE, SIZE) and estimate.dtype == np.float64


@pytest.mark.parametrize("solver", ["hqs", "lbfgs"])
def test_float32_default_matches_float64_precision(files, tmp_path, capsys, solver):
    estimates = {}
    for precision in ("float32", "float64"):
        out = tmp_path / f"{precision}.npy"
        argv = [*base(files, out), "--image", files["image"], "--solver", solver]
        argv += ["--steps", "20"] if solver == "lbfgs" else []
        if precision == "float64":
            argv += ["--precision", "float64"]
        code, _, err = run_cli(capsys, *argv)
        assert code == 0, err
        estimates[precision] = np.load(out)
    difference = np.abs(estimates["float32"] - estimates["float64"]).max()
    assert 0 < difference < 1e-4  # a different arithmetic, the same estimate

@pytest.mark.parametrize("output, metrics, fragment", [
    ("x.jpg", None, "--output must end in .png or .npy, got"),
    ("x", None, "--output must end in .png or .npy"),
    ("x.png", "m.txt", "--metrics must end in .json, got"),
])
def test_bad_output_names_are_rejected_before_any_work(files, tmp_path, capsys, no_work, output, metrics, fragment):
    argv = [*base(files, tmp_path / output), "--image", files["image"]]
    if metrics:
        argv += ["--metrics", tmp_path / metrics]
    assert_rejected(capsys, argv, fragment, folder=tmp_path)


def test_output_folder_must_be_creatable(files, tmp_path, capsys, no_work):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    err = assert_rejected(capsys, [*base(files, blocker / "deeper" / "x.png"), "--image", files["image"]],
                          "--output: cannot create the folder", "is not a folder")
    assert "file.txt" in err
    assert_rejected(capsys, [*base(files, tmp_path), "--image", files["image"]], "--output", "must end in")
    folder_png = tmp_path / "dir.png"
    folder_png.mkdir()
    assert_rejected(capsys, [*base(files, folder_png), "--image", files["image"]], "--output", "is a folder")


def test_output_may_not_overwrite_an_input(files, tmp_path, capsys, no_work):
    observation = tmp_path / "y.npy"
    np.save(observation, files["clean"])
    # x.png writes x.npy beside it: that would replace the observation.
    assert_rejected(capsys, [*base(files, tmp_path / "y.png"), "--observation", observation],
                    "would overwrite --observation")
    assert np.array_equal(np.load(observation), files["clean"])


# ------------------------------------------------------------------------------------ input arrays
@pytest.mark.parametrize("bad_value, count", [(np.nan, 3), (np.inf, 1), (-np.inf, 2)])
def test_non_finite_observation_is_rejected_with_its_count(files, tmp_path, capsys, bad_value, count):
    y = files["clean"].copy()
    y.flat[:count] = bad_value
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "out" / "x.png"
    assert_rejected(capsys, [*base(files, out), "--observation", tmp_path / "y.npy"],
                    "--observation", f"{count} non-finite values")
    assert not (tmp_path / "out").exists()


def test_non_finite_reference_is_rejected(files, tmp_path, capsys):
    reference = files["clean"].copy()
    reference[0, 0] = np.nan
    np.save(tmp_path / "ref.npy", reference)
    assert_rejected(capsys, [*base(files, tmp_path / "o" / "x.png"), "--observation", files["observation"],
                             "--reference", tmp_path / "ref.npy"], "--reference", "1 non-finite")


@pytest.mark.parametrize("shape", [(1, SIZE, SIZE), (1, 1, SIZE, SIZE)])
def test_observation_with_unit_leading_dimensions_is_squeezed(files, tmp_path, capsys, shape):
    np.save(tmp_path / "y.npy", np.load(files["observation"]).reshape(shape))
    code, _, err = run_cli(capsys, *base(files, tmp_path / "a.npy"), "--observation", tmp_path / "y.npy")
    assert code == 0, err
    code, _, err = run_cli(capsys, *base(files, tmp_path / "b.npy"), "--observation", files["observation"])
    assert code == 0, err
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


@pytest.mark.parametrize("shape", [(3, SIZE, SIZE), (SIZE * SIZE,), (2, 1, SIZE, SIZE), (1, 2, SIZE, SIZE),
                                   (0, SIZE)])
def test_observation_of_a_wrong_shape_is_rejected_naming_the_shape(files, tmp_path, capsys, shape):
    np.save(tmp_path / "y.npy", np.zeros(shape))
    out = tmp_path / "o" / "x.png"
    err = assert_rejected(capsys, [*base(files, out), "--observation", tmp_path / "y.npy"], "--observation")
    assert str(shape) in err
    assert "x0" not in err


def test_observation_and_image_may_be_png_or_npy(files, tmp_path, capsys):
    code, _, err = run_cli(capsys, *base(files, tmp_path / "a.npy"), "--observation", files["image"],
                           "--reference", files["image"], "--metrics", tmp_path / "m.json")
    assert code == 0, err
    assert "psnr" in json.loads((tmp_path / "m.json").read_text())
    np.save(tmp_path / "clean.npy", files["clean"])
    code, _, err = run_cli(capsys, *base(files, tmp_path / "b.npy"), "--image", tmp_path / "clean.npy")
    assert code == 0, err
    assert np.load(tmp_path / "b.npy").shape == (SIZE, SIZE)


def test_unreadable_observation_files_are_clear_errors(files, tmp_path, capsys):
    (tmp_path / "text.npy").write_text("not an array")
    assert_rejected(capsys, [*base(files, tmp_path / "o" / "x.png"), "--observation", tmp_path / "text.npy"],
                    "--observation", "is not a readable .npy array")
    np.save(tmp_path / "complex.npy", np.zeros((SIZE, SIZE), dtype=complex))
    assert_rejected(capsys, [*base(files, tmp_path / "o" / "x.png"), "--observation", tmp_path / "complex.npy"],
                    "--observation must hold real numbers")


def test_mask_is_checked_for_values_and_shape(files, tmp_path, capsys):
    argv = [*base(files, tmp_path / "o" / "x.png", task="inpaint"), "--observation", files["observation"]]
    assert_rejected(capsys, argv, "--task inpaint with --observation needs --mask")
    mask = np.ones((SIZE, SIZE))
    mask[2, 3] = np.nan
    np.save(tmp_path / "nan.npy", mask)
    assert_rejected(capsys, [*argv, "--mask", tmp_path / "nan.npy"], "--mask holds 1 non-finite")
    np.save(tmp_path / "small.npy", np.ones((SIZE - 1, SIZE)))
    assert_rejected(capsys, [*argv, "--mask", tmp_path / "small.npy"],
                    f"--mask has shape ({SIZE - 1}, {SIZE})", f"({SIZE}, {SIZE})")
    np.save(tmp_path / "zeros.npy", np.zeros((SIZE, SIZE)))
    assert_rejected(capsys, [*argv, "--mask", tmp_path / "zeros.npy"], "--mask observes no pixel")
    assert not (tmp_path / "o").exists()
    code, _, err = run_cli(capsys, *argv, "--mask", files["mask"])
    assert code == 0, err


def test_reference_must_fit_the_image(files, tmp_path, capsys):
    np.save(tmp_path / "ref.npy", np.zeros((SIZE, SIZE + 2)))
    out = tmp_path / "o" / "x.png"
    assert_rejected(capsys, [*base(files, out), "--observation", files["observation"], "--reference",
                             tmp_path / "ref.npy"], "--reference is 16x18", "16x16")
    # Super-resolution: the image is the observation times --factor.
    assert_rejected(capsys, [*base(files, out, task="sr"), "--observation", files["observation"], "--reference",
                             files["image"], "--factor", "2"], "--reference is 16x16", "32x32", "--factor 2")


def test_ct_sinogram_must_match_angles_and_detectors(files, tmp_path, capsys):
    # An 8x8 image is measured on ceil(sqrt(128)) + 1 = 13 detectors.
    out = tmp_path / "o" / "x.npy"
    argv = [*base(files, out, task="ct"), "--image-size", "8", "8", "--angles", "4"]
    np.save(tmp_path / "s.npy", np.zeros((5, 13)))
    assert_rejected(capsys, [*argv, "--observation", tmp_path / "s.npy"], "--observation", "5 angles",
                    "--angles is 4")
    np.save(tmp_path / "s.npy", np.zeros((4, 12)))
    assert_rejected(capsys, [*argv, "--observation", tmp_path / "s.npy"], "--observation", "(4, 12)",
                    "(4, 13)", "--image-size")
    assert_rejected(capsys, [*base(files, out, task="ct"), "--observation", tmp_path / "s.npy"],
                    "needs --image-size H W or --reference")
    assert not (tmp_path / "o").exists()
    np.save(tmp_path / "s.npy", np.zeros((4, 13)))
    code, _, err = run_cli(capsys, *argv, "--observation", tmp_path / "s.npy")
    assert code == 0, err
    assert np.load(out).shape == (8, 8)


def test_image_smaller_than_the_patches_is_rejected(files, tmp_path, capsys):
    np.save(tmp_path / "y.npy", np.zeros((2, 2)))
    assert_rejected(capsys, [*base(files, tmp_path / "o" / "x.png"), "--observation", tmp_path / "y.npy"],
                    "2x2", "3x3 patches")


# ------------------------------------------------------------------------------------ numeric options
BAD_OPTIONS = [
    (["--sigma", "0"], "--sigma must be > 0"),
    (["--sigma", "-0.1"], "--sigma must be > 0"),
    (["--sigma", "nan"], "--sigma must be > 0"),
    (["--sigma", "inf"], "--sigma must be > 0"),
    (["--sigma", "25"], "--sigma must be < 1"),
    (["--task", "deblur", "--kernel-std", "0"], "--kernel-std must be > 0"),
    (["--task", "sr", "--kernel-std", "-1"], "--kernel-std must be >= 0"),
    (["--angles", "0"], "--angles must be >= 1"),
    (["--angle-range", "0"], "--angle-range must be in (0, 180]"),
    (["--angle-range", "181"], "--angle-range must be in (0, 180]"),
    (["--photons", "0"], "--photons must be > 0"),
    (["--missing", "1"], "--missing must be in [0, 1)"),
    (["--missing", "-0.1"], "--missing must be in [0, 1)"),
    (["--solver", "adam", "--steps", "-1"], "--steps must be >= 0"),
    (["--solver", "adam", "--lr", "0"], "--lr must be > 0"),
    (["--prior", "patchnr", "--n-patches", "0"], "--n-patches must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--solver", "lbfgs", "--lam", "-1"], "--lam must be >= 0"),
    (["--lam", "0"], "--lam must be > 0"),  # hqs: lam is the data weight
    (["--betas", "1,a"], "--betas must be a comma-separated list of positive numbers"),
    (["--betas", "1,-2"], "--betas must be a comma-separated list of positive numbers"),
    (["--betas", ","], "--betas must be a comma-separated list of positive numbers"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--prior", "charts", "--top-charts", "0"], "--top-charts must be >= 1"),
]


@pytest.mark.parametrize("extra, fragment", BAD_OPTIONS, ids=[" ".join(e) for e, _ in BAD_OPTIONS])
def test_bad_numeric_options_are_rejected_before_any_work(files, tmp_path, capsys, no_work, extra, fragment):
    # Later options win in argparse, so extra may override --task / --prior of the base command.
    argv = [*base(files, tmp_path / "x.png"), "--image", files["image"], *extra]
    if "--prior" in extra:
        argv[argv.index("--checkpoint") + 1] = files[{"patchnr": "flow", "charts": "charts"}[extra[1]]]
    assert_rejected(capsys, argv, fragment, folder=tmp_path)


def test_bad_image_size_is_rejected(files, tmp_path, capsys, no_work):
    argv = [*base(files, tmp_path / "x.png", task="ct"), "--observation", files["observation"]]
    assert_rejected(capsys, [*argv, "--image-size", "0", "8"], "--image-size must be two ints >= 1", folder=tmp_path)


@pytest.mark.parametrize("option", ["--image", "--observation", "--reference", "--mask", "--checkpoint"])
def test_missing_files_are_reported_before_any_work_naming_the_argument(files, tmp_path, capsys, no_work, option):
    missing = tmp_path / "missing.npy"
    argv = [*base(files, tmp_path / "x.png", task="inpaint"), "--observation", files["observation"],
            "--mask", files["mask"]]
    if option == "--image":
        argv = [*base(files, tmp_path / "x.png"), "--image", tmp_path / "missing.png"]
        missing = tmp_path / "missing.png"
    elif option == "--checkpoint":
        missing = tmp_path / "missing.safetensors"
        argv[argv.index("--checkpoint") + 1] = missing
    elif option == "--observation":
        argv[argv.index("--observation") + 1] = missing
    else:
        argv = [*argv, option, missing]
    assert_rejected(capsys, argv, f"{option} '{missing}': no such file", folder=tmp_path)


# ------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("prior, given, found", [("epll", "flow", "'flow'"), ("patchnr", "gmm", "'gmm'"),
                                                  ("charts", "gmm", "'gmm'")])
def test_checkpoint_of_the_wrong_kind_names_the_kind_found(files, tmp_path, capsys, no_work, prior, given, found):
    argv = [*base(files, tmp_path / "x.png", prior=prior, checkpoint=files[given]), "--image", files["image"]]
    err = assert_rejected(capsys, argv, "--checkpoint", f"holds a {found} checkpoint", folder=tmp_path)
    assert f"--prior {prior}" in err


def test_a_file_that_is_no_checkpoint_is_a_clear_error(files, tmp_path, capsys, no_work):
    argv = [*base(files, tmp_path / "x.png", checkpoint=files["not_checkpoint"]), "--image", files["image"]]
    assert_rejected(capsys, argv, "--checkpoint", "is not a patchreg checkpoint", folder=tmp_path)


def test_pretrained_checkpoints_are_resolved_by_name(files, tmp_path, capsys, monkeypatch):
    import shutil

    import patchreg.pretrained as pretrained

    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights)
    out = tmp_path / "x.npy"
    # Not installed: the default checkpoint of --prior epll is pretrained:gmm.
    argv = ["--task", "denoise", "--prior", "epll", "--image", files["image"], "--output", out]
    assert_rejected(capsys, argv, "--checkpoint", "pretrained:gmm", "without its pretrained weights")
    assert_rejected(capsys, [*argv, "--checkpoint", "pretrained:nope"], "--checkpoint", "pretrained:charts")
    assert not out.exists()
    shutil.copy(files["gmm"], weights / "gmm_p6.safetensors")
    code, _, err = run_cli(capsys, *argv, "--checkpoint", "pretrained:gmm", "--metrics", tmp_path / "m.json")
    assert code == 0, err
    assert json.loads((tmp_path / "m.json").read_text())["checkpoint"] == str(weights / "gmm_p6.safetensors")
    code, _, err = run_cli(capsys, *argv)  # the default
    assert code == 0, err


# ------------------------------------------------------------------------------------ solvers
@pytest.mark.parametrize("solver", ["hqs", "lbfgs"])
def test_patchnr_accepts_adam_only(files, tmp_path, capsys, no_work, solver):
    argv = [*base(files, tmp_path / "x.png", prior="patchnr"), "--image", files["image"], "--solver", solver]
    assert_rejected(capsys, argv, "--prior patchnr works only with --solver adam", f"got --solver {solver}",
                    folder=tmp_path)


def test_patchnr_runs_with_adam(files, tmp_path, capsys):
    argv = [*base(files, tmp_path / "x.npy", prior="patchnr"), "--image", files["image"], "--steps", "2",
            "--n-patches", "16", "--metrics", tmp_path / "m.json"]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["solver"] == "adam" and metrics["lam"] == pytest.approx(
        task_defaults.PATCHNR_LAM_SCALE["denoise"] * (SIZE - 3 + 1) ** 2 / 9)  # 3x3 flow: n_patches / d


def test_patchnr_flow_precision_bfloat16(files, tmp_path, capsys, monkeypatch):
    from patchreg.priors import PatchNR

    made = []
    original = PatchNR.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self.precision)

    monkeypatch.setattr(PatchNR, "__init__", spy)
    argv = [*base(files, tmp_path / "x.npy", prior="patchnr"), "--image", files["image"], "--steps", "2",
            "--n-patches", "16"]
    code, _, err = run_cli(capsys, *argv)  # the default: float32
    assert code == 0, err
    code, _, err = run_cli(capsys, *argv, "--flow-precision", "bfloat16")
    assert code == 0, err
    assert made == ["float32", "bfloat16"]
    assert np.isfinite(np.load(tmp_path / "x.npy")).all()


def test_flow_precision_rejected_for_other_priors_and_bad_values(files, tmp_path, capsys, no_work):
    argv = [*base(files, tmp_path / "x.png", prior="epll"), "--image", files["image"], "--flow-precision", "bfloat16"]
    assert_rejected(capsys, argv, "--flow-precision applies only to --prior patchnr", "got --prior epll",
                    folder=tmp_path)
    with pytest.raises(SystemExit) as exc:  # argparse's choices
        run_cli(capsys, *base(files, tmp_path / "x.png", prior="patchnr"), "--image", files["image"],
                "--flow-precision", "float16")
    assert exc.value.code == 2
    assert "--flow-precision" in capsys.readouterr().err


@pytest.mark.parametrize("cli_task, extra, tuned", [("sr", ["--factor", "4"], "sr4"), ("deblur", [], "deblur"),
                                                    ("ct", [], "ct_limited"), ("inpaint", [], "inpaint")])
def test_patchnr_takes_the_papers_iterations_and_rate_and_the_tuned_weight(files, tmp_path, capsys, monkeypatch,
                                                                           cli_task, extra, tuned):
    import sys

    recon = sys.modules["patchreg.reconstruct"]  # the module (the package exports a function of that name)
    seen = {}

    def fake_reconstruct(y, physics, prior, lam, solver="adam", steps=300, lr=None, progress=True, **kwargs):
        seen.update(lam=lam, steps=steps, lr=lr)
        x = physics.initial_guess(y) if hasattr(physics, "initial_guess") else physics.A_adjoint(y)
        return x, {}

    monkeypatch.setattr(recon, "reconstruct", fake_reconstruct)
    argv = [*base(files, tmp_path / "x.npy", prior="patchnr", task=cli_task), "--image", files["image"], *extra]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    steps, lr, scale = task_defaults.patchnr_settings(tuned)
    assert (seen["steps"], seen["lr"]) == (steps, lr)
    assert seen["lam"] == pytest.approx(scale * (SIZE - 3 + 1) ** 2 / 9)
    code, _, err = run_cli(capsys, *argv, "--steps", "7", "--lr", "0.002")  # the flags win
    assert code == 0, err
    assert (seen["steps"], seen["lr"]) == (7, 0.002)


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_epll_runs_with_the_gradient_solvers(files, tmp_path, capsys, solver):
    argv = [*base(files, tmp_path / "x.npy", task="deblur"), "--image", files["image"], "--solver", solver,
            "--steps", "3", "--metrics", tmp_path / "m.json"]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["solver"] == solver
    # Default lam: EPLL's energy, n_patches / d = 14 * 14 / 9 for 16x16 images and 3x3 patches.
    assert metrics["lam"] == pytest.approx((SIZE - 2) ** 2 / 9)
    assert f"({solver})" in stdout


@pytest.mark.parametrize("extra, fragment", [
    (["--solver", "lbfgs", "--betas", "1,2"], "--betas applies only to --solver hqs"),
    (["--steps", "5"], "--steps applies only to --solver adam or lbfgs"),
    (["--lr", "0.1"], "--lr applies only to --solver adam or lbfgs"),
    (["--n-patches", "100"], "--n-patches applies only to --prior patchnr"),
    (["--top-charts", "3"], "--top-charts applies only to --prior charts"),
    (["--mask", "MASK"], "--mask applies only with --observation"),
    (["--reference", "IMAGE"], "--reference applies only with --observation"),
])
def test_options_that_do_not_apply_are_rejected(files, tmp_path, capsys, no_work, extra, fragment):
    extra = [{"MASK": files["mask"], "IMAGE": files["image"]}.get(e, e) for e in extra]
    assert_rejected(capsys, [*base(files, tmp_path / "x.png"), "--image", files["image"], *extra], fragment,
                    folder=tmp_path)


# ------------------------------------------------------------------------------------ chart prior
def _has_chart_prior() -> bool:
    import patchreg.priors as priors

    return all(hasattr(priors, name) for name in ("PatchCharts", "ChartPrior", "charts_restore"))


class _FakeCharts:
    """Stands in for the chart-prior API to check the CLI's wiring (solver dispatch and defaults)."""

    calls: list = []
    patch_size = 3
    dim = 9

    @classmethod
    def load(cls, path):
        cls.calls.append(("load", str(path)))
        return cls()


class _FakeChartPrior:
    def __init__(self, model, **kwargs):
        _FakeCharts.calls.append(("ChartPrior", kwargs))

    def nll(self, x):
        return (x**2).flatten(1).mean(1)


def _fake_charts_restore(y, physics, model, sigma, **kwargs):
    _FakeCharts.calls.append(("charts_restore", {"physics": physics, "sigma": sigma, **kwargs}))
    return y.clone()


@pytest.fixture
def fake_charts(monkeypatch):
    _FakeCharts.calls = []
    monkeypatch.setattr(cli_reconstruct, "_charts_api", lambda: (_FakeCharts, _FakeChartPrior, _fake_charts_restore))
    return _FakeCharts.calls


def test_charts_prior_defaults_to_hqs(files, tmp_path, capsys, fake_charts):
    argv = [*base(files, tmp_path / "x.npy", prior="charts"), "--image", files["image"], "--top-charts", "3",
            "--betas", "10,20"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    (_, loaded), (name, kwargs) = fake_charts
    assert loaded == str(files["charts"]) and name == "charts_restore"
    assert kwargs["physics"] is None and kwargs["top_charts"] == 3 and kwargs["betas"] == [10.0, 20.0]


@pytest.mark.parametrize("solver, n_patches", [("adam", "50"), ("lbfgs", None)])
def test_charts_prior_with_gradient_solvers(files, tmp_path, capsys, fake_charts, solver, n_patches):
    argv = [*base(files, tmp_path / "x.npy", prior="charts"), "--image", files["image"], "--solver", solver,
            "--steps", "2", "--metrics", tmp_path / "m.json"]
    if n_patches:
        argv += ["--n-patches", n_patches]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    (name, kwargs) = fake_charts[1]
    assert name == "ChartPrior"
    assert kwargs["n_patches"] == (None if n_patches is None else int(n_patches))
    assert kwargs["top_charts"] == cli_reconstruct.DEFAULT_TOP_CHARTS[solver] and kwargs["stride"] == 1
    lam = json.loads((tmp_path / "m.json").read_text())["lam"]
    assert lam == pytest.approx(cli_reconstruct.DEFAULT_CHARTS_LAM_SCALE["denoise"] * (SIZE - 2) ** 2 / 9)


def test_charts_with_lbfgs_rejects_random_patches(files, tmp_path, capsys, no_work):
    argv = [*base(files, tmp_path / "x.png", prior="charts"), "--image", files["image"], "--solver", "lbfgs",
            "--n-patches", "100"]
    assert_rejected(capsys, argv, "--n-patches", "L-BFGS", folder=tmp_path)


def test_charts_prior_without_the_api_is_a_clear_error(files, tmp_path, capsys):
    if _has_chart_prior():
        pytest.skip("patchreg.priors has the chart prior")
    argv = [*base(files, tmp_path / "x.png", prior="charts"), "--image", files["image"]]
    assert_rejected(capsys, argv, "--prior charts needs patchreg.priors.PatchCharts")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("solver", ["hqs", "lbfgs"])
def test_charts_prior_end_to_end(tmp_path, capsys, files, solver):
    if not _has_chart_prior():
        pytest.skip("patchreg.priors has no ChartPrior yet")
    from patchreg.charts.mixture import build_mixture
    from patchreg.priors import PatchCharts
    from patchreg.priors.patch_charts import mean_free_basis

    torch.manual_seed(0)
    mixture = build_mixture("fif", 2, 8, 2, "mlp", 8, 1, 0.1, sigma_per_chart=True).float()
    model = PatchCharts(mixture, 3)
    model.fit_selector(torch.randn(500, 9) @ mean_free_basis(9).float())
    model.save(tmp_path / "charts.safetensors")
    argv = [*base(files, tmp_path / "x.npy", prior="charts", checkpoint=tmp_path / "charts.safetensors"),
            "--image", files["image"], "--solver", solver]
    if solver != "hqs":
        argv += ["--steps", "2"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert np.load(tmp_path / "x.npy").shape == (SIZE, SIZE)


# ------------------------------------------------------------------------------------ --device
@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without a GPU")
def test_device_cuda_without_a_gpu_is_rejected_before_any_work(files, tmp_path, capsys, no_work):
    assert_rejected(capsys, [*base(files, tmp_path / "x.npy"), "--image", files["image"], "--device", "cuda"],
                    "--device cuda: no CUDA device is available", folder=tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("task, prior, extra", [("denoise", "epll", []), ("deblur", "epll", []),
                                                ("inpaint", "epll", []), ("ct", "epll", ["--photons", "4096"]),
                                                ("denoise", "patchnr", ["--steps", "5", "--n-patches", "64"])])
def test_cuda_solve_matches_the_cpu_solve(files, tmp_path, capsys, task, prior, extra):
    estimates = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.npy"
        argv = [*base(files, out, task=task, prior=prior), "--image", files["image"], "--device", device,
                "--precision", "float64", *extra]
        code, _, err = run_cli(capsys, *argv)
        assert code == 0, err
        estimates[device] = np.load(out)
    np.testing.assert_allclose(estimates["cuda"], estimates["cpu"], rtol=1e-5, atol=1e-6)


def test_chart_precision_reaches_the_chart_prior(files, tmp_path, capsys, fake_charts):
    from patchreg.ops.charts import charts_bf16_supported

    if not charts_bf16_supported():
        pytest.skip("no AMX-BF16 chart loops on this CPU or build")
    argv = [*base(files, tmp_path / "x.npy", prior="charts"), "--image", files["image"], "--solver", "lbfgs",
            "--steps", "2", "--chart-precision", "bfloat16"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    (name, kwargs) = fake_charts[1]
    assert name == "ChartPrior" and kwargs["precision"] == "bfloat16"


@pytest.mark.parametrize("extra, message", [(["--prior", "epll"], "got --prior epll"),
                                            (["--prior", "charts", "--solver", "hqs"], "--solver hqs"),
                                            (["--prior", "charts", "--solver", "lbfgs", "--precision", "float64"],
                                             "--precision float32")])
def test_chart_precision_rejected_before_work(files, tmp_path, capsys, no_work, extra, message):
    prior = extra[1]
    argv = [*base(files, tmp_path / "x.png", prior=prior), "--image", files["image"], *extra[2:],
            "--chart-precision", "bfloat16"]
    assert_rejected(capsys, argv, "--chart-precision", message, folder=tmp_path)
