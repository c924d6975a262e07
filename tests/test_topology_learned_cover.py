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
