"""`patchreg reconstruct --images DIR --output-dir OUT`: folder mode, resume, summary, sharding over 2 gloo ranks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from patchreg.cli import main

from .distributed_harness import run_world

NAMES = ("a.png", "b.png", "c.npy")


@pytest.fixture()
def folder(tmp_path):
    import imageio.v3 as iio
    import skimage.data

    from patchreg.priors import GMM

    images = tmp_path / "images"
    images.mkdir()
    camera = skimage.data.camera()
    for k, name in enumerate(NAMES):
        crop = camera[100 + 40 * k : 116 + 40 * k, 200:216]
        if name.endswith(".npy"):
            np.save(images / name, crop / 255.0)
        else:
            iio.imwrite(images / name, crop)
    (images / "notes.txt").write_text("not an image")
    GMM(2, 3).save(tmp_path / "gmm.safetensors")
    return tmp_path


def _argv(root, *extra):
    return ["reconstruct", "--task", "denoise", "--prior", "epll", "--checkpoint", str(root / "gmm.safetensors"),
            "--images", str(root / "images"), "--output-dir", str(root / "out"), "--quiet", *map(str, extra)]


def test_folder_is_reconstructed_with_a_summary_and_resumed(folder, capsys):
    assert main(_argv(folder)) == 0
    out = folder / "out"
    for name in NAMES:
        stem = name.split(".")[0]
        assert (out / f"{stem}.png").is_file() and (out / f"{stem}.npy").is_file()
        assert json.loads((out / f"{stem}.json").read_text())["psnr"] > 15  # an untrained 2-component GMM: about the noisy PSNR
    summary = json.loads((out / "summary.json").read_text())
    assert [r["image"] for r in summary["rows"]] == list(NAMES) and summary["mean_psnr"] > 15
    assert "| a.png |" in (out / "summary.md").read_text()
    seeds = [json.loads((out / f"{n.split('.')[0]}.json").read_text())["seed"] for n in NAMES]
    assert seeds == [0, 1, 2]
    # a rerun skips the done images: their files stay untouched, a deleted one is redone
    stamp = (out / "a.json").stat().st_mtime_ns
    (out / "b.json").unlink()
    capsys.readouterr()
    assert main(_argv(folder)) == 0
    assert (out / "a.json").stat().st_mtime_ns == stamp and (out / "b.json").is_file()


@pytest.mark.parametrize("extra, message", [
    (("--output", "x.png"), "--output does not apply with --images"),
    (("--metrics", "m.json"), "--metrics does not apply with --images"),
])
def test_folder_mode_rejects_single_image_options(folder, capsys, extra, message):
    assert main(_argv(folder, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (folder / "out").exists()


def test_folder_mode_errors_name_the_option(folder, capsys):
    argv = _argv(folder)
    assert main(argv[: argv.index("--output-dir")] + ["--quiet"]) == 2
    assert "--images needs --output-dir" in capsys.readouterr().err
    assert main(_argv(folder)[:-3] + ["--output-dir", str(folder / "images"), "--quiet"]) == 2
    assert "--output-dir must differ from --images" in capsys.readouterr().err
    assert main(["reconstruct", "--task", "denoise", "--prior", "epll", "--image", "x.png", "--quiet"]) == 2
    assert "--output is required" in capsys.readouterr().err


def test_a_failing_image_is_recorded_and_the_others_done(folder, capsys):
    np.save(folder / "images" / "d.npy", np.zeros((2, 2)))  # smaller than the 3x3 patches
    assert main(_argv(folder)) == 1
    summary = json.loads((folder / "out" / "summary.json").read_text())
    status = {r["image"]: r["status"] for r in summary["rows"]}
    assert status == {"a.png": "done", "b.png": "done", "c.npy": "done", "d.npy": "failed"}
    assert "smaller than" in (folder / "out" / "d.failed.txt").read_text()


def _run_cli(argv):
    from pathlib import Path

    from patchreg.cli import reconstruct

    seen, load = [], reconstruct._load_problem

    def spy(args):  # (a forked rank: patching its module does not reach the test process)
        seen.append(Path(args.image).name)
        return load(args)

    reconstruct._load_problem = spy
    return {"code": main(argv), "seen": seen}


def test_two_ranks_shard_the_folder(folder, tmp_path):
    single = folder / "single"
    assert main(_argv(folder)[:-3] + ["--output-dir", str(single), "--quiet"]) == 0
    results = run_world(_run_cli, 2, tmp_path, _argv(folder))
    assert [r["code"] for r in results] == [0, 0]
    assert [r["seen"] for r in results] == [["a.png", "c.npy"], ["b.png"]]
    summary = json.loads((folder / "out" / "summary.json").read_text())
    assert summary["world_size"] == 2 and [r["status"] for r in summary["rows"]] == ["done"] * 3
    for name in NAMES:  # the same seeds whatever the number of processes: the same estimates
        stem = name.split(".")[0]
        np.testing.assert_allclose(np.load(folder / "out" / f"{stem}.npy"), np.load(single / f"{stem}.npy"),
                                   rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------------ batches
def _estimates(out):
    return {name: np.load(out / f"{name.split('.')[0]}.npy") for name in NAMES}


@pytest.mark.parametrize("task, solver", [("denoise", "hqs"), ("inpaint", "hqs"), ("deblur", "adam")])
def test_batches_give_the_estimates_of_single_images(folder, task, solver):
    def argv(out, batch):
        base = _argv(folder)[:-3]
        base[base.index("denoise")] = task
        extra = ["--steps", "5"] if solver == "adam" else []
        return base + ["--solver", solver, *extra, "--output-dir", str(folder / out), "--batch-size", str(batch),
                       "--quiet"]

    assert main(argv("one", 1)) == 0
    assert main(argv("two", 2)) == 0
    one, two = _estimates(folder / "one"), _estimates(folder / "two")
    for name in NAMES:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6)
    sizes = [json.loads((folder / "two" / f"{n.split('.')[0]}.json").read_text())["batch_size"] for n in NAMES]
    assert sizes == [2, 2, 1]  # a, b together; c alone
    assert json.loads((folder / "two" / "summary.json").read_text())["batch_size"] == 2


def test_batching_rejects_lbfgs_and_single_image_mode(folder, capsys):
    assert main(_argv(folder, "--solver", "lbfgs", "--batch-size", "2")) == 2
    assert "--batch-size 2 with --solver lbfgs" in capsys.readouterr().err
    assert main(_argv(folder, "--batch-size", "0")) == 2
    assert "--batch-size must be an int >= 1" in capsys.readouterr().err
    assert main(["reconstruct", "--task", "denoise", "--prior", "epll", "--image", "x.png", "--output", "o.png",
                 "--batch-size", "2"]) == 2
    assert "--batch-size applies only with --images DIR or --observations DIR" in capsys.readouterr().err
    assert not (folder / "out").exists()


# ------------------------------------------------------------------------------------ observations
@pytest.fixture()
def observed(folder):
    """observations/ (noisy a, b, c, as .npy), references/ (the clean images) and masks/ for inpainting."""
    import shutil

    rng = np.random.default_rng(0)
    obs, masks = folder / "observations", folder / "masks"
    obs.mkdir()
    masks.mkdir()
    shutil.copytree(folder / "images", folder / "references")
    (folder / "references" / "notes.txt").unlink()
    for name in NAMES:
        stem = name.split(".")[0]
        path = folder / "images" / name
        clean = np.load(path) if name.endswith(".npy") else __import__("imageio.v3").v3.imread(path) / 255.0
        mask = rng.random(clean.shape) > 0.3
        np.save(obs / f"{stem}.npy", clean + rng.normal(0, 25 / 255, clean.shape))
        np.save(obs / f"{stem}_inpaint.npy", np.where(mask, clean, 0.0))
        np.save(masks / f"{stem}_inpaint.npy", mask)
    return folder


def _obs_argv(root, *extra, task="denoise"):
    return ["reconstruct", "--task", task, "--prior", "epll", "--checkpoint", str(root / "gmm.safetensors"),
            "--output-dir", str(root / "out"), "--quiet", *map(str, extra)]


def test_observation_folder_with_references(observed):
    (observed / "observations" / "a_inpaint.npy").rename(observed / "a_inpaint.keep")
    for stem in ("b", "c"):
        (observed / "observations" / f"{stem}_inpaint.npy").unlink()
    argv = _obs_argv(observed, "--observations", observed / "observations", "--references", observed / "references",
                     "--batch-size", "2")
    assert main(argv) == 0
    summary = json.loads((observed / "out" / "summary.json").read_text())
    assert [r["image"] for r in summary["rows"]] == ["a.npy", "b.npy", "c.npy"]
    assert all(r["status"] == "done" and r["psnr"] > 15 for r in summary["rows"])
    # the same estimate as the single-image command on the same observation
    single = observed / "single.npy"
    assert main(["reconstruct", "--task", "denoise", "--prior", "epll", "--checkpoint",
                 str(observed / "gmm.safetensors"), "--observation", str(observed / "observations" / "b.npy"),
                 "--output", str(single), "--quiet"]) == 0
    np.testing.assert_allclose(np.load(observed / "out" / "b.npy"), np.load(single), rtol=1e-5, atol=1e-6)


def test_observation_folder_inpainting_with_masks_and_no_references(observed):
    for stem in ("a", "b", "c"):
        (observed / "observations" / f"{stem}.npy").unlink()
    argv = _obs_argv(observed, "--observations", observed / "observations", "--masks", observed / "masks",
                     "--batch-size", "3", task="inpaint")
    assert main(argv) == 0
    summary = json.loads((observed / "out" / "summary.json").read_text())
    assert [r["status"] for r in summary["rows"]] == ["done"] * 3 and summary["mean_psnr"] is None
    assert "no --references" in (observed / "out" / "summary.md").read_text()
    for stem in ("a", "b", "c"):  # observed pixels stay close to the data, whatever the batch's other masks
        mask = np.load(observed / "masks" / f"{stem}_inpaint.npy")
        y = np.load(observed / "observations" / f"{stem}_inpaint.npy")
        x = np.load(observed / "out" / f"{stem}_inpaint.npy")
        assert np.abs(x - y)[mask].mean() < 0.05 and np.abs(x - y)[~mask].mean() > 0.05


@pytest.mark.parametrize("extra, task, message", [
    (("--references", "REFS_MISSING"), "denoise", "--references"),
    ((), "inpaint", "--task inpaint with --observations needs --masks DIR"),
    (("--masks", "MASKS"), "denoise", "--masks applies only to --task inpaint"),
    ((), "ct", "--task ct with --observations needs --image-size H W or --references DIR"),
    (("--reference", "x.npy"), "denoise", "--reference is for one image; with a folder give --references DIR"),
])
def test_observation_folder_errors_before_any_work(observed, capsys, extra, task, message):
    (observed / "references" / "b.png").unlink()
    extra = [str(observed / "references") if e == "REFS_MISSING" else str(observed / "masks") if e == "MASKS" else e
             for e in extra]
    assert main(_obs_argv(observed, "--observations", observed / "observations", *extra, task=task)) == 2
    err = capsys.readouterr().err
    assert message in err
    if task == "denoise" and "--references" in extra:
        assert "b.npy" in err and "b_inpaint.npy" in err  # names the observations without a reference
    assert not (observed / "out").exists()


def test_images_mode_rejects_observation_folder_options(folder, capsys):
    assert main(_argv(folder, "--masks", folder / "images")) == 2
    assert "--masks applies only with --observations" in capsys.readouterr().err
