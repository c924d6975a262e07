"""Tests for patchreg.data: bundled split, image files, streaming patch sampler."""

from __future__ import annotations

import itertools
import os
import socket

import numpy as np
import pytest
import torch
from skimage import io as skio

import patchreg
from patchreg.data import (
    BUNDLED_SPLITS,
    VALIDATION_CROP,
    PatchSampler,
    bundled_image,
    load_bundled,
    load_folder,
    load_image,
    to_tensor,
    validation_box,
)
from patchreg.data import images as images_module

TRAIN = [
    "astronaut", "chelsea", "coffee", "rocket", "motorcycle_left",
    "hubble_deep_field", "immunohistochemistry", "brick", "grass", "gravel",
]  # fmt: skip
TEST = ["camera", "coins", "moon"]


# --- bundled split -------------------------------------------------------------------------


def test_split_names_are_the_documented_ones():
    assert list(BUNDLED_SPLITS["train"]) == TRAIN
    assert list(BUNDLED_SPLITS["validation"]) == TRAIN
    assert list(BUNDLED_SPLITS["test"]) == TEST
    _, train_names = load_bundled("train", with_names=True)
    assert train_names == [f"{n}:{part}" for n in TRAIN for part in ("top", "left")]
    assert load_bundled("validation", with_names=True)[1] == TRAIN
    assert load_bundled("test", with_names=True)[1] == TEST


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_bundled_images_are_gray_float64_in_unit_range(split):
    for image in load_bundled(split):
        assert isinstance(image, np.ndarray) and image.dtype == np.float64 and image.ndim == 2
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert image.std() > 0.01  # a real photo, not a blank


