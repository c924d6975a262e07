"""Patch orientation from the structure tensor, and density cores taken per orientation bin."""

import numpy as np
import pytest

from patchreg.topology.models import polynomial_patches
from patchreg.topology.orientation import orientation_bins, orientation_shares, patch_orientation, stratified_core
from patchreg.topology.preprocessing import patches_to_sphere


@pytest.mark.parametrize("p", [3, 5])
@pytest.mark.parametrize("u", [np.pi / 2, 0.0, 0.7])  # edges (linear), bars (quadratic), a mixture
def test_orientation_of_model_patches_is_their_angle(p, u):
    t = np.linspace(0, np.pi, 25, endpoint=False)
    points, _ = patches_to_sphere(polynomial_patches(t, np.full_like(t, u), p), top_fraction=1.0)
    theta = patch_orientation(points, p, block=7)  # several blocks
    error = np.abs(np.angle(np.exp(2j * (theta - t)))) / 2  # distance on the circle of orientations
    tol = 1e-9 if u == np.pi / 2 else 0.2  # exact on linear patches; the grid bends quadratics a little
    assert error.max() < tol


def test_orientation_is_independent_of_sign_and_contrast():
    points = np.random.default_rng(0).normal(size=(50, 8))
    np.testing.assert_allclose(patch_orientation(-3 * points, 3), patch_orientation(points, 3), atol=1e-12)


def test_bins_are_centred_on_the_axes():
    assert list(orientation_bins(np.array([0.0, np.pi - 0.01, np.pi / 2, np.pi / 4]), 4)) == [0, 0, 2, 1]
    np.testing.assert_allclose(orientation_shares(np.array([0.0, 0.1, np.pi / 2]), 2), [2 / 3, 1 / 3])


def test_stratified_core_takes_the_same_fraction_of_every_bin():
    rng = np.random.default_rng(1)
    theta = np.r_[np.zeros(900), np.full(100, np.pi / 2)]  # a 9:1 imbalance
    rho = np.r_[rng.uniform(0, 1, 900), rng.uniform(2, 3, 100)]  # the rare bin is also the sparse one
    core = stratified_core(rho, theta, 10.0, n_bins=4)
    assert len(core) == 100 and np.sum(core >= 900) == 10
    assert set(core[core < 900]) == set(np.argsort(rho[:900])[:90])
    assert np.sum(np.argsort(rho)[:100] >= 900) == 0  # a global threshold would drop the rare bin entirely


@pytest.mark.parametrize("call, match", [
    (lambda: patch_orientation(np.zeros((3, 7)), 3), "shape"),
    (lambda: stratified_core(np.zeros(3), np.zeros(4), 10), "one length"),
    (lambda: stratified_core(np.zeros(3), np.zeros(3), 0), "q must be"),
    (lambda: orientation_bins(np.zeros(3), 0), "n_bins"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
