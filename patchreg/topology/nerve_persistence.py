"""Persistent homology of a chart nerve: the nerve read over every overlap threshold at once.

The nerve at threshold tau (nerve.py) holds a simplex when one data point lies in all its charts,
i.e. when for some point x every chart k of the simplex has score[x, k] <= tau (a point always
lies in its best chart, score 0 there). So the simplex enters the nerve at

    entry(sigma) = min over points x of max over k in sigma of score[x, k],

and as tau grows the nerves form a filtration (a face never enters after its coface). Its barcodes
over Z/2 and Z/3 are read by the long-bar rule of persistence.py, in units of tau (chart radii):
the same rule as the landmark complexes, instead of asking one Betti vector to hold on several
consecutive thresholds (pipeline.chart_verdict). Thick, noisy data give a nerve whose homology
at any single threshold carries a few short-lived loops; those are short bars here.

Only the max_charts best charts of each point enter (MAX_CHARTS = 16 by default), so the filtration
is exact up to T, the smallest score of any point's first chart left out: beyond T simplices would
be missing and spurious voids appear. The filtration is read up to T (simplices entering later are
dropped; every simplex when no chart was left out) and classes still alive there die at T (a loop
of charts that never fills lives that long); H0's infinite bar stays infinite. T must lie past the
death of a surface's free loops: where it does not, the loops' bars end at T over both fields alike
and a torsion class cannot show.
Orientability is read on the nerve at tau* = the latest birth of a long bar over Z/2: the most
local threshold at which every long class is born.

cut="first-loop-death" reads only the classes born before the first long loop dies (drop_late_classes).
Past that threshold the charts have outgrown one of the surface's loops, and the nerve describes the
thickened embedding, not the surface: filling a Klein bottle's torsion loop t (2t bounds the fundamental
chain c over Z) by a 2-cell D makes 2D - c an integer 2-cycle, a void over Z/3 born at the very threshold
where the loop dies over Z/2, and that void can outlive half the longest bar. Dropping late-born classes
never shortens a bar; a cover with no long loop (a sphere) is read whole.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from .cover import ChartCover
from .nerve import MAX_SIMPLEX_SIZE, nerve_summary
from .persistence import FIELDS, Barcodes, BettiRule, read_betti, top_lengths
from .verdict import name_topology

__all__ = ["CUTS", "MAX_CHARTS", "drop_late_classes", "nerve_entry_values", "nerve_barcodes", "persistent_chart_verdict",
           "persistent_chart_verdicts"]

CUTS = ("none", "first-loop-death")

# A point's best charts that enter. 8 ended the filtration on the rotated natural-image cores before the
# Klein bottle's free loops died, so both fields' H1 bars ran to the end and the torsion did not show;
# 16 and 24 gave the same reading there (bench/RESULTS.md, issue 12).
MAX_CHARTS = 16


def _ranked_scores(cover: ChartCover, max_charts: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(order (N, m) of each point's best charts, their scores, T: where the truncation starts to matter)."""
    if max_charts < 1:
        raise ValueError(f"max_charts must be >= 1, got {max_charts}")
    scores = np.array(cover.scores, dtype=np.float64)
    scores[np.arange(len(scores)), np.argmin(scores, axis=1)] = 0.0  # every point lies in its best chart
    m = min(int(max_charts), cover.n_charts)
    order = np.argsort(scores, axis=1, kind="stable")
    exact_until = float(np.take_along_axis(scores, order[:, m : m + 1], axis=1).min()) if m < cover.n_charts else np.inf
    order = order[:, :m]
    return order, np.take_along_axis(scores, order, axis=1), exact_until


def nerve_entry_values(cover: ChartCover, max_charts: int = MAX_CHARTS) -> dict[tuple, float]:
    """{simplex (sorted chart tuple, up to MAX_SIMPLEX_SIZE charts): entry threshold} (module docstring)."""
    return _entry_values_and_end(cover, max_charts)[0]


def _entry_values_and_end(cover: ChartCover, max_charts: int) -> tuple[dict[tuple, float], float]:
    """(entry values, T: the threshold up to which they are exact)."""
    order, ranked, exact_until = _ranked_scores(cover, max_charts)
    m, n_charts = order.shape[1], cover.n_charts
    entry: dict[tuple, float] = {}
    for size in range(1, min(MAX_SIMPLEX_SIZE, m) + 1):
        # one int64 code per simplex (its sorted charts in base K) keeps the reduction 1-D and small
        codes, values = [np.empty(0, dtype=np.int64)], [np.empty(0)]
        pending = 0
        for combo in combinations(range(m), size):
            cols = list(combo)
            keys = np.sort(order[:, cols], axis=1).astype(np.int64)
            code = keys[:, 0].copy()
            for c in range(1, size):
                code = code * n_charts + keys[:, c]
            codes.append(code)
            values.append(ranked[:, cols].max(axis=1))  # ranked is ascending: the max is the last column
            pending += len(code)
            if pending > _REDUCE_EVERY:
                code_all, value_all = _min_per_code(np.concatenate(codes), np.concatenate(values))
                codes, values, pending = [code_all], [value_all], 0
        codes, values = _min_per_code(np.concatenate(codes), np.concatenate(values))
        for code, value in zip(codes.tolist(), values.tolist()):
            if np.isfinite(value):
                entry[_decode(code, size, n_charts)] = value
    return entry, exact_until


