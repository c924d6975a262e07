"""The lazy witness complex: its entry-time matrix against a direct loop, its bounds, and known
topologies read through it (the Klein bottle model on a 3x3 grid must come out as the Klein bottle)."""

import numpy as np
import pytest

from patchreg.topology.models import KNOWN_BETTI, sample_model
from patchreg.topology.persistence import read_betti
from patchreg.topology.verdict import name_topology
from patchreg.topology.witness import lazy_witness_matrix, witness_barcodes


def _direct(landmarks, witnesses, nu):
    d = np.linalg.norm(landmarks[:, None] - witnesses[None], axis=2)
    m = np.zeros(len(witnesses)) if nu == 0 else np.sort(d, axis=0)[nu - 1]
    L = len(landmarks)
    out = np.zeros((L, L))
    for a in range(L):
        for b in range(L):
            if a != b:
                out[a, b] = np.min(np.maximum(d[a], d[b]) - m)
    return out


@pytest.mark.parametrize("nu", [0, 1, 2])
def test_entry_times_match_a_direct_loop(nu):
    rng = np.random.default_rng(nu)
    landmarks, witnesses = rng.normal(size=(7, 3)), rng.normal(size=(300, 3))
    got = lazy_witness_matrix(landmarks, witnesses, nu=nu, block=64)  # several witness blocks
    np.testing.assert_allclose(got, _direct(landmarks, witnesses, nu), rtol=0, atol=1e-12)
    assert np.all(got >= 0) and np.allclose(got, got.T) and np.all(np.diag(got) == 0)


def test_landmarks_witnessing_themselves_bound_edges_by_their_distance():
    # nu = 0, each landmark is a witness: w = a gives max(0, d(a, b)), so E <= d(a, b), and E >= d(a, b) / 2.
    points = np.random.default_rng(3).normal(size=(20, 4))
    entry = lazy_witness_matrix(points, points, nu=0)
    dist = np.linalg.norm(points[:, None] - points[None], axis=2)
    assert np.all(entry <= dist + 1e-12) and np.all(entry >= dist / 2 - 1e-12)


@pytest.mark.parametrize("bad, match", [
    (dict(nu=3), "nu must be 0, 1 or 2"),
    (dict(landmarks=np.zeros((1, 3))), "at least 2 landmarks"),
    (dict(witnesses=np.zeros((5, 2))), "same dim"),
])
def test_bad_input_is_named(bad, match):
    args = dict(landmarks=np.zeros((4, 3)), witnesses=np.ones((5, 3)), nu=1) | bad
    with pytest.raises(ValueError, match=match):
        lazy_witness_matrix(**args)


@pytest.mark.parametrize("name, noise", [("klein", 0.0), ("klein", 0.02), ("torus", 0.0), ("projective-plane", 0.0)])
def test_witness_complex_names_the_model(name, noise):
    points, truth = sample_model(name, 8000, seed=1, patch_size=3, noise=noise)
    barcodes, landmarks = witness_barcodes(points, 50, seed=1)
    reading = read_betti(barcodes)
    assert len(landmarks) == 50 and barcodes.extra["n_witnesses"] == 8000
    assert reading["reliable"], reading
    assert (reading["betti"]["Z2"], reading["betti"]["Z3"]) == (KNOWN_BETTI[truth]["Z2"], KNOWN_BETTI[truth]["Z3"])
    assert name_topology(reading["betti"]["Z2"], reading["betti"]["Z3"]) == truth
