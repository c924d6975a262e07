"""Patch space of Lee-Pedersen-Mumford / Carlsson et al. for any patch size p.

log intensity -> p x p patches -> remove the mean -> contrast ||y||_D (D = graph Laplacian of the
p x p grid, 4-neighbours) -> keep the top fraction by contrast -> divide by the D-norm -> DCT
coordinates, so every point lies on the unit sphere S^(p^2 - 2) in R^(p^2 - 1).

DCT basis. The 1-D DCT-II vectors c_k(n) = cos(pi k (n + 1/2) / p) are the eigenvectors of the
path-graph Laplacian with eigenvalues 2 - 2 cos(pi k / p), so the products c_kx (columns) x c_ky
(rows) diagonalise D with eigenvalues lam_kx + lam_ky. Each basis patch e is scaled so that
e^T D e = 1 (D-orthonormal, A^T D A = I); coordinates are v = A^T D y and ||v|| = ||y||_D.
Order: pure horizontal/vertical modes by frequency, (1,0), (0,1), (2,0), (0,2), ..., then mixed
modes by total frequency, ties by horizontal frequency. For p = 3 this is exactly e1..e8 of
Carlsson et al. (methods.md): columns 1-2 are always the horizontal and vertical gradients.
Patch entries are in row-major order (F.unfold order of patchreg.extract_patches).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import extract_patches

__all__ = [
    "grid_laplacian",
    "dct_modes",
    "dct_basis",
    "patch_size_from_dim",
    "log_intensity",
    "image_patches",
    "patches_to_sphere",
    "images_to_sphere",
    "load_points",
    "check_on_sphere",
]

DEFAULT_LOG_EPS = 1.0 / 256.0  # keeps log finite on zero pixels of 8-bit images


def _check_patch_size(patch_size) -> int:
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)):
        raise TypeError(f"patch_size must be an int, got {type(patch_size).__name__}")
    if patch_size < 2:
        raise ValueError(f"patch_size must be >= 2 (a 1x1 patch has no contrast), got {patch_size}")
    return int(patch_size)


def grid_laplacian(patch_size: int) -> np.ndarray:
    """Graph Laplacian D of the p x p grid with 4-neighbours, (p^2, p^2), row-major pixels."""
    p = _check_patch_size(patch_size)
    path = np.diag(np.r_[1.0, 2.0 * np.ones(p - 2), 1.0])
    path -= np.eye(p, k=1) + np.eye(p, k=-1)
    eye = np.eye(p)
    return np.kron(path, eye) + np.kron(eye, path)


def dct_modes(patch_size: int) -> list[tuple[int, int]]:
    """(horizontal, vertical) frequency pairs of the basis, in the documented order (no DC)."""
    p = _check_patch_size(patch_size)
    pure = [m for f in range(1, p) for m in ((f, 0), (0, f))]
    mixed = [(kx, ky) for kx in range(1, p) for ky in range(1, p)]
    mixed.sort(key=lambda m: (m[0] + m[1], m[0]))
    return pure + mixed


def _dct_vector(p: int, k: int) -> np.ndarray:
    n = np.arange(p)
    return np.cos(np.pi * k * (n + 0.5) / p)


def dct_basis(patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """D-orthonormal DCT basis A (p^2, p^2 - 1) and Laplacian eigenvalues lam; A^T D A = I.

    A column is the patch c_ky (rows) outer c_kx (columns), flattened row-major, scaled to D-norm 1.
    lam[j] = e_j^T D e_j / ||e_j||^2 is the Laplacian eigenvalue of mode j (Lambda of methods.md).
    """
    p = _check_patch_size(patch_size)
    lam_1d = 2.0 - 2.0 * np.cos(np.pi * np.arange(p) / p)
    columns, lams = [], []
    for kx, ky in dct_modes(p):
        patch = np.outer(_dct_vector(p, ky), _dct_vector(p, kx)).ravel()
        lam = lam_1d[kx] + lam_1d[ky]
        columns.append(patch / np.sqrt(lam * patch @ patch))
        lams.append(lam)
    return np.stack(columns, axis=1), np.asarray(lams)


def patch_size_from_dim(dim: int, *, sphere_coordinates: bool) -> int:
    """p such that dim == p^2 - 1 (DCT coordinates) or dim == p^2 (raw patches); ValueError otherwise."""
    target = dim + 1 if sphere_coordinates else dim
    p = int(round(np.sqrt(target)))
    if p * p != target or p < 2:
        kind = "p^2 - 1 (DCT coordinates on S^(p^2-2))" if sphere_coordinates else "p^2 (raw patches)"
        raise ValueError(f"points have {dim} coordinates, which is not {kind} for any patch size p >= 2")
    return p


def log_intensity(image: np.ndarray, eps: float = DEFAULT_LOG_EPS) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"image must be a 2-D gray array (H, W), got shape {image.shape}")
    if np.any(image < 0) or not np.all(np.isfinite(image)):
        raise ValueError("image must hold finite non-negative intensities")
    return np.log(image + eps)


def image_patches(
    image: np.ndarray, patch_size: int, max_patches: int | None = None, rng: np.random.Generator | None = None
) -> np.ndarray:
    """All (or max_patches random) p x p patches of one 2-D array, (L, p^2), row-major, float64."""
    p = _check_patch_size(patch_size)
    if image.shape[0] < p or image.shape[1] < p:
        raise ValueError(f"patch_size={p} is larger than an image of shape {image.shape}")
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64))[None, None]
    patches = extract_patches(x, p)[0].numpy()
    if max_patches is not None and len(patches) > max_patches:
        rng = rng if rng is not None else np.random.default_rng(0)
        patches = patches[rng.choice(len(patches), max_patches, replace=False)]
    return patches


def patches_to_sphere(patches: np.ndarray, top_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Raw (log-intensity) patches (N, p^2) -> (points on S^(p^2-2) (M, p^2-1), kept indices).

    Keeps the top_fraction of patches by D-norm contrast (ties broken by index order).
    """
    patches = np.asarray(patches, dtype=np.float64)
    if patches.ndim != 2:
        raise ValueError(f"patches must be 2-D (N, p^2), got shape {patches.shape}")
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    p = patch_size_from_dim(patches.shape[1], sphere_coordinates=False)
    centred = patches - patches.mean(axis=1, keepdims=True)
    laplacian = grid_laplacian(p)
    contrast = np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", centred, laplacian, centred), 0.0))
    n_keep = max(1, int(round(top_fraction * len(patches))))
    keep = np.sort(np.argsort(-contrast, kind="stable")[:n_keep])
    if contrast[keep].min() <= 0:
        raise ValueError("some kept patches have zero contrast (constant patches); lower top_fraction")
    basis, _ = dct_basis(p)
    unit = centred[keep] / contrast[keep, None]
    return unit @ laplacian @ basis, keep


