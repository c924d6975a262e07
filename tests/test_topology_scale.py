"""Issue 12 pieces on small inputs: streamed patch sets, kNN at scale, model fits, the core grid, and the
Klein-bottle model sampled on a p x p grid coming out as the Klein bottle through the same pipeline."""

import json

import numpy as np
import pytest

from patchreg.topology.knn import kth_neighbour_distances
from patchreg.topology.model_fit import klein_grid, project_to_model
from patchreg.topology.models import polynomial_patches, sample_model
from patchreg.topology.patchsets import build_patch_set
from patchreg.topology.preprocessing import image_patches, log_intensity, patches_to_sphere
from patchreg.topology.scale import ScaleConfig, choose_core, choose_core_over_seeds, core_of, denoise, density_estimates, read_grid


@pytest.fixture()
def image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        y, x = np.mgrid[:24, :28]
        img = 128 + 60 * np.sin(x / (2 + i)) * np.cos(y / 3) + rng.normal(0, 10, (24, 28))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"im{i}.png")
    return folder


def test_patch_set_matches_the_in_memory_pipeline(image_folder, tmp_path):
    from patchreg.data.images import load_folder

    pset = build_patch_set(image_folder, 3, tmp_path / "cache", top_fraction=0.2, seed=0, progress=False)
    pooled = np.concatenate([image_patches(log_intensity(im), 3) for im in load_folder(image_folder)])
    reference, _ = patches_to_sphere(pooled, 0.2)
    assert pset.meta["n_patches_total"] == len(pooled) == 3 * 22 * 26
    assert len(pset) == len(reference)  # no ties at the threshold in this data
    ours = np.asarray(pset.points, dtype=np.float64)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # same rows, in a seeded random order
    key = lambda a: a[np.lexsort(np.round(a, 4).T[::-1])]  # noqa: E731
    assert np.allclose(key(ours), key(reference), atol=1e-5)
    # cached: a second call loads the file instead of building
    again = build_patch_set(image_folder, 3, tmp_path / "cache", top_fraction=0.2, seed=0, progress=False)
    assert again.path == pset.path and json.loads(pset.path.with_suffix(".json").read_text())["n_points"] == len(pset)


def test_patch_set_checks_arguments(image_folder, tmp_path):
    with pytest.raises(ValueError, match="top_fraction"):
        build_patch_set(image_folder, 3, tmp_path, top_fraction=0.0)
    with pytest.raises(FileNotFoundError, match="not an existing directory"):
        build_patch_set(tmp_path / "nope", 3, tmp_path)


@pytest.mark.parametrize("dim,method", [(8, "kdtree"), (8, "brute"), (24, "auto")])
def test_kth_neighbour_distances_match_float64_brute_force(dim, method):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = np.array([0, 7, 99, 499])
    rho, info = kth_neighbour_distances(x, [10, 1, 50], query_rows=rows, method=method)
    assert info["ks"] == [1, 10, 50]
    d = np.sort(np.linalg.norm(x[rows, None] - x[None], axis=2), axis=1)  # column 0 = the point itself
    assert np.allclose(rho, d[:, [1, 10, 50]], atol=2e-3 if method != "kdtree" else 1e-12)
    with pytest.raises(ValueError, match="only 500 points"):
        kth_neighbour_distances(x, [500])


def test_brute_force_over_reference_chunks_matches_one_pass():
    # the reference is streamed in chunks with a running top-k: chunk edges, a chunk shorter than k and
    # query blocks of uneven size must not change a distance
    from patchreg.topology.knn import _brute

    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = np.array([0, 63, 64, 65, 150, 299])
    d = np.sort(np.linalg.norm(x[rows, None] - x[None], axis=2), axis=1)
    for ref_chunk, block in ((64, 4), (7, 5), (1000, 2)):
        rho = _brute(x, rows, [1, 10, 40], block, False, ref_chunk=ref_chunk)
        assert np.allclose(rho, d[:, [1, 10, 40]], atol=2e-3), (ref_chunk, block)


def test_model_fit_distances():
    # model points lie on the model (up to the grid's resolution); a generic quadratic-free patch is far
    t = np.array([0.3, 1.1, 2.0])
    u = np.array([0.2, 2.5, 4.0])
    on, _ = patches_to_sphere(polynomial_patches(t, u, 4), 1.0)
    d, params = project_to_model(on, 4, "klein", n_t=90, n_u=180)
    assert d.max() < 0.05
    # a diagonal quadratic lies on the Klein bottle but off the three-circle model
    diag, _ = patches_to_sphere(polynomial_patches(np.array([np.pi / 4]), np.array([0.0]), 3), 1.0)
    assert project_to_model(diag, 3, "three-circle")[0][0] > 0.3
    assert klein_grid(3, 10, 20)[0].shape == (200, 8)
    with pytest.raises(ValueError, match=r"shape \(N, 8\)"):
        project_to_model(np.zeros((3, 15)), 3)


