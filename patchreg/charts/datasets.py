"""Data specs for chart training: "toy:NAME", "points:FILE.npy", "digits" (scikit-learn's 8x8 digits).

`load_dataset(spec, n_train, n_test, seed)` returns a Dataset with float64 train/test tensors, the
true manifold when known (toy data: exact distances), and the image side for images.

`noise` (toy data only) adds isotropic Gaussian noise of that standard deviation to the training and held-out
points, while `manifold` stays the exact one: the distance of generated samples to it then measures how well the
model recovers the manifold under the noise. Noise-free toys set no floor on that distance (nor on the held-out NLL,
whose maximum-likelihood sigma shrinks with it), so both fall long after the rest has levelled off; with noise the
data set one (issue 15: bench/charts_toy_seeds.py --noise, bench/results/charts_schedule_length.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import toy_manifolds


@dataclass
class Dataset:
    name: str
    train: torch.Tensor
    test: torch.Tensor
    manifold: object | None = None
    labels_test: np.ndarray | None = None
    labels_train: np.ndarray | None = None
    image_side: int | None = None
    noise: float = 0.0


def load_digits_split(seed: int = 0, test_fraction: float = 0.25):
    """scikit-learn's bundled 8x8 digits in [0, 1] as (x_train, y_train, x_test, y_test), seeded split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.data.astype(np.float64) / 16.0, digits.target
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def add_noise(points: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """points + noise * N(0, I), from a stream of its own (seed), so the clean points are those of noise 0."""
    if noise == 0:
        return points
    return points + noise * np.random.default_rng([seed, 50_021]).standard_normal(points.shape)


def check_noise(noise) -> float:
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0 (the standard deviation added to toy data), got {noise!r}")
    return float(noise)


def load_dataset(spec: str, n_train: int = 5000, n_test: int = 2000, seed: int = 0, intrinsic_dim: int = 1,
                 noise: float = 0.0) -> Dataset:
    if not isinstance(spec, str):
        raise TypeError(f"data must be a string spec, got {type(spec).__name__}")
    noise = check_noise(noise)
    if noise and not spec.startswith("toy:"):
        raise ValueError(f"noise applies to toy data only ('toy:NAME'), got data {spec!r} with noise {noise}")
    if spec.startswith("toy:"):
        manifold = toy_manifolds.get_manifold(spec[4:])
        train = add_noise(manifold.sample(n_train, seed), noise, seed)
        test = add_noise(manifold.sample(n_test, seed + 10_000), noise, seed + 10_000)
        return Dataset(spec, torch.from_numpy(train), torch.from_numpy(test), manifold, noise=noise)
    if spec.startswith("points:"):
        cloud = toy_manifolds.load_point_cloud(spec[7:], intrinsic_dim)
        order = np.random.default_rng(seed).permutation(len(cloud.points))
        n_hold = max(1, len(order) // 5)
        test, train = cloud.points[order[:n_hold]], cloud.points[order[n_hold:]]
        return Dataset(spec, torch.from_numpy(train), torch.from_numpy(test), toy_manifolds.PointCloud(train, intrinsic_dim))
    if spec == "digits":
        xtr, ytr, xte, yte = load_digits_split(seed)
        return Dataset(spec, torch.from_numpy(xtr), torch.from_numpy(xte), None, yte, ytr, image_side=8)
    raise ValueError(f"data must be 'toy:NAME' (NAME in {sorted(toy_manifolds.TOY_MANIFOLDS)}), 'points:FILE.npy' or 'digits', got {spec!r}")
