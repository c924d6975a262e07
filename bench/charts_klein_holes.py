"""Where a chart mixture leaves the Klein bottle uncovered (issue 15).

Trains one FIF mixture on the Klein-bottle toy (5000 points, K charts, lr 2e-3, the toy defaults otherwise,
TrainConfig fields overridden by --config JSON), then scores 5000 of its samples against 40,000 area-uniform
reference points with known parameters (u, v): coverage at eps 0.1 (and that of 5000 true samples), the
model's over the true sample count within eps per 8 x 8 bin of (u, v), the uncovered points per bin and
their (u, v), the chart usage; and, for the first uncovered points, every chart's |E_k(x)| (1 = the edge of
the latent prior's support) and reconstruction error |D_k(E_k(x)) - x|.

    OMP_NUM_THREADS=1 .venv/bin/python bench/charts_klein_holes.py --seed 1 --steps 3000 --charts 12 \\
        [--config '{"overlap_scale": 2.0}']
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchreg.charts import build_mixture, train_mixture  # noqa: E402
from patchreg.charts.datasets import load_dataset  # noqa: E402
from patchreg.charts.training import toy_train_config  # noqa: E402

EPS, BINS = 0.1, 8


def reference_points(manifold, n: int, seed: int):
    """(u, v, points): n area-uniform points of the Klein bottle with their parameters."""
    rng = np.random.default_rng(seed)
    v = np.empty(0)
    while len(v) < n:
        c = rng.uniform(0, 2 * math.pi, 2 * n)
        v = np.concatenate([v, c[rng.uniform(0, manifold.major + manifold.minor, 2 * n) < manifold._area_weight(c)]])
    v, u = v[:n], rng.uniform(0, 2 * math.pi, n)
    return u, v, manifold.param(u, v)


def per_bin(u, v, values, reduce):
    ub = np.minimum((u / (2 * math.pi) * BINS).astype(int), BINS - 1)
    vb = np.minimum((v / (2 * math.pi) * BINS).astype(int), BINS - 1)
    return np.array([[reduce(values[(ub == i) & (vb == j)]) for j in range(BINS)] for i in range(BINS)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--charts", type=int, default=12)
    ap.add_argument("--config", default="{}", help="TrainConfig overrides as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = load_dataset("toy:klein_bottle", 5000, 5000, args.seed)
    m = data.manifold
    torch.manual_seed(args.seed)
    model = build_mixture("fif", args.charts, 4, 2, width=64, n_blocks=2, sigma=0.05)
    config = toy_train_config(args.steps, manifold="klein_bottle", seed=args.seed, **{"lr": 2e-3, **json.loads(args.config)})
    print(config, flush=True)
    start = time.time()
    train_mixture(model, data.train.float(), config, progress=False)
    print(f"trained in {time.time() - start:.0f} s", flush=True)
    model = model.double()
    with torch.no_grad():
        x, labels = model.sample(5000, torch.Generator().manual_seed(args.seed))
    u, v, ref = reference_points(m, 40_000, 123)
    ref_t = torch.from_numpy(ref)
    d_model = torch.cdist(ref_t, x)
    d_true = torch.cdist(ref_t, torch.from_numpy(m.sample(5000, args.seed + 30_000)))
    uncovered = (d_model.min(1).values > EPS).numpy()
    print(f"coverage: model {1 - uncovered.mean():.4f}, true samples {(d_true.min(1).values <= EPS).double().mean():.4f}; "
          f"{uncovered.sum()} uncovered")
    np.set_printoptions(precision=2, suppress=True, linewidth=150)
    count_model, count_true = (d_model <= EPS).sum(1).numpy(), (d_true <= EPS).sum(1).numpy()
    print("model / true sample count within eps, per (u row, v column) bin\n",
          per_bin(u, v, count_model, np.mean) / per_bin(u, v, count_true, np.mean))
    print("uncovered points per bin\n", per_bin(u, v, uncovered, np.sum).astype(int))
    print("uncovered (u, v):", np.round(np.stack([u[uncovered], v[uncovered]], 1), 2)[:40].tolist())
    print("chart usage", torch.bincount(labels, minlength=args.charts).tolist())
    holes = torch.from_numpy(ref[uncovered][:8])
    with torch.no_grad():
        for k, chart in enumerate(model.charts):
            z = chart.encode(holes)
            err = (chart.decode(z) - holes).norm(dim=1)
            print(f"chart {k}: |z| / error at the first uncovered points:",
                  " ".join(f"{a:.2f}/{b:.3f}" for a, b in zip(z.norm(dim=1).tolist(), err.tolist())))


if __name__ == "__main__":
    main()
