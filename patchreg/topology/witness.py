"""Lazy witness complexes (de Silva and Carlsson 2004): persistent homology of a few landmarks
that uses every point of a dense cloud as a witness, the complex of Carlsson et al. 2008.

A Rips complex on L landmarks sees only the landmarks: it forgets how densely the space between
them is filled, so a sparse set of landmarks on a surface closes (or misses) 2-cells by chance.
The lazy witness complex lets the whole cloud vote: with D[a, w] the distance from landmark a to
witness w and m_w the distance from w to its nu-th nearest landmark (m_w = 0 for nu = 0), the edge
[a, b] enters at

    E[a, b] = min over witnesses w of  max(D[a, w], D[b, w]) - m_w,

and higher simplices enter when all their edges have (a flag complex). So the filtration is the
Rips filtration of the matrix E, and ripser computes its barcodes over Z/2 and Z/3. E >= 0 for
nu <= 2 (the larger of two landmark distances is at least the nu-th smallest), vertices are born
at 0. nu = 1 is the choice of de Silva and Carlsson's experiments.
"""

from __future__ import annotations

import numpy as np
import torch

from .landmarks import maxmin_landmarks
from .persistence import FIELDS, Barcodes

__all__ = ["lazy_witness_matrix", "witness_barcodes"]


@torch.no_grad()
def lazy_witness_matrix(landmarks: np.ndarray, witnesses: np.ndarray, nu: int = 1, block: int = 16384) -> np.ndarray:
    """The (L, L) matrix E of edge entry times of the lazy witness complex (module docstring), float64."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    witnesses = np.asarray(witnesses, dtype=np.float64)
    if landmarks.ndim != 2 or witnesses.ndim != 2 or landmarks.shape[1] != witnesses.shape[1]:
        raise ValueError(f"landmarks and witnesses must be (n, dim) with the same dim, got {landmarks.shape} "
                         f"and {witnesses.shape}")
    if nu not in (0, 1, 2):
        raise ValueError(f"nu must be 0, 1 or 2, got {nu}")
    if len(landmarks) < 2 or len(witnesses) < 1:
        raise ValueError(f"need at least 2 landmarks and 1 witness, got {len(landmarks)} and {len(witnesses)}")
    lm = torch.from_numpy(landmarks)
    entry = torch.full((len(lm), len(lm)), float("inf"), dtype=torch.float64)
    for start in range(0, len(witnesses), block):
        w = torch.from_numpy(witnesses[start : start + block])
        d = torch.cdist(lm, w)  # (L, B) in float64: entry times are compared to each other, keep them exact
        m = torch.zeros(d.shape[1], dtype=d.dtype) if nu == 0 else torch.kthvalue(d, nu, dim=0).values
        for a in range(len(lm)):
            times = (torch.maximum(d[a][None], d) - m).amin(dim=1)
            torch.minimum(entry[a], times, out=entry[a])
    entry = torch.minimum(entry, entry.T)
    entry.fill_diagonal_(0.0)
    return entry.clamp_min(0.0).numpy()


def witness_barcodes(points: np.ndarray, n_landmarks: int, seed: int = 0, nu: int = 1, maxdim: int = 2,
                     coeffs=FIELDS, witnesses: np.ndarray | None = None) -> tuple[Barcodes, np.ndarray]:
    """Barcodes of the lazy witness complex on maxmin landmarks of `points`, witnessed by `witnesses`
    (all of `points` when None). Returns (barcodes, landmark indices into points)."""
    from ripser import ripser

    points = np.asarray(points, dtype=np.float64)
    if maxdim not in (0, 1, 2):
        raise ValueError(f"maxdim must be 0, 1 or 2, got {maxdim}")
    landmarks, radius = maxmin_landmarks(points, n_landmarks, seed)
    entry = lazy_witness_matrix(points[landmarks], points if witnesses is None else witnesses, nu)
    diagrams = {int(c): ripser(entry, maxdim=maxdim, coeff=int(c), distance_matrix=True)["dgms"] for c in coeffs}
    return Barcodes(diagrams, len(landmarks), radius, extra={"complex": f"lazy witness, nu={nu}",
                                                             "n_witnesses": len(points if witnesses is None else witnesses)}), landmarks
