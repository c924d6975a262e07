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

__all__ = ["PatchSet", "build_patch_set", "image_files", "patch_set_key", "image_contrasts"]


def image_files(folder) -> list[Path]:
    from ..data.images import image_files as folder_images

    return folder_images(folder, what="images folder")


def patch_set_key(files, patch_size: int, top_fraction: float, seed: int) -> str:
    h = hashlib.sha1()
    for f in files:
        h.update(f"{Path(f).name}:{Path(f).stat().st_size};".encode())
    h.update(f"p={patch_size};f={top_fraction};seed={seed};eps={DEFAULT_LOG_EPS}".encode())
    return h.hexdigest()[:12]


def _centred_patches(image: np.ndarray, p: int) -> torch.Tensor:
    """All p x p patches of the log image, mean removed, (L, p^2) float64 (row-major, F.unfold order)."""
    x = torch.from_numpy(np.ascontiguousarray(log_intensity(image)))[None, None]
    patches = torch.nn.functional.unfold(x, p)[0].T
    return patches - patches.mean(dim=1, keepdim=True)


def image_contrasts(image: np.ndarray, p: int, laplacian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(centred patches (L, p^2), D-norm contrast (L,)) of one image."""
    centred = _centred_patches(image, p)
    contrast = torch.sqrt(torch.clamp(((centred @ laplacian) * centred).sum(dim=1), min=0.0))
    return centred, contrast


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
                    progress: bool = True) -> PatchSet:
    """The high-contrast patch set of every image in images_dir (module docstring), from cache if there."""
    from ..data.images import load_image

    p = _check_patch_size(patch_size)
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    files = image_files(images_dir)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = patch_set_key(files, p, top_fraction, seed)
    path = cache_dir / f"patches_p{p}_{key}.npy"
    if path.exists() and path.with_suffix(".json").exists():
        return PatchSet(path)
    start = time.time()
    laplacian = torch.from_numpy(grid_laplacian(p))
    basis, _ = dct_basis(p)
    to_dct = laplacian @ torch.from_numpy(basis)  # v = A^T D y, A^T D A = I
    bar = _bar(progress, 2 * len(files), f"patch set p={p}")
    contrasts = []
    for f in files:  # pass 1: contrasts only
        contrasts.append(image_contrasts(load_image(f), p, laplacian)[1].float().numpy())
        bar.update()
    pooled = np.concatenate(contrasts)
    n_keep = max(1, int(round(top_fraction * len(pooled))))
    threshold = float(np.partition(pooled, len(pooled) - n_keep)[len(pooled) - n_keep])
    if threshold <= 0:
        raise ValueError(f"the top {top_fraction:.0%} of patches include constant patches; lower top_fraction")
    n_kept = int(np.sum(pooled >= threshold))  # ties at the threshold are all kept (8-bit images have ties)
    del pooled
    order = np.random.default_rng(seed).permutation(n_kept)  # seeded random row order
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n_kept, p * p - 1))
    row = 0
    for f, c in zip(files, contrasts):  # pass 2: the kept patches, normalised, in DCT coordinates
        keep = np.flatnonzero(c >= threshold)
        if len(keep):
            centred, contrast = image_contrasts(load_image(f), p, laplacian)
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
        "n_images": len(files), "n_patches_total": int(sum(len(c) for c in contrasts)), "n_points": n_kept,
        "contrast_threshold": threshold, "log_eps": DEFAULT_LOG_EPS, "build_seconds": round(time.time() - start, 1),
        "dtype": "float32", "coordinates": "D-orthonormal DCT basis (preprocessing.dct_basis), unit norm",
    }
    from ..io import atomic_write_json

    atomic_write_json(path.with_suffix(".json"), meta)
    return PatchSet(path)


def _bar(progress: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False)
