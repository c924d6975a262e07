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

    seen, solve = [], reconstruct._solve_and_write

    def spy(args, *rest):  # (a forked rank: patching its module does not reach the test process)
        seen.append(Path(args.image).name)
        return solve(args, *rest)

    reconstruct._solve_and_write = spy
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