def test_denoise_keeps_points_on_the_sphere_and_thins_noise():
    clean, _ = sample_model("primary-circle", 2000, seed=0, patch_size=3)
    noisy, _ = sample_model("primary-circle", 2000, seed=0, patch_size=3, noise=0.05)
    smooth = denoise(noisy, 20)
    assert np.allclose(np.linalg.norm(smooth, axis=1), 1.0)
    off = lambda a: np.linalg.norm(a[:, 2:], axis=1).mean()  # noqa: E731  (the circle lives in coordinates 1-2)
    assert off(smooth) < 0.5 * off(noisy) and off(clean) < 1e-9


@pytest.mark.parametrize("patch_size", [3, 5])
def test_klein_model_on_a_grid_comes_out_as_the_klein_bottle(patch_size):
    # The polynomial Klein-bottle model sampled on the p x p grid, plus 10% clutter on the sphere, through
    # the at-scale pipeline: density estimate, core grid, the core choice rule, persistent homology.
    # (Dense cores of the model itself, q <= 60%, are its three circles: the uniform (t, u) parameter
    # puts more points per area near horizontal and vertical patches; bench/results/topology_scale.md.)
    rng = np.random.default_rng(0)
    klein, _ = sample_model("klein", 2700, seed=0, patch_size=patch_size, noise=0.01)
    clutter = rng.standard_normal((300, patch_size**2 - 1))
    clutter /= np.linalg.norm(clutter, axis=1, keepdims=True)
    points = np.concatenate([klein, clutter])[rng.permutation(3000)]
    config = ScaleConfig(ks=(10,), qs=(90.0,), n_reference=3000, n_queries=3000, grid_landmarks=100,
                         denoise_neighbours=(0,)).check()
    rows, rho, _ = density_estimates(points, config, seed=0)
    grid = read_grid(points[rows], rho, config, seed=0)
    chosen = choose_core(grid)
    assert chosen["name"] == "Klein bottle" and not chosen["fragile"], grid
    core = points[rows][core_of(rho, config.ks, chosen["k"], chosen["q"])]
    assert np.mean(np.isin(core, clutter).all(axis=1)) < 0.02  # the core holds the model, not the clutter


def test_choose_core_prefers_reliable_large_gaps_and_flags_fragile():
    rows = [{"gap": 3.0, "reliable": True, "n_core": 10, "name": "a"}, {"gap": 5.0, "reliable": False, "n_core": 10, "name": "b"},
            {"gap": 2.0, "reliable": True, "n_core": 20, "name": "c"}]
    assert choose_core(rows)["name"] == "a" and not choose_core(rows)["fragile"]
    assert choose_core([rows[1]])["fragile"]


def test_choose_core_prefers_a_named_reading_to_a_larger_unnamed_gap():
    rows = [{"gap": 4.3, "reliable": True, "n_core": 10, "name": "other (Betti Z/2 (2, 5, 0), Z/3 (2, 5, 0))"},
            {"gap": 3.6, "reliable": True, "n_core": 10, "name": "circle"},
            {"gap": 9.0, "reliable": False, "n_core": 10, "name": "torus"}]
    chosen = choose_core(rows)
    assert chosen["name"] == "circle" and "name a topology" in chosen["reason"] and not chosen["fragile"]
    assert choose_core(rows[:1])["name"].startswith("other") and "none names" in choose_core(rows[:1])["reason"]


def _cell(k, name, gap, reliable=True, n=100):
    return {"k": k, "q": 10.0, "denoise": 0, "name": name, "gap": gap, "reliable": reliable, "n_core": n}


