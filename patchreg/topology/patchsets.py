"""High-contrast patch sets at scale: every p x p patch of an image folder, streamed, cached as .npy.

Carlsson et al.'s pipeline (preprocessing.py) over ALL overlapping patches of all images, without
holding them in memory: pass 1 streams the images and records each patch's D-norm contrast (one
float32 per patch); the global top `top_fraction` threshold is read from those; pass 2 streams the
images again and keeps the patches at or above it, divided by their D-norm and written in the
D-orthonormal DCT coordinates (points on S^(p^2-2), float32). For p = 3 these are the DCT
coordinates of Carlsson et al.; for p >= 4 the same construction gives an orthonormal basis of the
mean-free patches (A^T D A = I).

The rows are stored in a seeded random order, so the first n rows are a uniform random subsample
of the set (subsamples at any size are prefixes or seeded draws; no second shuffle needed).
Cache: <cache>/patches_p{p}_{key}.npy and a .json beside it with the settings and counts; the key
hashes the image file names and sizes, the patch size, the fraction and the seed. Writes are atomic
(temporary file, then rename), so an interrupted build leaves no partial cache and reruns resume
from the patch sizes already done.

Rotations (`rotations` R > 1, issue 12): every image is also seen rotated by 90 r / R degrees,
r = 1..R-1 (cubic spline on the log image, only patches wholly inside the rotated image kept), and
the top-contrast threshold is taken per angle, so every angle contributes the same share. A camera
held level sees horizontal and vertical structure more often than diagonal structure, and its
pixel grid samples a diagonal bar differently from a level one; the rotated views give every
orientation the same chance, as a camera at a random roll would. The interpolation smooths the
rotated views (a small blur), which is why the threshold is per angle: a global one would favour
the sharper level view.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from .preprocessing import DEFAULT_LOG_EPS, _check_patch_size, dct_basis, grid_laplacian, log_intensity

__all__ = ["PatchSet", "build_patch_set", "image_files", "patch_set_key", "image_contrasts", "rotation_angles",
           "rotated_view"]


def image_files(folder) -> list[Path]:
    from ..data.images import image_files as folder_images

    return folder_images(folder, what="images folder")


def patch_set_key(files, patch_size: int, top_fraction: float, seed: int, rotations: int = 1) -> str:
    h = hashlib.sha1()
    for f in files:
        h.update(f"{Path(f).name}:{Path(f).stat().st_size};".encode())
    h.update(f"p={patch_size};f={top_fraction};seed={seed};eps={DEFAULT_LOG_EPS}".encode())
    if rotations != 1:  # keys of unrotated sets stay as they were
        h.update(f";rotations={rotations}".encode())
    return h.hexdigest()[:12]


def rotation_angles(rotations: int) -> list[float]:
    """The view angles in degrees: 90 r / R for r = 0..R-1 (the pixel grid repeats itself every 90)."""
    if int(rotations) != rotations or rotations < 1:
        raise ValueError(f"rotations must be an integer >= 1, got {rotations}")
    return [90.0 * r / rotations for r in range(int(rotations))]


def rotated_view(log_image: np.ndarray, angle: float, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(view, valid) of a log image rotated by `angle` degrees: a cubic-spline rotation (the frame
    grows to hold the whole image) and the mask of pixels at least `margin` pixels inside the
    rotated image, away from the spline's boundary ringing. Angle 0 is the image itself."""
    if angle == 0:
        return log_image, np.ones(log_image.shape, dtype=bool)
    from scipy import ndimage

    view = ndimage.rotate(log_image, angle, reshape=True, order=3, mode="nearest")
    inside = ndimage.rotate(np.ones(log_image.shape), angle, reshape=True, order=0, mode="constant", cval=0.0) > 0.5
    return view, ndimage.binary_erosion(inside, iterations=margin) if margin else inside


def _centred_patches(log_image: np.ndarray, p: int, valid: np.ndarray | None = None) -> torch.Tensor:
    """The p x p patches of a log image, mean removed, (L, p^2) float64 (row-major, F.unfold order);
    with `valid`, only the patches whose pixels are all valid."""
    x = torch.from_numpy(np.ascontiguousarray(log_image))[None, None]
    patches = torch.nn.functional.unfold(x, p)[0].T
    if valid is not None and not valid.all():
        inside = torch.nn.functional.unfold(torch.from_numpy((~valid).astype(np.float64))[None, None], p)[0].sum(0) == 0
        patches = patches[inside]
    return patches - patches.mean(dim=1, keepdim=True)


def _contrasts(centred: torch.Tensor, laplacian: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.clamp(((centred @ laplacian) * centred).sum(dim=1), min=0.0))


