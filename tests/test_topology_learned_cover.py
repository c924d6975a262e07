"""The nerve of a learned chart mixture (patchreg.topology.learned_cover) names toy topologies."""

from __future__ import annotations

import numpy as np
import pytest

from patchreg.charts import TrainConfig, build_mixture
from patchreg.data.toy_manifolds import Circle, TwoCircles
from patchreg.topology.learned_cover import cover_from_chart_mixture, fit_chart_mixture_cover
from patchreg.topology.pipeline import chart_verdict


def _config(seed):
    return TrainConfig(pretrain_steps=60, mixture_steps=80, overlap_steps=30, batch_size=128, lr=3e-3,
                       seed_points=1000, log_every=50, seed=seed)


@pytest.mark.parametrize("manifold,name,betti", [(Circle(), "circle", (1, 1, 0)), (TwoCircles(), "several circles", (2, 2, 0))])
def test_learned_cover_nerve_names_the_curve(manifold, name, betti):
    points = manifold.sample(1200, 0)
    cover = fit_chart_mixture_cover(points, 8, 1, seed=0, config=_config(0), width=16)
    assert cover.scores.shape == (1200, 8) and cover.tangents.shape == (1200, 8, 2, 1)
    verdict = chart_verdict(cover, points=points)
    assert verdict["stable"] and verdict["name"] == name, verdict["name"]
    assert verdict["betti"]["Z2"] == betti


def test_learned_cover_scores_and_errors():
    model = build_mixture("fif", 3, 2, 1, width=8, n_blocks=1)
    points = Circle().sample(200, 1)
    cover = cover_from_chart_mixture(model, points)
    assert np.isfinite(cover.scores).all() and (cover.scores >= 0).all()
    assert cover.membership(0.0).any(axis=1).all()  # every point lies in its best chart
    with pytest.raises(ValueError, match=r"points must have shape \(N, 2\)"):
        cover_from_chart_mixture(model, np.zeros((5, 3)))


def test_ownership_overlaps_are_the_owned_cells_thickened():
    from patchreg.topology.learned_cover import _distance_to_owned

    import torch

    from patchreg.charts import train_mixture

    points = Circle().sample(1200, 0)
    torch.manual_seed(0)
    model = build_mixture("fif", 8, 2, 1, width=16)
    train_mixture(model, torch.as_tensor(points, dtype=torch.float32), _config(0), progress=False)
    cover = cover_from_chart_mixture(model, points)
    owned = cover_from_chart_mixture(model, points, overlap="ownership")
    own = np.argmin(owned.scores, axis=1)
    assert np.all(owned.scores[np.arange(len(points)), own] == 0.0)  # a point always lies in its own cell
    others = np.ones_like(owned.scores, dtype=bool)
    others[np.arange(len(points)), own] = False
    assert np.all(owned.scores[others] >= cover.scores[others] - 1e-12)  # both conditions, the larger score
    d = _distance_to_owned(np.array([[0.0, 0.0], [3.0, 0.0]]), np.array([0, 1]), 3)
    assert d[0].tolist() == [0.0, 3.0, np.inf] and d[1].tolist() == [3.0, 0.0, np.inf]
    verdict = chart_verdict(owned, points=points)
    assert verdict["stable"] and verdict["name"] == "circle", verdict["name"]
    with pytest.raises(ValueError, match="overlap must be one of"):
        cover_from_chart_mixture(build_mixture("fif", 3, 2, 1, width=8, n_blocks=1), points, overlap="nearest")


def test_learned_cover_fitter_passes_the_overlap_and_refuses_a_bad_one_before_training():
    from patchreg.topology.learned_cover import learned_cover_fitter

    with pytest.raises(ValueError, match="overlap must be one of"):
        learned_cover_fitter(overlap="nearest")
    fit = learned_cover_fitter(steps=30, width=8, overlap="ownership")
    assert "overlaps by ownership" in fit.description
    cover = fit(Circle().sample(600, seed=0), 4, 1, 0)
    assert cover.description.endswith("overlaps by ownership")  # the cover was read by the overlap asked for
