"""Persistent homology of landmark Rips complexes (ripser) and the rule that reads Betti numbers.

Betti rule (documented, the same for every dataset). Diagrams are computed over Z/2 and Z/3.
Let L* be the longest finite bar in dimensions >= 1 over both fields. A bar in dimension >= 1 is
long iff its length >= max(ratio * L*, floor) (ratio 0.5, floor 0.1 in the units of the points:
chord length on the unit sphere). In dimension 0 the infinite bar counts, and a finite bar
counts iff its length >= max(ratio * L*, h0_factor * median H0 bar) with h0_factor 3: maxmin
landmarks include outliers whose H0 bars are a few landmark spacings long, while separate
components (two circles) die much later. b_i = the number of long bars. The rule reports its
gap: (shortest long bar) / (longest short bar) in dimensions >= 1; a gap below min_gap (1.5)
means no clear separation between signal and noise, and the reading is flagged unreliable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["BettiRule", "Barcodes", "compute_barcodes", "read_betti", "plot_barcodes"]

FIELDS = (2, 3)


@dataclass(frozen=True)
class BettiRule:
    ratio: float = 0.5
    floor: float = 0.1
    h0_factor: float = 3.0
    min_gap: float = 1.5


@dataclass
class Barcodes:
    """Persistence diagrams per coefficient field: diagrams[coeff][dim] = (n_bars, 2) birth/death."""

    diagrams: dict[int, list[np.ndarray]]
    n_landmarks: int
    covering_radius: float
    extra: dict = field(default_factory=dict)


def compute_barcodes(points: np.ndarray, maxdim: int = 2, coeffs=FIELDS, covering_radius: float = float("nan")):
    """Vietoris-Rips barcodes of `points` (already landmarks) for each coefficient field."""
    from ripser import ripser

    points = np.asarray(points, dtype=np.float64)
    if len(points) < 2:
        raise ValueError(f"persistent homology needs at least 2 points, got {len(points)}")
    if maxdim not in (0, 1, 2):
        raise ValueError(f"maxdim must be 0, 1 or 2, got {maxdim}")
    diagrams = {int(c): ripser(points, maxdim=maxdim, coeff=int(c))["dgms"] for c in coeffs}
    return Barcodes(diagrams, len(points), covering_radius)


def _lengths(diagram: np.ndarray) -> np.ndarray:
    return diagram[:, 1] - diagram[:, 0]


def read_betti(barcodes: Barcodes, rule: BettiRule = BettiRule()) -> dict:
    """Betti numbers per field by the documented rule, with the threshold and gap as evidence."""
    finite = [
        length
        for dgms in barcodes.diagrams.values()
        for dgm in dgms[1:]
        for length in _lengths(dgm)
        if np.isfinite(length)
    ]
    longest = max(finite, default=0.0)
    threshold = max(rule.ratio * longest, rule.floor)
    betti, long_bars = {}, []
    short_bars = []
    for coeff, dgms in barcodes.diagrams.items():
        h0 = _lengths(dgms[0])
        h0_finite = h0[np.isfinite(h0)]
        h0_threshold = max(threshold, rule.h0_factor * float(np.median(h0_finite)) if len(h0_finite) else 0.0)
        counts = [int(np.sum(~np.isfinite(h0)) + np.sum(h0_finite >= h0_threshold))]
        for dgm in dgms[1:]:
            lengths = _lengths(dgm)
            counts.append(int(np.sum(lengths >= threshold)))
            long_bars += list(lengths[lengths >= threshold])
            short_bars += list(lengths[lengths < threshold])
        betti[f"Z{coeff}"] = tuple(counts)
    gap = (min(long_bars) / max(short_bars)) if long_bars and short_bars else float("inf")
    return {
        "betti": betti,
        "threshold": threshold,
        "longest_bar": longest,
        "gap": gap,
        "reliable": bool(gap >= rule.min_gap and longest >= rule.floor),
        "rule": rule.__dict__,
    }


def top_lengths(barcodes: Barcodes, n: int = 8) -> dict:
    """The n longest bar lengths per field and dimension (for reports)."""
    out = {}
    for coeff, dgms in barcodes.diagrams.items():
        for dim, dgm in enumerate(dgms):
            lengths = _lengths(dgm)
            lengths = np.sort(lengths[np.isfinite(lengths)])[::-1][:n]
            out[f"Z{coeff} H{dim}"] = [round(float(x), 4) for x in lengths]
    return out


def plot_barcodes(barcodes: Barcodes, path, title: str = "", threshold: float | None = None, max_bars: int = 40):
    """One panel per (field, dimension): the longest max_bars bars, long ones (Betti rule) in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coeffs = sorted(barcodes.diagrams)
    ndim = len(barcodes.diagrams[coeffs[0]])
    fig, axes = plt.subplots(len(coeffs), ndim, figsize=(4 * ndim, 2.6 * len(coeffs)), squeeze=False)
    for row, coeff in enumerate(coeffs):
        for dim, dgm in enumerate(barcodes.diagrams[coeff]):
            ax = axes[row, dim]
            lengths = _lengths(dgm)
            top = dgm[np.argsort(-np.nan_to_num(lengths, posinf=1e9))][:max_bars]
            cap = np.nanmax(np.where(np.isfinite(dgm[:, 1]), dgm[:, 1], np.nan)) if len(dgm) else 1.0
            cap = 1.05 * (cap if np.isfinite(cap) else 1.0)
            ends = np.where(np.isfinite(top[:, 1]), top[:, 1], cap)
            long = (top[:, 1] - top[:, 0] >= threshold) & (dim > 0) if threshold is not None else np.zeros(len(top), bool)
            ax.hlines(np.arange(len(top)), top[:, 0], ends, colors=np.where(long, "C3", "C0"), linewidths=np.where(long, 2.5, 1.5))
            ax.set_title(f"H{dim}, Z/{coeff} ({len(dgm)} bars)", fontsize=9)
            ax.set_yticks([])
            ax.set_xlabel("Rips scale")
    fig.suptitle(title + (f"  (red: long bars, length >= {threshold:.3f})" if threshold else ""), fontsize=10)
    fig.subplots_adjust(hspace=0.6, wspace=0.25)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
