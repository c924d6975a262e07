"""End to end: points on the patch sphere -> density core -> homology two ways -> verdicts.

1. Persistent homology: maxmin landmarks of the core, Rips barcodes over Z/2 and Z/3 (or the lazy
   witness complex of witness.py with every core point a witness), Betti numbers by the rule of
   persistence.py, named by verdict.name_topology.
2. Chart nerve: a chart cover (local PCA by default; any ChartCover plugs in) is scanned over a
   fixed range of overlap thresholds tau (DEFAULT_TAUS, the same for every dataset, stopping
   early once points lie in more than MAX_CHARTS_PER_POINT charts on average: the nerve then
   only grows in cost). The verdict is the name held on the longest run of consecutive
   thresholds (stability); orientability is read at the first threshold of that run, the most
   local cover with the stable homology.
   K ("auto"): a nerve can need more charts than a fit. Starting from the smallest K whose
   charts are flat (cover.choose_num_charts), K runs through CHART_COUNTS and the first K whose
   stable verdict is reproduced by the next larger K is kept: the nerve has converged in K.
   Charts are fitted on at most max_chart_points core points, by default a maxmin sample of 3000
   (chart_sample="maxmin"): density-balanced, as the witness complex's landmarks are. A random
   sample of a patch core is dominated by its dense primary and secondary circles, and charts fitted
   on it never overlap across the thin sheet between them: on the rotated natural-image cores
   their nerve read the three-circle skeleton where the maxmin sample's reads the Klein bottle
   (bench/RESULTS.md, issue 12). chart_sample="random" keeps the earlier seeded random sample
   (8000 points by default: on X(15, 30) of the level images 4000 gave thin overlaps).
"""

from __future__ import annotations

import numpy as np

from .cover import ChartCover, choose_num_charts, estimate_chart_dim, fit_local_pca_cover
from .density import check_core_parameters, density_core
from .landmarks import maxmin_landmarks
from .nerve import nerve_summary
from .nerve_persistence import CUTS, persistent_chart_verdict
from .persistence import BettiRule, compute_barcodes, read_betti, top_lengths
from .verdict import name_topology, stable_verdict
from .witness import witness_barcodes

__all__ = [
    "DEFAULT_TAUS",
    "CHART_COUNTS",
    "scan_cover",
    "chart_verdict",
    "homology_from_charts",
    "homology_from_persistence",
    "analyse_points",
    "chart_subset",
    "CHART_SAMPLES",
]

DEFAULT_TAUS = tuple(float(t) for t in np.geomspace(0.1, 3.0, 11))
MAX_CHARTS_PER_POINT = 8.0
CHART_COUNTS = (16, 32, 64, 128)


def scan_cover(cover: ChartCover, taus=DEFAULT_TAUS, min_support: int = 1, points=None) -> list[dict]:
    scan = []
    for tau in taus:
        if cover.membership(tau).sum(axis=1).mean() > MAX_CHARTS_PER_POINT:
            break
        summary = nerve_summary(cover, tau, min_support, points=points)
        summary["name_from_betti"] = name_topology(summary["betti"]["Z2"], summary["betti"]["Z3"])
        scan.append(summary)
    return scan


def chart_verdict(cover: ChartCover, taus=DEFAULT_TAUS, min_support: int = 1, points=None) -> dict:
    """Stability scan of one cover; `points` (the covered data) sharpen the orientation signs."""
    scan = scan_cover(cover, taus, min_support, points)
    if not scan:
        raise ValueError("no overlap threshold left: points lie in too many charts even at the smallest tau")
    stability = stable_verdict([s["name_from_betti"] for s in scan])
    chosen = scan[stability["run_start"]]
    orientable = chosen.get("orientability", {}).get("orientable")
    name = name_topology(chosen["betti"]["Z2"], chosen["betti"]["Z3"], orientable) if stability["stable"] else stability["name"]
    return {
        "name": name,
        "stable": stability["stable"],
        "run_length": stability["run_length"],
        "tau": chosen["tau"],
        "betti": chosen["betti"],
        "euler_characteristic": chosen["euler_characteristic"],
        "orientable": orientable,
        "chosen": chosen,
        "scan": scan,
        "cover": cover,
    }


def homology_from_charts(points, n_charts="auto", dim="auto", seed: int = 0, taus=DEFAULT_TAUS, cover_fitter=None) -> dict:
    """Chart-nerve verdict; cover_fitter(points, K, d, seed) -> ChartCover (default local PCA)."""
    fit = cover_fitter or fit_local_pca_cover
    points = np.asarray(points, dtype=np.float64)
    dim = estimate_chart_dim(points, seed=seed) if dim == "auto" else int(dim)
    if n_charts != "auto":
        result = chart_verdict(fit(points, int(n_charts), dim, seed), taus, points=points)
        return {**result, "dim": dim, "n_charts": int(n_charts), "k_selection": "given"}
    k_flat, flat_trace = choose_num_charts(points, dim, candidates=CHART_COUNTS, seed=seed)
    counts = [k for k in CHART_COUNTS if k >= k_flat and 20 * k <= len(points)] or [k_flat]
    tried = []
    for k in counts:
        result = chart_verdict(fit(points, k, dim, seed), taus, points=points)
        tried.append((k, result))
        if len(tried) >= 2 and tried[-2][1]["stable"] and tried[-2][1]["name"] == result["name"]:
            k_chosen, result = tried[-2]
            break
    else:
        k_chosen, result = tried[-1]
    return {
        **result,
        "dim": dim,
        "n_charts": k_chosen,
        "k_selection": {
            "flatness_trace": flat_trace,
            "verdict_by_k": {k: r["name"] for k, r in tried},
            "converged": len(tried) >= 2 and k_chosen != tried[-1][0],
        },
    }


