"""Nerve homology over Z/2 and Z/3 on known triangulations, orientability, naming, stability."""

import numpy as np
import pytest

from patchreg.topology.cover import ChartCover
from patchreg.topology.nerve import nerve_homology, nerve_simplices, orientability, transition_signs
from patchreg.topology.verdict import name_topology, stable_verdict

TETRA_BOUNDARY = [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)]
RP2_6 = [(0, 1, 2), (0, 2, 3), (0, 3, 4), (0, 4, 5), (0, 1, 5), (1, 2, 4), (2, 3, 5), (1, 3, 4), (2, 4, 5), (1, 3, 5)]
TORUS_7 = [tuple(sorted(((i, (i + 1) % 7, (i + 3) % 7)))) for i in range(7)] + [
    tuple(sorted((i, (i + 2) % 7, (i + 3) % 7))) for i in range(7)
]


def _membership(facets, n_vertices):
    """One witness point per facet, lying in exactly the facet's charts."""
    member = np.zeros((len(facets), n_vertices), bool)
    for i, facet in enumerate(facets):
        member[i, list(facet)] = True
    return member


@pytest.mark.parametrize(
    "facets, n, z2, z3",
    [
        (TETRA_BOUNDARY, 4, [1, 0, 1], [1, 0, 1]),
        (RP2_6, 6, [1, 1, 1], [1, 0, 0]),
        (TORUS_7, 7, [1, 2, 1], [1, 2, 1]),
        ([(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5)], 6, [2, 2, 0], [2, 2, 0]),
    ],
)
def test_nerve_homology_of_known_complexes(facets, n, z2, z3):
    simplices = nerve_simplices(_membership(facets, n))
    betti2, f_vector = nerve_homology(simplices, 2)
    betti3, _ = nerve_homology(simplices, 3)
    assert betti2 == z2 and betti3 == z3
    assert sum((-1) ** d * f for d, f in enumerate(f_vector)) == z2[0] - z2[1] + z2[2]


def test_min_support_drops_thinly_witnessed_simplices():
    member = _membership([(0, 1), (0, 1), (1, 2)], 3)
    assert (1, 2) not in nerve_simplices(member, min_support=2)
    assert nerve_simplices(member, min_support=2)[(0, 1)] == 2


def test_orientability_is_a_signed_two_colouring():
    cycle = [(0, 1), (1, 2), (0, 2)]
    flip_once = {e: (s, 1.0) for e, s in zip(cycle, (1, 1, -1))}
    flip_twice = {e: (s, 1.0) for e, s in zip(cycle, (-1, -1, 1))}
    assert orientability(3, flip_once)["orientable"] is False
    good = orientability(3, flip_twice)
    assert good["orientable"] is True and good["conflicting_edges"] == 0
    # Unreliable edges (nearly orthogonal charts) carry no sign: orientability undetermined.
    assert orientability(3, {e: (s, 0.01) for e, (s, _) in flip_once.items()})["orientable"] is None


def test_transition_sign_of_a_reflected_chart():
    frame = np.array([[1.0, 0], [0, 1], [0, 0]])
    reflected = frame[:, ::-1]  # same plane, opposite orientation
    cover = ChartCover(scores=np.zeros((3, 3)), tangents=np.stack([frame, frame, reflected]), dim=2)
    member = np.ones((3, 3), bool)
    signs = transition_signs(cover, member, [(0, 1), (0, 2)])
    assert signs[(0, 1)] == (1, pytest.approx(1.0)) and signs[(0, 2)] == (-1, pytest.approx(1.0))


@pytest.mark.parametrize(
    "z2, z3, orientable, name",
    [
        ((1, 1, 0), (1, 1, 0), None, "circle"),
        ((3, 3, 0), (3, 3, 0), None, "several circles"),
        ((1, 5, 0), (1, 5, 0), None, "three-circle model"),
        ((1, 0, 1), (1, 0, 1), True, "sphere"),
        ((1, 2, 1), (1, 2, 1), True, "torus"),
        ((1, 2, 1), (1, 1, 0), False, "Klein bottle"),
        ((1, 1, 1), (1, 0, 0), None, "projective plane"),
    ],
)
def test_names(z2, z3, orientable, name):
    assert name_topology(z2, z3, orientable) == name


def test_names_flag_contradictions_and_unknowns():
    assert name_topology((1, 2, 1), (1, 2, 1), False).startswith("other (Betti numbers of a torus")
    assert name_topology((1, 3, 0), (1, 3, 0)).startswith("other")


def test_stable_verdict_takes_the_longest_run():
    names = ["a", "b", "b", "c", "c", "c", "b"]
    assert stable_verdict(names) == {"name": "c", "run_length": 3, "run_start": 3, "stable": True}
    assert not stable_verdict(["a", "b", "a"])["stable"]
