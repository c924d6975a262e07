"""Training curves of a chart mixture: held-out metrics against steps, recorded while it trains.

`heldout_curve_callback(dataset, config, every)` is a `train_mixture` callback: every `every` steps and at the last
step it finalizes a copy of the model on the training points (alpha and sigma as train_mixture sets them at its end,
so the last row is the trained model) and adds evaluate_mixture's held-out metrics to that step's history record,
which the checkpoint keeps (a resumed run's curve continues). `curve_rows(history)` takes those records back out and
`curve_markdown(rows)` writes them as a table: loss, distance to the true manifold (toy data), coverage, sliced W2,
the held-out NLL and its two parts (patchreg.charts.metrics.heldout_nll_parts). A metric still falling at the end of
a curve is not converged; on noise-free toys the distance and the NLL's normal part have no floor set by the data and
fall long after the rest has levelled off (the sphere's until about 24,000 steps; issue 15, bench/RESULTS.md).
"""

from __future__ import annotations

import copy

from .. import _checks
from .metrics import evaluate_mixture, surface_excess
from .training import TrainConfig, finalize, finalize_points

def heldout_curve_callback(dataset, config: TrainConfig, every: int, n: int = 2000, eps: float = 0.1, seed: int = 0,
                           sink=None):
    """A train_mixture callback that evaluates a finalized copy every `every` steps (see the module docstring).

    `dataset`: a patchreg.charts.datasets.Dataset (its train points are the model's training data, its test points
    the held-out ones); `sink(record)`, if given, is called with each evaluated record (e.g. to print or append it)."""
    import torch

    _checks.check_int("every", every, 1)
    _checks.check_int("n", n, 1)
    if len(dataset.test) < n:
        raise ValueError(f"n must be <= the held-out points ({len(dataset.test)}), got {n}")
    final_points = finalize_points(dataset.train.float(), config, torch.float32)

    def callback(step, model, record):
        if step % every and step != config.total_steps:
            return
        trained = copy.deepcopy(model)
        finalize(trained, final_points.to(trained.log_alpha.dtype), config.train_sigma)
        metrics = evaluate_mixture(trained.double(), dataset, n=n, eps=eps, seed=seed)
        record.update(metrics)
        record.update(lr=config.learning_rate(step - 1), sigma=float(trained.sigma.max()))
        if sink is not None:
            sink(record)

    return callback


def curve_rows(history: list[dict]) -> list[dict]:
    """The evaluated records of a training history (those the callback filled)."""
    return [h for h in history if "heldout_nll" in h]


def _cell(row: dict, key: str, digits: int) -> str:
    value = row.get(key)
    return "-" if value is None else f"{value:.{digits}f}"


def curve_markdown(rows: list[dict], title: str = "Training curve") -> str:
    """The rows as a markdown table (columns a row lacks, e.g. distances of data without a true manifold, show -)."""
    lines = [f"## {title}", "",
             "Held-out metrics of a finalized copy of the model at each evaluated step (patchreg.charts.curves). "
             "NLL on the manifold - log area: the held-out NLL's part on the manifold less the least it can be on an "
             "area-uniform toy (about the KL divergence from the true density on the manifold to the model's); normal "
             "part: the off-manifold Gaussian part, without floor on noise-free data.", "",
             "| step | phase | lr | loss | dist mean / diam | dist p95 / diam | coverage (floor) | sliced W2 (floor) | "
             "held-out NLL | on the manifold - log area | normal part | sigma | train s |",
             "|---" * 13 + "|"]
    for r in rows:
        excess = surface_excess(r)
        surface = "-" if excess is None else f"{excess:.3f}"
        lines.append(f"| {r['step']} | {r['phase']} | {r.get('lr', float('nan')):.2g} | {r['loss']:.4g} | "
                     f"{_cell(r, 'dist_mean_rel', 5)} | {_cell(r, 'dist_p95_rel', 5)} | {_cell(r, 'coverage', 4)} "
                     f"({_cell(r, 'coverage_floor', 4)}) | {_cell(r, 'sliced_w2', 4)} ({_cell(r, 'sliced_w2_floor', 4)}) | "
                     f"{r['heldout_nll']:.3f} | {surface} | {_cell(r, 'heldout_nll_normal', 3)} | {_cell(r, 'sigma', 4)} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"