def test_choose_core_over_seeds_wants_agreement_not_one_large_gap():
    grids = [[_cell(15, "three-circle model", 9.5), _cell(50, "three-circle model", 3.0)],
             [_cell(15, "three-circle model", 6.8), _cell(50, "three-circle model", 2.5)],
             [_cell(15, "other (Betti Z/2 (2, 4, 0), Z/3 (2, 4, 0))", 1.9), _cell(50, "three-circle model", 3.6)]]
    chosen = choose_core_over_seeds(grids)
    assert chosen["k"] == 50 and chosen["gap"] == 2.5 and not chosen["fragile"] and chosen["selection_gaps"] == [3.0, 2.5, 3.6]
    grids[2][1] = _cell(50, "circle", 3.6)  # no cell agrees any more: seed 0's rule, flagged
    fallback = choose_core_over_seeds(grids)
    assert fallback["k"] == 15 and fallback["fragile"] and "no cell agreed" in fallback["reason"]
    grids[1][1] = _cell(50, "three-circle model", 2.5, reliable=False)
    assert choose_core_over_seeds(grids)["fragile"]


def test_rotation_angles_and_their_errors():
    from patchreg.topology.patchsets import rotation_angles

    assert rotation_angles(1) == [0.0] and rotation_angles(6) == [0.0, 15.0, 30.0, 45.0, 60.0, 75.0]
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="rotations must be an integer >= 1"):
            rotation_angles(bad)


def test_rotated_view_turns_a_ramp_and_keeps_only_inside_pixels():
    from patchreg.topology.orientation import patch_orientation
    from patchreg.topology.patchsets import rotated_view

    y, x = np.mgrid[:40, :40].astype(np.float64)
    ramp = 0.05 * x  # gradient along x: orientation 0
    same, valid = rotated_view(ramp, 0.0)
    assert same is ramp and valid.all()
    quarter, valid = rotated_view(ramp, 90.0, margin=0)  # the spline interpolates: exact at 90 degrees
    assert np.allclose(quarter, np.rot90(ramp), atol=1e-9) and valid.all()
    view, valid = rotated_view(ramp, 30.0)
    assert view.shape[0] > 40 and 0.4 < valid.mean() < 0.9  # the frame grows, its corners are outside
    from patchreg.topology.patchsets import _centred_patches
    from patchreg.topology.preprocessing import dct_basis, grid_laplacian

    centred = _centred_patches(view, 3, valid).numpy()
    assert len(centred) < valid.sum()  # patches that touch an outside pixel are dropped
    lap = grid_laplacian(3)
    unit = centred / np.sqrt(np.einsum("ij,jk,ik->i", centred, lap, centred))[:, None]
    theta = np.degrees(patch_orientation(unit @ lap @ dct_basis(3)[0], 3))
    # a ramp at 30 degrees: counterclockwise as displayed, so -30 = 150 with y running down the rows
    assert np.allclose(theta, 150.0, atol=0.5)


def test_rotated_patch_set_thresholds_each_angle_and_evens_out_orientations(tmp_path):
    from PIL import Image

    from patchreg.topology.orientation import orientation_shares, patch_orientation
    from patchreg.topology.patchsets import patch_set_key

    rng = np.random.default_rng(3)
    folder = tmp_path / "stripes"
    folder.mkdir()
    for i in range(2):  # level stripes: every gradient vertical, orientation 90 degrees
        y, _ = np.mgrid[:40, :40]
        img = 128 + 70 * np.sin(y / (2.0 + i)) + rng.normal(0, 2, (40, 40))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"s{i}.png")
    level = build_patch_set(folder, 3, tmp_path / "cache", top_fraction=0.2, progress=False)
    turned = build_patch_set(folder, 3, tmp_path / "cache", top_fraction=0.2, progress=False, rotations=2)
    assert turned.path != level.path and "rotations" not in level.meta
    files = sorted(folder.iterdir())
    assert patch_set_key(files, 3, 0.2, 0) == patch_set_key(files, 3, 0.2, 0, 1)  # unrotated caches keep their name
    per_angle = turned.meta["n_points_per_angle"]
    assert set(per_angle) == {"0", "45"} and per_angle["0"] == level.meta["n_points"]
    assert sum(per_angle.values()) == len(turned)
    assert turned.meta["thresholds"]["0"] == level.meta["contrast_threshold"]
    assert np.allclose(np.linalg.norm(np.asarray(turned.points), axis=1), 1.0, atol=1e-5)
    shares_level = orientation_shares(patch_orientation(np.asarray(level.points), 3), 4)
    shares_turned = orientation_shares(patch_orientation(np.asarray(turned.points), 3), 4)
    assert shares_level[2] > 0.95  # bins centred on 0, 45, 90, 135 degrees
    assert 0.35 < shares_turned[2] < 0.65 and shares_turned[1] + shares_turned[3] > 0.3  # the 45-degree view's share
    with pytest.raises(ValueError, match="rotations must be an integer >= 1"):
        build_patch_set(folder, 3, tmp_path / "cache", rotations=0)
