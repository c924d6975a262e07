"""Naming a topology from Betti numbers (and orientability), and the threshold-stability scan.

Names: circle, several circles, three-circle model, sphere, torus, Klein bottle, projective plane,
other. Betti numbers over Z/2 and Z/3 together separate torus from Klein bottle and sphere from
projective plane; orientability (from the nerve) must agree when it is known, else "other".
"""

from __future__ import annotations

__all__ = ["name_topology", "stable_verdict"]

_SURFACES = {
    ((1, 0, 1), (1, 0, 1)): ("sphere", True),
    ((1, 2, 1), (1, 2, 1)): ("torus", True),
    ((1, 2, 1), (1, 1, 0)): ("Klein bottle", False),
    ((1, 1, 1), (1, 0, 0)): ("projective plane", False),
}


def name_topology(betti_z2, betti_z3, orientable: bool | None = None) -> str:
    betti_z2, betti_z3 = tuple(int(b) for b in betti_z2), tuple(int(b) for b in betti_z3)
    if (betti_z2, betti_z3) in _SURFACES:
        name, expected = _SURFACES[(betti_z2, betti_z3)]
        if orientable is None or orientable == expected:
            return name
        word = "orientable" if orientable else "non-orientable"
        return f"other (Betti numbers of a {name}, but the charts are {word})"
    if betti_z2 == betti_z3 and betti_z2[2] == 0:
        b0, b1, _ = betti_z2
        if b0 == 1 and b1 == 1:
            return "circle"
        if b0 > 1 and b1 == b0:
            return "several circles"
        if b0 == 1 and b1 == 5:
            return "three-circle model"
    return f"other (Betti Z/2 {betti_z2}, Z/3 {betti_z3})"


def stable_verdict(names: list[str], min_run: int = 3) -> dict:
    """The name held over the longest run of consecutive thresholds (first such run on ties).

    The scan covers a fixed range of thresholds for every dataset; a verdict held on fewer than
    min_run consecutive thresholds is reported as unstable.
    """
    if not names:
        raise ValueError("names is empty")
    best, best_len, start = names[0], 0, 0
    for i in range(1, len(names) + 1):
        if i == len(names) or names[i] != names[start]:
            if i - start > best_len:
                best, best_len, best_start = names[start], i - start, start
            start = i
    stable = best_len >= min_run
    return {
        "name": best if stable else f"other (unstable: no verdict held on {min_run} consecutive thresholds)",
        "run_length": best_len,
        "run_start": best_start,
        "stable": stable,
    }
