"""k-th neighbour distances at scale, for many k at once: the density estimates rho_k of X(k, q).

Two exact methods, picked by dimension:
- up to KDTREE_MAX_DIM coordinates (p = 3: 8), scipy's cKDTree (one query for the largest k gives
  every smaller k too);
- above, blocked brute force in float32 with torch: a block of queries against all reference
  points by one matmul (||a||^2 + ||b||^2 - 2 a.b), then torch.topk of the max(k) + 1 smallest.
  Memory is block x N floats; float32 rounding moves distances by ~1e-3 at worst on the unit
  sphere, far below the k-th neighbour distances (> 0.05) that rank the points.
`query_rows` answers only those rows of `reference` (the density of a sample, estimated against a
larger set); a query's own row is excluded (it is its own 0-th neighbour).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["KDTREE_MAX_DIM", "kth_neighbour_distances", "check_ks", "chunked_kth_neighbour_distances"]

KDTREE_MAX_DIM = 12


def check_ks(ks, n_reference: int) -> list[int]:
    ks = [int(k) for k in np.atleast_1d(ks)]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if max(ks) >= n_reference:
        raise ValueError(f"k={max(ks)} needs more than k reference points, but there are only {n_reference} points")
    return sorted(set(ks))


def kth_neighbour_distances(reference: np.ndarray, ks, query_rows=None, block: int = 1024, progress: bool = False,
                            method: str = "auto") -> tuple[np.ndarray, dict]:
    """(rho (n_queries, len(ks)) float64, info) with rho[:, j] the distance to the ks[j]-th neighbour.

    ks are sorted and deduplicated first (info["ks"] holds them). info also holds the method and seconds.
    """
    reference = np.asarray(reference)
    if reference.ndim != 2:
        raise ValueError(f"reference must be 2-D (N, dim), got shape {reference.shape}")
    ks = check_ks(ks, len(reference))
    rows = np.arange(len(reference)) if query_rows is None else np.asarray(query_rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= len(reference)):
        raise ValueError(f"query_rows must index the {len(reference)} reference points")
    if method == "auto":
        method = "kdtree" if reference.shape[1] <= KDTREE_MAX_DIM else "brute"
    if method not in ("kdtree", "brute"):
        raise ValueError(f"method must be 'auto', 'kdtree' or 'brute', got {method!r}")
    start = time.time()
    if method == "kdtree":
        rho = _kdtree(reference, rows, ks)
    else:
        rho = _brute(reference, rows, ks, block, progress)
    return rho, {"method": method, "seconds": round(time.time() - start, 2), "ks": ks,
                 "n_reference": len(reference), "n_queries": len(rows)}


def _kdtree(reference, rows, ks):
    from scipy.spatial import cKDTree

    ref = np.asarray(reference, dtype=np.float64)
    tree = cKDTree(ref)
    out = np.empty((len(rows), len(ks)))
    for start in range(0, len(rows), 20000):  # bounded memory: 20000 x (k+1) distances per call
        part = rows[start : start + 20000]
        dist, _ = tree.query(ref[part], k=[k + 1 for k in ks])  # k+1: the point itself comes first
        out[start : start + len(part)] = dist
    return out


@torch.no_grad()
def _brute(reference, rows, ks, block, progress, ref_chunk: int = 65536):
    """Blocked brute force: `block` queries against `ref_chunk` reference rows at a time, into buffers that are
    reused (a fresh (block, N) matrix per block spent most of its time in page faults on millions of points),
    keeping a running top (k_max + 1) per query."""
    from tqdm import tqdm

    ref = torch.from_numpy(np.array(reference, dtype=np.float32))  # a writable copy (memmaps are read-only)
    sq = (ref * ref).sum(dim=1)
    k_max = max(ks)
    index = torch.tensor(ks)  # sorted ascending values: index k is the k-th neighbour, 0 is the point itself
    out = np.empty((len(rows), len(ks)))
    chunk = min(int(ref_chunk), len(ref))
    buf = torch.empty(min(block, max(len(rows), 1)), chunk)
    for start in tqdm(range(0, len(rows), block), disable=not progress, leave=False, desc="kNN"):
        part = torch.from_numpy(rows[start : start + block])
        q, n = ref[part], len(part)
        best = torch.full((n, k_max + 1), float("inf"))
        for c0 in range(0, len(ref), chunk):
            c1 = min(c0 + chunk, len(ref))
            d2 = buf[:n, : c1 - c0]
            torch.mm(q, ref[c0:c1].T, out=d2)
            d2.mul_(-2.0).add_(sq[c0:c1][None]).add_(sq[part, None])
            mine = (part >= c0) & (part < c1)
            if mine.any():  # the point itself stays first even with rounding
                d2[torch.nonzero(mine).flatten(), part[mine] - c0] = -1.0
            kk = min(k_max + 1, c1 - c0)
            local = torch.topk(d2, kk, dim=1, largest=False, sorted=False).values
            best = torch.topk(torch.cat([best, local], dim=1), k_max + 1, dim=1, largest=False, sorted=True).values
        out[start : start + n] = best[:, index].clamp_min(0.0).sqrt().double().numpy()
    return out


def chunked_kth_neighbour_distances(reference: np.ndarray, ks, n_rows: int, cache_prefix, chunk: int = 100_000,
                                    progress: bool = False) -> np.ndarray:
    """rho (n_rows, len(ks)) of the first n_rows rows of `reference` against all of it, computed in chunks of
    `chunk` rows, each saved as <cache_prefix>_c<i>.npy (atomic); chunks already saved are read, so a stopped
    run resumes and a longer run reuses a shorter one's work (days of kNN on millions of points)."""
    from tqdm import tqdm

    ks = check_ks(ks, len(reference))
    n_rows = int(n_rows)
    if not 0 < n_rows <= len(reference):
        raise ValueError(f"n_rows must be in [1, {len(reference)}], got {n_rows}")
    Path(cache_prefix).parent.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in tqdm(range(-(-n_rows // chunk)), disable=not progress, leave=False, desc="kNN chunks"):
        path = Path(f"{cache_prefix}_c{i:03d}.npy")
        rows = np.arange(i * chunk, min((i + 1) * chunk, len(reference)))
        if path.exists():
            part = np.load(path)
        else:
            part, _ = kth_neighbour_distances(reference, ks, query_rows=rows)
            tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npy")
            np.save(tmp, part)
            os.replace(tmp, path)
        if part.shape != (len(rows), len(ks)):
            raise ValueError(f"cached chunk {path} has shape {part.shape}, expected {(len(rows), len(ks))}: "
                             "another reference, ks or chunk size; delete the cache")
        parts.append(part)
    return np.concatenate(parts)[:n_rows]