def image_contrasts(image: np.ndarray, p: int, laplacian: torch.Tensor, angle: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(centred patches (L, p^2), D-norm contrast (L,)) of one image, seen rotated by `angle` degrees."""
    view, valid = rotated_view(log_intensity(image), angle)
    centred = _centred_patches(view, p, valid)
    return centred, _contrasts(centred, laplacian)


class PatchSet:
    """A cached patch set: points (memory-mapped float32 (N, p^2 - 1)) and its metadata."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = json.loads(self.path.with_suffix(".json").read_text())
        self.points = np.load(self.path, mmap_mode="r")

    @property
    def patch_size(self) -> int:
        return int(self.meta["patch_size"])

    def __len__(self) -> int:
        return len(self.points)

    def sample(self, n: int, seed: int) -> np.ndarray:
        """n rows drawn without replacement (seeded), float64, in increasing row order."""
        n = min(int(n), len(self.points))
        rows = np.sort(np.random.default_rng(seed).choice(len(self.points), n, replace=False))
        return np.asarray(self.points[rows], dtype=np.float64)


def build_patch_set(images_dir, patch_size: int, cache_dir, top_fraction: float = 0.2, seed: int = 0,
                    progress: bool = True, rotations: int = 1) -> PatchSet:
    """The high-contrast patch set of every image in images_dir (module docstring), from cache if there;
    rotations > 1 adds the rotated views, each angle thresholded on its own."""
    from ..data.images import load_image

    p = _check_patch_size(patch_size)
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    angles = rotation_angles(rotations)
    files = image_files(images_dir)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = patch_set_key(files, p, top_fraction, seed, rotations)
    path = cache_dir / f"patches_p{p}_{key}.npy"
    if path.exists() and path.with_suffix(".json").exists():
        return PatchSet(path)
    start = time.time()
    laplacian = torch.from_numpy(grid_laplacian(p))
    basis, _ = dct_basis(p)
    to_dct = laplacian @ torch.from_numpy(basis)  # v = A^T D y, A^T D A = I
    bar = _bar(progress, 2 * len(files) * len(angles), f"patch set p={p}")
    contrasts = {a: [] for a in angles}
    for f in files:  # pass 1: contrasts only
        image = load_image(f)
        for a in angles:
            contrasts[a].append(image_contrasts(image, p, laplacian, a)[1].float().numpy())
            bar.update()
    thresholds = {a: _top_threshold(np.concatenate(contrasts[a]), top_fraction) for a in angles}
    kept = {a: [np.flatnonzero(c >= thresholds[a]) for c in contrasts[a]] for a in angles}
    n_kept = int(sum(len(k) for a in angles for k in kept[a]))  # ties at a threshold are all kept
    order = np.random.default_rng(seed).permutation(n_kept)  # seeded random row order
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n_kept, p * p - 1))
    row = 0
    for i, f in enumerate(files):  # pass 2: the kept patches, normalised, in DCT coordinates
        image = load_image(f)
        for a in angles:
            keep = kept[a][i]
            if len(keep):
                centred, contrast = image_contrasts(image, p, laplacian, a)
                keep_t = torch.from_numpy(keep)
                unit = centred[keep_t] / contrast[keep_t, None]
                out[order[row : row + len(keep)]] = (unit @ to_dct).float().numpy()
                row += len(keep)
            bar.update()
    bar.close()
    out.flush()
    del out
    os.replace(tmp, path)
    meta = {
        "patch_size": p, "top_fraction": top_fraction, "seed": seed, "images_dir": str(images_dir),
        "n_images": len(files), "n_patches_total": int(sum(len(c) for a in angles for c in contrasts[a])),
        "n_points": n_kept, "contrast_threshold": thresholds[0.0], "log_eps": DEFAULT_LOG_EPS,
        "build_seconds": round(time.time() - start, 1), "dtype": "float32",
        "coordinates": "D-orthonormal DCT basis (preprocessing.dct_basis), unit norm",
    }
    if rotations != 1:
        meta.update(rotations=int(rotations), angles=angles,
                    thresholds={f"{a:g}": thresholds[a] for a in angles},
                    n_points_per_angle={f"{a:g}": int(sum(len(k) for k in kept[a])) for a in angles})
    from ..io import atomic_write_json

    atomic_write_json(path.with_suffix(".json"), meta)
    return PatchSet(path)


def _top_threshold(pooled: np.ndarray, top_fraction: float) -> float:
    """The contrast at the top `top_fraction` of the pooled contrasts; refuses a constant-patch cut."""
    n_keep = max(1, int(round(top_fraction * len(pooled))))
    threshold = float(np.partition(pooled, len(pooled) - n_keep)[len(pooled) - n_keep])
    if threshold <= 0:
        raise ValueError(f"the top {top_fraction:.0%} of patches include constant patches; lower top_fraction")
    return threshold


def _bar(progress: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False)