COMPLEXES = ("rips", "witness")
CHART_SAMPLES = {"maxmin": 3000, "random": 8000}  # how the chart points are drawn from the core: default count


def _chart_points(chart_sample: str, max_chart_points: int | None) -> int:
    if chart_sample not in CHART_SAMPLES:
        raise ValueError(f"chart_sample must be one of {tuple(CHART_SAMPLES)}, got {chart_sample!r}")
    n = CHART_SAMPLES[chart_sample] if max_chart_points is None else max_chart_points
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"max_chart_points must be an int >= 1, got {max_chart_points!r}")
    return int(n)


def chart_subset(points: np.ndarray, chart_sample: str = "maxmin", max_chart_points: int | None = None, seed: int = 0) -> np.ndarray:
    """The points charts are fitted on (module docstring): all of them when there are few enough, else a
    maxmin (density-balanced) or seeded random sample of max_chart_points, in their original order."""
    n = _chart_points(chart_sample, max_chart_points)
    points = np.asarray(points)
    if len(points) <= n:
        return points
    if chart_sample == "maxmin":
        chosen, _ = maxmin_landmarks(points, n, seed)
    else:
        chosen = np.random.default_rng(seed).choice(len(points), n, replace=False)
    return points[np.sort(chosen)]


def homology_from_persistence(points, n_landmarks: int = 150, seed: int = 0, maxdim: int = 2, rule: BettiRule = BettiRule(),
                              complex: str = "rips") -> dict:
    """Barcodes of maxmin landmarks, read by the rule. complex: "rips" (the landmarks alone) or "witness"
    (the lazy witness complex of witness.py, every point a witness: Carlsson et al.'s complex)."""
    if complex not in COMPLEXES:
        raise ValueError(f"complex must be one of {COMPLEXES}, got {complex!r}")
    points = np.asarray(points, dtype=np.float64)
    if complex == "witness":
        barcodes, landmarks = witness_barcodes(points, n_landmarks, seed, maxdim=maxdim)
        radius = barcodes.covering_radius
    else:
        landmarks, radius = maxmin_landmarks(points, n_landmarks, seed)
        barcodes = compute_barcodes(points[landmarks], maxdim=maxdim, covering_radius=radius)
    reading = read_betti(barcodes, rule)
    name = name_topology(reading["betti"]["Z2"], reading["betti"]["Z3"])
    if not reading["reliable"]:
        name = f"other (no clear gap between long and short bars: {name})"
    return {
        "name": name,
        **reading,
        "n_landmarks": len(landmarks),
        "complex": complex,
        "covering_radius": radius,
        "top_bars": top_lengths(barcodes),
        "barcodes": barcodes,
        "landmarks": landmarks,
    }


def analyse_points(
    points,
    core=None,
    n_landmarks: int = 150,
    n_charts="auto",
    dim="auto",
    seed: int = 0,
    max_chart_points: int | None = None,
    charts: bool = True,
    cover_fitter=None,
    complex: str = "rips",
    chart_sample: str = "maxmin",
    nerve_cut: str = "first-loop-death",
) -> dict:
    """Core X(k, q) (core=(k, q) or None), then both homology readings; all evidence in a dict.
    cover_fitter(points, K, d, seed) -> ChartCover: local PCA when None (learned_cover_fitter for learned charts).
    nerve_cut: how the nerve filtration is read (nerve_persistence.CUTS)."""
    n_chart_points = _chart_points(chart_sample, max_chart_points)  # before any expensive work
    if nerve_cut not in CUTS:
        raise ValueError(f"nerve_cut must be one of {CUTS}, got {nerve_cut!r}")
    points = np.asarray(points, dtype=np.float64)
    if core is not None:
        k, q = core
        check_core_parameters(len(points), k, q)
        core_points = points[density_core(points, k, q)]
    else:
        core_points = points
    result = {"n_points": len(points), "core": None if core is None else list(core), "n_core": len(core_points)}
    result["persistence"] = homology_from_persistence(core_points, n_landmarks, seed, complex=complex)
    if charts:
        subset = chart_subset(core_points, chart_sample, n_chart_points, seed)
        result["charts"] = homology_from_charts(subset, n_charts, dim, seed, cover_fitter=cover_fitter)
        # the same cover read over every threshold at once (nerve_persistence.py), as a second reading
        result["charts"]["persistence"] = persistent_chart_verdict(result["charts"]["cover"], points=subset, cut=nerve_cut)
        result["charts"]["n_points_used"] = len(subset)
        result["charts"]["sample"] = chart_sample
        result["charts"]["cover_kind"] = getattr(cover_fitter, "description", "local PCA" if cover_fitter is None else "custom")
        result["core_points_for_charts"] = subset
    result["core_points"] = core_points
    return result