def test_bundled_photos_load_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("bundled images must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    images_module._cached_bundled.cache_clear()
    for name in TRAIN + TEST:
        assert bundled_image(name).ndim == 2


def test_colour_photo_is_converted_with_luminance_weights():
    from skimage import data

    rgb = data.astronaut().astype(np.float64) / 255.0
    expected = rgb @ np.array([0.2125, 0.7154, 0.0721])
    np.testing.assert_allclose(bundled_image("astronaut"), expected, atol=1e-12)
    np.testing.assert_array_equal(bundled_image("camera"), data.camera() / 255.0)


def test_validation_crop_is_the_bottom_right_block():
    for name, crop in zip(TRAIN, load_bundled("validation")):
        photo = bundled_image(name)
        H, W = photo.shape
        assert validation_box(H, W) == (H - VALIDATION_CROP, W - VALIDATION_CROP, H, W)
        assert crop.shape == (VALIDATION_CROP, VALIDATION_CROP)
        np.testing.assert_array_equal(crop, photo[-VALIDATION_CROP:, -VALIDATION_CROP:])


def test_train_pieces_cover_each_photo_except_its_validation_block_exactly_once():
    train = load_bundled("train")
    for k, name in enumerate(TRAIN):
        photo = bundled_image(name)
        top, left, bottom, right = validation_box(*photo.shape)
        coverage = np.zeros(photo.shape, dtype=int)
        coverage[top:bottom, left:right] += 1  # validation
        upper, lower_left = train[2 * k], train[2 * k + 1]
        np.testing.assert_array_equal(upper, photo[:top])
        np.testing.assert_array_equal(lower_left, photo[top:, :left])
        coverage[:top] += 1
        coverage[top:, :left] += 1
        assert (coverage == 1).all(), name


def test_bundled_images_are_fresh_copies():
    first = load_bundled("test")[0]
    first[:] = 0.5
    assert load_bundled("test")[0].std() > 0.01
    assert bundled_image("camera").flags.writeable


def test_bundled_bad_names_raise():
    with pytest.raises(ValueError, match="split"):
        load_bundled("training")
    with pytest.raises(ValueError, match="name"):
        bundled_image("lena")
    with pytest.raises(ValueError, match="VALIDATION_CROP"):
        validation_box(100, 300)


# --- image files -----------------------------------------------------------------------------


def _gradient(shape, dtype, top):
    rng = np.random.default_rng(0)
    return rng.integers(0, top + 1, size=shape).astype(dtype)


def test_load_image_png_8bit_gray(tmp_path):
    gray = _gradient((20, 30), np.uint8, 255)
    skio.imsave(tmp_path / "g.png", gray, check_contrast=False)
    image = load_image(tmp_path / "g.png")
    assert image.dtype == np.float64 and image.shape == (20, 30)
    np.testing.assert_array_equal(image, gray / 255.0)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_load_image_16bit_is_scaled_by_65535(tmp_path, suffix):
    gray = _gradient((17, 23), np.uint16, 65535)
    gray[0, 0], gray[0, 1] = 0, 65535
    skio.imsave(tmp_path / f"g{suffix}", gray, check_contrast=False)
    np.testing.assert_array_equal(load_image(tmp_path / f"g{suffix}"), gray / 65535.0)


def test_load_image_float_tif_kept_as_is(tmp_path):
    values = np.random.default_rng(1).random((9, 11)).astype(np.float32)
    skio.imsave(tmp_path / "f.tif", values, check_contrast=False)
    np.testing.assert_array_equal(load_image(tmp_path / "f.tif"), values.astype(np.float64))


def test_load_image_colour_and_alpha(tmp_path):
    rgba = _gradient((12, 14, 4), np.uint8, 255)
    skio.imsave(tmp_path / "c.png", rgba, check_contrast=False)
    expected = (rgba[..., :3] / 255.0) @ np.array([0.2125, 0.7154, 0.0721])
    np.testing.assert_allclose(load_image(tmp_path / "c.png"), expected, atol=1e-12)
    skio.imsave(tmp_path / "c.jpg", rgba[..., :3], check_contrast=False)
    jpg = load_image(tmp_path / "c.jpg")  # lossy: only shape and range are exact
    assert jpg.shape == (12, 14) and 0.0 <= jpg.min() and jpg.max() <= 1.0


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="must end in one of"):
        load_image(tmp_path / "notes.txt")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_image(tmp_path / "broken.png")
    skio.imsave(tmp_path / "hot.tif", np.full((5, 6), 2.0, dtype=np.float32), check_contrast=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image(tmp_path / "hot.tif")


def test_load_folder_sorted_image_files_only(tmp_path):
    skio.imsave(tmp_path / "b.tif", np.full((5, 6), 1000, dtype=np.uint16), check_contrast=False)
    skio.imsave(tmp_path / "a.png", np.full((7, 8), 51, dtype=np.uint8), check_contrast=False)
    skio.imsave(tmp_path / "c.PNG", np.full((3, 4), 255, dtype=np.uint8), check_contrast=False)
    (tmp_path / "readme.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    skio.imsave(tmp_path / "sub" / "d.png", np.zeros((3, 3), dtype=np.uint8), check_contrast=False)
    images, names = load_folder(tmp_path, with_names=True)
    assert names == ["a.png", "b.tif", "c.PNG"]
    assert [im.shape for im in images] == [(7, 8), (5, 6), (3, 4)]
    np.testing.assert_array_equal(images[0], 0.2)
    np.testing.assert_array_equal(images[1], 1000 / 65535)
    assert len(load_folder(str(tmp_path))) == 3


def test_load_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an existing directory"):
        load_folder(tmp_path / "nowhere")
    (tmp_path / "readme.txt").write_text("not an image")
    with pytest.raises(ValueError, match="no image files"):
        load_folder(tmp_path)


def test_to_tensor():
    image = np.arange(12, dtype=np.float64).reshape(3, 4) / 12
    t = to_tensor(image)
    assert t.shape == (1, 1, 3, 4) and t.dtype == torch.float64
    np.testing.assert_array_equal(t[0, 0].numpy(), image)
    assert to_tensor(image, dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="2-D"):
        to_tensor(np.zeros((2, 3, 4)))
    with pytest.raises(TypeError, match="image"):
        to_tensor([[0.0]])


# --- patch sampler -----------------------------------------------------------------------------


def _random_images(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((20, 31)), rng.random((16, 16)), rng.random((25, 12))]


def test_sampler_batches_shape_dtype_and_count():
    sampler = PatchSampler(_random_images(), 5, 32, seed=0, num_batches=4)
    batches = list(sampler)
    assert len(sampler) == 4 and len(batches) == 4
    assert all(b.shape == (32, 25) and b.dtype == torch.float32 for b in batches)
    assert sampler.sample(7).shape == (7, 25)
    infinite = PatchSampler(_random_images(), 5, 8, seed=0, dtype=torch.float64)
    assert [b.dtype for b in itertools.islice(infinite, 3)] == [torch.float64] * 3
    with pytest.raises(TypeError, match="infinite"):
        len(infinite)


def test_sampler_patches_are_the_image_regions_at_the_drawn_positions():
    images = _random_images()
    sampler = PatchSampler(images, 4, 16, seed=3, dtype=torch.float64)
    index, positions = sampler.draw_positions(200)
    sampler.reset()
    patches = sampler.sample(200)
    for k in range(200):
        r, c = positions[k].tolist()
        expected = images[int(index[k])][r : r + 4, c : c + 4].reshape(-1)
        np.testing.assert_array_equal(patches[k].numpy(), expected)


def test_sampler_same_seed_same_stream_and_reset_replays():
    a = PatchSampler(_random_images(), 5, 64, seed=11, num_batches=3)
    b = PatchSampler(_random_images(), 5, 64, seed=11, num_batches=3)
    first = list(a)
    assert all(torch.equal(x, y) for x, y in zip(first, b))
    second = list(a)  # the stream continues...
    assert not torch.equal(first[0], second[0])
    a.reset()  # ...until rewound
    assert torch.equal(next(iter(a)), first[0])


def test_sampler_different_seeds_differ():
    a = PatchSampler(_random_images(), 5, 64, seed=1).sample(64)
    b = PatchSampler(_random_images(), 5, 64, seed=2).sample(64)
    assert not torch.equal(a, b)


def test_sampler_remove_mean():
    sampler = PatchSampler(_random_images(), 6, 50, seed=0, remove_mean=True, dtype=torch.float64)
    raw = PatchSampler(_random_images(), 6, 50, seed=0, dtype=torch.float64)
    centred, patches = sampler.sample(50), raw.sample(50)
    assert centred.mean(dim=1).abs().max() < 1e-15
    assert (centred - (patches - patches.mean(dim=1, keepdim=True))).abs().max() < 1e-15


def test_sampler_never_draws_patches_overlapping_an_excluded_region():
    # The image is 1 inside the excluded rectangle and 0 elsewhere: any overlapping patch shows it.
    image = np.zeros((40, 50))
    box = (10, 20, 25, 32)
    image[box[0] : box[2], box[1] : box[3]] = 1.0
    sampler = PatchSampler([image], 6, 256, seed=0, exclude=[[box]], dtype=torch.float64)
    patches = sampler.sample(20000)
    assert patches.abs().max() == 0.0


def test_sampler_draws_exactly_the_valid_positions():
    H, W, p = 12, 14, 3
    boxes = [(0, 0, 2, 2), (6, 7, 8, 9)]
    sampler = PatchSampler([np.zeros((H, W))], p, 8, seed=5, exclude=[boxes])
    _, positions = sampler.draw_positions(30000)
    drawn = {tuple(rc) for rc in positions.tolist()}

    def overlaps(r, c, box):
        top, left, bottom, right = box
        return r < bottom and r + p > top and c < right and c + p > left

    valid = {
        (r, c)
        for r in range(H - p + 1)
        for c in range(W - p + 1)
        if not any(overlaps(r, c, b) for b in boxes)
    }
    assert drawn == valid
    assert sampler.num_positions == len(valid)


def test_sampler_positions_are_uniform_across_images():
    # Chi-square over every (image, position) cell, with one image partly excluded.
    images = [np.zeros((10, 12)), np.zeros((7, 7)), np.zeros((15, 6))]
    p = 3
    sampler = PatchSampler(images, p, 8, seed=2024, exclude=[None, [(2, 2, 4, 4)], None])
    n = 200_000
    index, positions = sampler.draw_positions(n)
    grid_w = max(im.shape[1] for im in images)
    cells = (index * 10_000 + positions[:, 0] * grid_w + positions[:, 1]).numpy()
    _, counts = np.unique(cells, return_counts=True)
    cells_total = sampler.num_positions
    assert len(counts) == cells_total
    expected = n / cells_total
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = cells_total - 1
    assert chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, dof)
    # Images are weighted by their number of valid positions.
    per_image = np.bincount(index.numpy(), minlength=3) / n
    sizes = np.array([8 * 10, 5 * 5 - 16, 13 * 4]) / cells_total
    np.testing.assert_allclose(per_image, sizes, atol=0.01)


def test_sampler_accepts_tensors_and_bundled_train_split():
    sampler = PatchSampler([torch.rand(9, 9), np.random.default_rng(0).random((8, 10))], 3, 4, seed=0)
    assert sampler.sample(5).shape == (5, 9)
    train = PatchSampler(load_bundled("train"), 8, 128, seed=0, num_batches=2)
    for batch in train:
        assert batch.shape == (128, 64) and 0.0 <= batch.min() and batch.max() <= 1.0


_EXTENSION_OK = os.environ.get("PATCHREG_BACKEND") != "reference" and patchreg.extension_available()


@pytest.mark.skipif(not _EXTENSION_OK, reason="compiled extension not loaded (or PATCHREG_BACKEND=reference)")
def test_sampler_same_patches_on_both_backends():
    images = _random_images()
    with patchreg.use_backend("reference"):
        expected = PatchSampler(images, 5, 16, seed=4, dtype=torch.float64).sample(300)
    with patchreg.use_backend("extension"):
        got = PatchSampler(images, 5, 16, seed=4, dtype=torch.float64).sample(300)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_sampler_on_cuda_matches_cpu():
    images = _random_images()
    cpu = PatchSampler(images, 5, 16, seed=4).sample(300)
    gpu = PatchSampler(images, 5, 16, seed=4, device="cuda").sample(300)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(images=[]), ValueError, "non-empty"),
        (dict(images=[np.zeros((4, 4))]), ValueError, "larger than images\\[0\\]"),
        (dict(images=[np.zeros((2, 8, 8))]), ValueError, "images\\[0\\] must be a 2-D"),
        (dict(images=["img"]), TypeError, "images\\[0\\]"),
        (dict(patch_size=0), ValueError, "patch_size"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(dtype=torch.int32), TypeError, "dtype"),
        (dict(exclude=[None, None]), ValueError, "one entry per image"),
        (dict(exclude=[[(0, 0, 20, 5)]]), ValueError, "exclude\\[0\\]\\[0\\]"),
        (dict(exclude=[[(3, 3, 2, 5)]]), ValueError, "top < bottom"),
        (dict(exclude=[[(0, 0, 3)]]), TypeError, "exclude\\[0\\]\\[0\\]"),
        (dict(exclude=[(0, 0, 3, 3)]), TypeError, "exclude\\[0\\]\\[0\\]"),
        (dict(exclude=[[(0, 0, 10, 10)]]), ValueError, "no valid patch position"),
    ],
)
def test_sampler_bad_arguments(kwargs, error, match):
    args = dict(images=[np.zeros((10, 10))], patch_size=5, batch_size=4, seed=0) | kwargs
    with pytest.raises(error, match=match):
        PatchSampler(**args)


def test_sampler_sample_and_extract_bad_arguments():
    sampler = PatchSampler([np.zeros((6, 6))], 2, 4, seed=0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        sampler.sample(-1)
    with pytest.raises(ValueError, match="image_index must lie in"):
        sampler.extract(torch.tensor([1]), torch.tensor([[0, 0]]))
    with pytest.raises(ValueError, match="positions"):
        sampler.extract(torch.tensor([0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="out of bounds"):
        sampler.extract(torch.tensor([0]), torch.tensor([[5, 0]]))
