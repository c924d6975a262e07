"""Patch orientation, and density cores taken per orientation (issue 12's Klein-bottle search).

The Klein-bottle model of Carlsson et al. is rotation-equivariant: it holds edges and bars at every
orientation. A photograph collection is not: in train400 the densest 10% of 3x3 patches (X(100, 10)
against all 2.5 million) hold almost no diagonal edges, while the whole set has them at nearly the
rate of horizontal and vertical ones (bench/results/topology_klein_witness.md). A global density
threshold then cuts the Klein bottle along its diagonals. `stratified_core` takes the q% densest
points of each orientation bin instead, so every orientation enters the core at the same rate.

Orientation: the dominant gradient direction of the patch in pixel space, from its structure tensor
J = sum over pixels of g g^T (g: finite-difference gradient, central inside, one-sided at the border,
exact on linear patches): theta = atan2(2 J_xy, J_xx - J_yy) / 2 in [0, pi). It is defined by the
data, not by the model, and is the same for an edge and a bar of one direction.
"""

from __future__ import annotations

import numpy as np

from .preprocessing import _check_patch_size, dct_basis

__all__ = ["patch_orientation", "orientation_bins", "stratified_core", "orientation_shares"]


def _gradients(patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gx, gy) of (N, p, p) patches: central differences inside, one-sided on the border."""
    gx, gy = np.empty_like(patches), np.empty_like(patches)
    gx[:, :, 1:-1] = (patches[:, :, 2:] - patches[:, :, :-2]) / 2
    gx[:, :, 0] = patches[:, :, 1] - patches[:, :, 0]
    gx[:, :, -1] = patches[:, :, -1] - patches[:, :, -2]
    gy[:, 1:-1] = (patches[:, 2:] - patches[:, :-2]) / 2
    gy[:, 0] = patches[:, 1] - patches[:, 0]
    gy[:, -1] = patches[:, -1] - patches[:, -2]
    return gx, gy


def patch_orientation(points: np.ndarray, patch_size: int, block: int = 200_000) -> np.ndarray:
    """Orientation in [0, pi) of each point (N, p^2 - 1) in the DCT coordinates of patchsets.py
    (module docstring); x runs along columns, y along rows."""
    p = _check_patch_size(patch_size)
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != p * p - 1:
        raise ValueError(f"points must have shape (N, {p * p - 1}) for patch_size={p}, got {points.shape}")
    basis, _ = dct_basis(p)  # (p^2, p^2 - 1): coordinates v -> mean-free patch y = A v
    out = np.empty(len(points))
    for start in range(0, len(points), block):
        patches = (np.asarray(points[start : start + block], dtype=np.float64) @ basis.T).reshape(-1, p, p)
        gx, gy = _gradients(patches)
        jxx, jyy, jxy = (gx * gx).sum((1, 2)), (gy * gy).sum((1, 2)), (gx * gy).sum((1, 2))
        out[start : start + len(patches)] = (0.5 * np.arctan2(2 * jxy, jxx - jyy)) % np.pi
    return out


def orientation_bins(theta: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index in [0, n_bins) of each orientation; bin 0 is centred on 0 (horizontal gradient)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    width = np.pi / n_bins
    return (np.floor((np.asarray(theta) + width / 2) / width).astype(np.int64)) % n_bins


def stratified_core(rho_k: np.ndarray, theta: np.ndarray, q: float, n_bins: int = 16) -> np.ndarray:
    """Sorted indices of the q% smallest rho_k within each orientation bin (module docstring)."""
    rho_k, theta = np.asarray(rho_k), np.asarray(theta)
    if rho_k.shape != theta.shape or rho_k.ndim != 1:
        raise ValueError(f"rho_k and theta must be 1-D of one length, got {rho_k.shape} and {theta.shape}")
    if not 0 < q <= 100:
        raise ValueError(f"q must be a percentage in (0, 100], got {q}")
    bins = orientation_bins(theta, n_bins)
    keep = []
    for b in range(n_bins):
        members = np.flatnonzero(bins == b)
        n = int(round(q / 100.0 * len(members)))
        keep.append(members[np.argsort(rho_k[members], kind="stable")[:n]])
    return np.sort(np.concatenate(keep))


def orientation_shares(theta: np.ndarray, n_bins: int = 8) -> np.ndarray:
    """Fraction of the points in each orientation bin (bins centred on k pi / n_bins)."""
    counts = np.bincount(orientation_bins(theta, n_bins), minlength=n_bins)
    return counts / max(int(counts.sum()), 1)