_REDUCE_EVERY = 4_000_000  # rows of (code, value) held before they are reduced to one per simplex


def _min_per_code(codes: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct code once, with its smallest value."""
    order = np.lexsort((values, codes))
    codes, values = codes[order], values[order]
    first = np.ones(len(codes), dtype=bool)
    first[1:] = codes[1:] != codes[:-1]
    return codes[first], values[first]


def _decode(code: int, size: int, n_charts: int) -> tuple:
    charts = []
    for _ in range(size):
        code, c = divmod(code, n_charts)
        charts.append(c)
    return tuple(reversed(charts))


def nerve_barcodes(cover: ChartCover, max_charts: int = MAX_CHARTS, coeffs=FIELDS) -> Barcodes:
    """Barcodes (dimensions 0-2) of the nerve filtration, per coefficient field."""
    import gudhi

    entry, exact_until = _entry_values_and_end(cover, max_charts)
    last = exact_until if np.isfinite(exact_until) else max(entry.values())
    entry = {simplex: value for simplex, value in entry.items() if value <= last}
    diagrams = {}
    for coeff in coeffs:
        tree = gudhi.SimplexTree()
        for simplex, value in entry.items():
            tree.insert(list(simplex), filtration=value)
        tree.make_filtration_non_decreasing()
        tree.compute_persistence(homology_coeff_field=int(coeff), persistence_dim_max=True)
        dgms = []
        for dim in range(3):
            bars = np.asarray(tree.persistence_intervals_in_dimension(dim), dtype=np.float64).reshape(-1, 2)
            if dim > 0:
                bars[~np.isfinite(bars[:, 1]), 1] = last  # classes alive at the end (module docstring)
            dgms.append(bars)
        diagrams[int(coeff)] = dgms
    return Barcodes(diagrams, cover.n_charts, float("nan"), extra={"complex": "chart nerve filtration",
                                                                   "max_charts": int(max_charts), "end": last,
                                                                   "n_simplices": len(entry)})


def drop_late_classes(barcodes: Barcodes, rule: BettiRule = BettiRule()) -> tuple[Barcodes, float]:
    """(barcodes without the classes born at or after the first death of a long Z/2 loop, that threshold).

    Long by the rule on the whole filtration. No long Z/2 loop: the barcodes unchanged and an infinite cut.
    H0 is kept whole; H1 and H2 bars born before the cut keep their full length (module docstring)."""
    loops = barcodes.diagrams[2][1]
    long_loops = loops[loops[:, 1] - loops[:, 0] >= read_betti(barcodes, rule)["threshold"]]
    if not len(long_loops):
        return barcodes, float("inf")
    cut = float(long_loops[:, 1].min())
    diagrams = {coeff: [dgms[0]] + [dgm[dgm[:, 0] < cut] for dgm in dgms[1:]] for coeff, dgms in barcodes.diagrams.items()}
    return Barcodes(diagrams, barcodes.n_landmarks, barcodes.covering_radius, extra={**barcodes.extra, "cut": cut}), cut


def persistent_chart_verdict(cover: ChartCover, points=None, max_charts: int = MAX_CHARTS, rule: BettiRule = BettiRule(),
                             cut: str = "first-loop-death", barcodes: Barcodes | None = None) -> dict:
    """The chart nerve's verdict from its barcodes (module docstring), with orientability at tau*.

    cut: "first-loop-death" (default) reads only the classes born before the first long loop dies
    (drop_late_classes), "none" the whole filtration. The cut read the Klein bottle in 3 of 3 learned covers of a
    sampled Klein bottle where the whole filtration read it in 0 of 3, and every other sampled surface as well
    (bench/results/topology_learned_cover_cut.md). barcodes: nerve_barcodes(cover, max_charts) when already computed
    (to read one filtration both ways)."""
    if cut not in CUTS:
        raise ValueError(f"cut must be one of {CUTS}, got {cut!r}")
    if barcodes is None:
        barcodes = nerve_barcodes(cover, max_charts)
    cut_at = float("inf")
    if cut == "first-loop-death":
        barcodes, cut_at = drop_late_classes(barcodes, rule)
    reading = read_betti(barcodes, rule)
    z2, z3 = reading["betti"]["Z2"], reading["betti"]["Z3"]
    long_births = [b for dgm in barcodes.diagrams[2][1:] for b, d in dgm if d - b >= reading["threshold"]]
    tau_star = max(long_births) if long_births else 0.0
    orientable = None
    if cover.dim == 2:
        orientable = nerve_summary(cover, tau_star, points=points).get("orientability", {}).get("orientable")
    named = name_topology(z2, z3, orientable)
    return {
        "name": named if reading["reliable"] else f"other (no clear gap between long and short bars: {named})",
        "named": named,
        **reading,
        "orientable": orientable,
        "tau_star": float(tau_star),
        "cut": cut,
        "cut_at": cut_at,
        "top_bars": top_lengths(barcodes),
        "barcodes": barcodes,
    }


def persistent_chart_verdicts(cover: ChartCover, points=None, max_charts: int = MAX_CHARTS,
                              rule: BettiRule = BettiRule()) -> dict[str, dict]:
    """{cut: persistent_chart_verdict} for every cut of CUTS, from one computation of the barcodes."""
    barcodes = nerve_barcodes(cover, max_charts)
    return {cut: persistent_chart_verdict(cover, points, max_charts, rule, cut=cut, barcodes=barcodes) for cut in CUTS}
