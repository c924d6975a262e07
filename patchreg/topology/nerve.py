"""Nerve of a chart cover: simplices, Betti numbers over Z/2 and Z/3, Euler characteristic, orientability.

A set of charts spans a simplex when at least min_support points lie in all of them (a witnessed
nerve: overlaps are judged on the data, not on the charts' extrapolations). Simplices up to
dimension 3 are kept, which is all that b0, b1, b2 need. Homology: gudhi SimplexTree with
homology_coeff_field = 2 and 3.

Orientability: on each edge (j, k) of the nerve the sign of the transition Jacobian determinant
is evaluated on the overlap (see transition_signs: restricted to the tangent of the overlap
points when they are given, else pinv(J_k) J_j). The cover is
orientable iff signs s_k = +-1 exist with s_j s_k = sign(j, k) on every edge (a 2-colouring of the
signed overlap graph: spanning-tree propagation, then a check of the remaining edges). Edges
whose mean |det| is below min_alignment (0.2: charts whose tangent planes are nearly orthogonal)
give no reliable sign and are left out (counted); if the remaining edges do not link the charts,
orientability is undetermined (None). Large thresholds make non-local overlaps (charts far apart
on the manifold, e.g. with opposite tangent orientation), so the verdict reads orientability at
the smallest threshold of the stable homology plateau (verdict.py / pipeline.py).
"""

from __future__ import annotations

from collections import Counter, deque
from itertools import combinations

import numpy as np

from .cover import ChartCover

__all__ = ["nerve_simplices", "nerve_homology", "transition_signs", "orientability", "nerve_summary"]

MAX_SIMPLEX_SIZE = 4  # vertices of a 3-simplex


def nerve_simplices(member: np.ndarray, min_support: int = 1) -> dict[tuple, int]:
    """{simplex (sorted chart tuple): number of points in all its charts}, for witnessed simplices."""
    support: Counter = Counter()
    for row in member:
        charts = tuple(np.flatnonzero(row))
        for size in range(1, min(len(charts), MAX_SIMPLEX_SIZE) + 1):
            support.update(combinations(charts, size))
    return {s: c for s, c in support.items() if c >= min_support}


def nerve_homology(simplices, coeff: int) -> tuple[list[int], list[int]]:
    """(Betti numbers b0..b2 over Z/coeff, f-vector) of the complex with these simplices."""
    import gudhi

    tree = gudhi.SimplexTree()
    for simplex in simplices:
        tree.insert(list(simplex), filtration=0.0)
    tree.compute_persistence(homology_coeff_field=coeff, persistence_dim_max=True)
    betti = list(tree.betti_numbers()) + [0, 0, 0]
    f_vector = [0] * MAX_SIMPLEX_SIZE
    for simplex, _ in tree.get_simplices():
        f_vector[len(simplex) - 1] += 1
    return betti[:3], f_vector


