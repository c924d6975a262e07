"""Patch space onto S^(p^2-2): grid Laplacian, DCT basis (methods.md for p = 3), pipeline, inputs."""

import numpy as np
import pytest

from patchreg.topology import preprocessing as pre

# Carlsson et al. basis (methods.md), D-normalised, row-major 3x3 patches.
_LIN = np.array([[1, 0, -1]] * 3, float)
_QUAD = np.array([[1, -2, 1]] * 3, float)
METHODS_BASIS = [
    _LIN / np.sqrt(6), _LIN.T / np.sqrt(6), _QUAD / np.sqrt(54), _QUAD.T / np.sqrt(54),
    np.array([[1, 0, -1], [0, 0, 0], [-1, 0, 1]]) / np.sqrt(8),
    np.array([[1, 0, -1], [-2, 0, 2], [1, 0, -1]]) / np.sqrt(48),
    np.array([[1, 0, -1], [-2, 0, 2], [1, 0, -1]]).T / np.sqrt(48),
    np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]]) / np.sqrt(216),
]


def test_dct_basis_p3_is_the_published_basis():
    basis, lam = pre.dct_basis(3)
    np.testing.assert_allclose(basis, np.stack([e.ravel() for e in METHODS_BASIS], axis=1), atol=1e-12)
    np.testing.assert_allclose(lam, [1, 1, 3, 3, 2, 4, 4, 6], atol=1e-12)


def test_grid_laplacian_p3_by_hand():
    degree = np.array([2, 3, 2, 3, 4, 3, 2, 3, 2], float)
    adjacency = np.zeros((9, 9))
    for r in range(3):
        for c in range(3):
            for dr, dc in ((0, 1), (1, 0)):
                if r + dr < 3 and c + dc < 3:
                    adjacency[3 * r + c, 3 * (r + dr) + c + dc] = adjacency[3 * (r + dr) + c + dc, 3 * r + c] = 1
    np.testing.assert_array_equal(pre.grid_laplacian(3), np.diag(degree) - adjacency)


@pytest.mark.parametrize("p", [2, 3, 4, 6, 8])
def test_dct_basis_is_d_orthonormal_and_diagonalises_d(p):
    basis, lam = pre.dct_basis(p)
    laplacian = pre.grid_laplacian(p)
    assert basis.shape == (p * p, p * p - 1)
    np.testing.assert_allclose(basis.T @ laplacian @ basis, np.eye(p * p - 1), atol=1e-10)
    np.testing.assert_allclose(laplacian @ basis, basis * lam, atol=1e-10)  # eigenvectors of D
    np.testing.assert_allclose(basis.sum(axis=0), 0, atol=1e-10)  # no DC
    # Columns 1-2 are always the horizontal and vertical gradients.
    assert pre.dct_modes(p)[:2] == [(1, 0), (0, 1)]


def test_patches_to_sphere_keeps_top_contrast_and_inverts():
    rng = np.random.default_rng(0)
    p = 4
    patches = rng.standard_normal((500, p * p)) * rng.uniform(0.1, 3, (500, 1)) + 5.0
    points, keep = pre.patches_to_sphere(patches, top_fraction=0.2)
    assert points.shape == (100, p * p - 1)
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1, atol=1e-12)
    laplacian = pre.grid_laplacian(p)
    centred = patches - patches.mean(axis=1, keepdims=True)
    contrast = np.sqrt(np.einsum("ni,ij,nj->n", centred, laplacian, centred))
    assert contrast[keep].min() >= np.delete(contrast, keep).max()
    basis, _ = pre.dct_basis(p)  # y = A v recovers the D-normalised patch
    np.testing.assert_allclose(points @ basis.T, centred[keep] / contrast[keep, None], atol=1e-10)


def test_images_to_sphere_uses_log_intensity_and_samples():
    rng = np.random.default_rng(1)
    images = [rng.uniform(0, 1, (40, 50)), rng.uniform(0, 1, (30, 30))]
    points = pre.images_to_sphere(images, 5, max_patches_per_image=300, seed=0)
    assert points.shape == (120, 24)
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1, atol=1e-12)
    # Scaling the intensities is a shift in log intensity: removed with the mean.
    again = pre.images_to_sphere([3 * im for im in images], 5, max_patches_per_image=300, seed=0, log_eps=3 / 256)
    np.testing.assert_allclose(again, points, atol=1e-10)


def test_bad_inputs_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="patch_size must be >= 2"):
        pre.dct_basis(1)
    with pytest.raises(ValueError, match="top_fraction"):
        pre.patches_to_sphere(np.ones((4, 9)), top_fraction=0)
    with pytest.raises(ValueError, match="not p\\^2"):
        pre.patches_to_sphere(np.ones((4, 10)))
    with pytest.raises(ValueError, match="zero contrast"):
        pre.patches_to_sphere(np.ones((4, 9)), top_fraction=1.0)
    with pytest.raises(ValueError, match="unit sphere"):
        pre.check_on_sphere(2 * np.eye(3))
    np.save(tmp_path / "pts.npy", np.eye(3))
    np.testing.assert_array_equal(pre.load_points(tmp_path / "pts.npy"), np.eye(3))
    (tmp_path / "pts.txt").write_text("1 2")
    with pytest.raises(ValueError, match=".npy or .mat"):
        pre.load_points(tmp_path / "pts.txt")
    with pytest.raises(FileNotFoundError):
        pre.load_points(tmp_path / "missing.npy")