def images_to_sphere(
    images,
    patch_size: int,
    top_fraction: float = 0.2,
    max_patches_per_image: int | None = 5000,
    seed: int = 0,
    log_eps: float = DEFAULT_LOG_EPS,
) -> np.ndarray:
    """Gray images in [0, inf) -> high-contrast patch points on S^(p^2-2), pooled over images.

    Like Lee et al., max_patches_per_image random patches are drawn from each image (None: all),
    then the top_fraction by contrast over the pooled set is kept.
    """
    p = _check_patch_size(patch_size)
    if len(images) == 0:
        raise ValueError("images is empty")
    rng = np.random.default_rng(seed)
    pooled = [image_patches(log_intensity(im, log_eps), p, max_patches_per_image, rng) for im in images]
    points, _ = patches_to_sphere(np.concatenate(pooled), top_fraction)
    return points


def load_points(path) -> np.ndarray:
    """A point cloud (N, dim) from .npy, or from .mat (the single non-metadata array)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"points file {path} does not exist")
    if path.suffix == ".npy":
        points = np.load(path, allow_pickle=False)
    elif path.suffix == ".mat":
        import scipy.io

        arrays = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
        if len(arrays) != 1:
            raise ValueError(f"{path} must hold exactly one array, found {sorted(arrays)}")
        points = next(iter(arrays.values()))
    else:
        raise ValueError(f"points file must be .npy or .mat, got {path.name}")
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"points in {path} must be a non-empty 2-D array (N, dim), got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"points in {path} contain NaN or infinite values")
    return points


def check_on_sphere(points: np.ndarray, tol: float = 1e-4, name: str = "points") -> None:
    """ValueError unless every row has unit Euclidean norm within tol."""
    norms = np.linalg.norm(points, axis=1)
    worst = float(np.abs(norms - 1.0).max())
    if worst > tol:
        raise ValueError(
            f"{name} must lie on the unit sphere (|norm - 1| <= {tol}); the worst row is off by {worst:.3g}. "
            "Pass raw p x p patches (p^2 columns) to run the patch pipeline instead"
        )