def _oriented_frame(jacobian: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the Jacobian's column space with the same orientation (QR, det R > 0)."""
    q, r = np.linalg.qr(jacobian)
    return q * np.sign(np.where(np.diag(r) == 0, 1.0, np.diag(r)))


def _overlap_tangent(points: np.ndarray, dim: int) -> np.ndarray | None:
    if len(points) < 2 * dim + 1:
        return None
    _, _, vt = np.linalg.svd(points - points.mean(axis=0), full_matrices=False)
    return vt[:dim].T


def transition_signs(cover: ChartCover, member: np.ndarray, edges, points=None) -> dict[tuple, tuple[int, float]]:
    """{(j, k): (sign of det of the transition Jacobian, mean |det| alignment)} per nerve edge.

    On the manifold, with T a tangent basis at an overlap point, dz_j = F_j^T T dxi and
    dz_k = F_k^T T dxi (F: oriented orthonormal frames of the decoder Jacobians), so the
    transition Jacobian is (F_k^T T)(F_j^T T)^-1 and its sign is sign det(F_k^T T) det(F_j^T T)
    whatever the orientation of T. T is the local PCA of the overlap points when `points` is
    given and the overlap holds >= 2d + 1 points; otherwise T = F_j (i.e. pinv(J_k) J_j).
    The alignment min(|det F_j^T T|, |det F_k^T T|) (product of principal-angle cosines) says
    how trustworthy the sign is.
    """
    out = {}
    for j, k in edges:
        overlap = np.flatnonzero(member[:, j] & member[:, k])
        tangent = _overlap_tangent(points[overlap], cover.dim) if points is not None else None
        dets, aligns = [], []
        sample = overlap if cover.tangents.ndim == 4 else overlap[:1]  # per-chart Jacobians: one suffices
        for i in sample:
            frame_j, frame_k = _oriented_frame(cover.tangent(i, j)), _oriented_frame(cover.tangent(i, k))
            basis = frame_j if tangent is None else tangent
            det_j, det_k = np.linalg.det(frame_j.T @ basis), np.linalg.det(frame_k.T @ basis)
            dets.append(det_j * det_k)
            aligns.append(min(abs(det_j), abs(det_k)))
        total = float(np.sum(dets))
        out[(j, k)] = (1 if total >= 0 else -1, float(np.mean(aligns)) if aligns else 0.0)
    return out


def orientability(n_charts: int, signs: dict[tuple, tuple[int, float]], min_alignment: float = 0.2) -> dict:
    """Is there s in {+-1}^K with s_j s_k = sign(j, k) on every reliable edge?"""
    reliable = {e: s for e, (s, a) in signs.items() if a >= min_alignment}
    neighbours: dict[int, list] = {k: [] for k in range(n_charts)}
    for (j, k), s in reliable.items():
        neighbours[j].append((k, s))
        neighbours[k].append((j, s))
    orientation = np.zeros(n_charts, dtype=int)
    for root in range(n_charts):
        if orientation[root]:
            continue
        orientation[root] = 1
        queue = deque([root])
        while queue:
            j = queue.popleft()
            for k, s in neighbours[j]:
                if not orientation[k]:
                    orientation[k] = orientation[j] * s
                    queue.append(k)
    conflicts = [e for e, s in reliable.items() if orientation[e[0]] * orientation[e[1]] != s]
    # Without reliable edges linking the charts of a component, a consistent orientation is vacuous.
    linked = n_components_of(n_charts, reliable) <= n_components_of(n_charts, signs)
    return {
        "orientable": (not conflicts) if linked else None,
        "linked": linked,
        "conflicting_edges": len(conflicts),
        "reliable_edges": len(reliable),
        "unreliable_edges": len(signs) - len(reliable),
        "orientation": orientation.tolist(),
    }


def n_components_of(n_vertices: int, edges) -> int:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows = [j for j, _ in edges]
    cols = [k for _, k in edges]
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_vertices, n_vertices))
    return int(connected_components(graph, directed=False)[0])


def nerve_summary(cover: ChartCover, tau: float, min_support: int = 1, min_alignment: float = 0.2, points=None) -> dict:
    """Everything the verdict needs at one overlap threshold."""
    member = cover.membership(tau)
    simplices = nerve_simplices(member, min_support)
    betti2, f_vector = nerve_homology(simplices, 2)
    betti3, _ = nerve_homology(simplices, 3)
    edges = [s for s in simplices if len(s) == 2]
    summary = {
        "tau": float(tau),
        "betti": {"Z2": tuple(betti2), "Z3": tuple(betti3)},
        "f_vector": f_vector,
        "euler_characteristic": int(betti2[0] - betti2[1] + betti2[2]),
        "euler_from_simplices": int(sum((-1) ** d * f for d, f in enumerate(f_vector))),
        "mean_charts_per_point": float(member.sum(axis=1).mean()),
        "edges": edges,
    }
    if cover.dim == 2:
        summary["orientability"] = orientability(cover.n_charts, transition_signs(cover, member, edges, points), min_alignment)
    return summary
