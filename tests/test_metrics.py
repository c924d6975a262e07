"""PSNR/SSIM per image and the time/peak-memory measure (patchreg.metrics)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from patchreg.metrics import measure, psnr, ssim


def _images(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_psnr_per_image_matches_the_definition():
    reference = _images((3, 2, 16, 16))
    offsets = torch.tensor([0.01, 0.05, 0.1], dtype=torch.float64).reshape(3, 1, 1, 1)
    values = psnr(reference + offsets, reference)
    assert values.shape == (3,)
    assert np.allclose(values, 10 * np.log10(1.0 / offsets.flatten().numpy() ** 2))


def test_psnr_accepts_single_gray_arrays():
    reference = _images((16, 16)).numpy()
    assert psnr(reference + 0.1, reference).shape == (1,)
    assert np.isclose(psnr(reference + 0.1, reference)[0], 20.0)


def test_ssim_is_one_for_identical_images_and_lower_for_noisy_ones():
    reference = _images((2, 3, 32, 32))
    noise = torch.randn((2, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert np.allclose(ssim(reference, reference), 1.0)
    slightly, strongly = ssim(reference + 0.05 * noise, reference), ssim(reference + 0.2 * noise, reference)
    assert slightly.shape == (2,)
    assert bool((strongly < slightly).all()) and bool((slightly < 0.99).all())


def test_metrics_reject_mismatched_or_badly_shaped_images():
    with pytest.raises(ValueError, match="estimate has shape"):
        psnr(_images((1, 1, 8, 8)), _images((1, 1, 8, 9)))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) or \(H, W\)"):
        ssim(_images((3, 8, 8)), _images((3, 8, 8)))
    with pytest.raises(TypeError, match="estimate"):
        psnr([[0.0]], _images((1, 1)))


def test_measure_times_a_block():
    with measure() as m:
        time.sleep(0.05)
    assert 0.05 <= m.seconds < 1.0


def test_measure_sees_a_peak_freed_inside_the_block():
    with measure(interval=0.001) as m:
        big = torch.ones(25_000_000, dtype=torch.float64)  # 200 MB, touched
        time.sleep(0.05)
        del big
    assert m.peak_megabytes > 150
    with measure() as small:
        torch.ones(1000)
    assert small.peak_megabytes < 50
