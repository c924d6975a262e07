"""EM statistics of the EPLL GMM: the grouped sparse second moments against the dense product they replace.

An EM iteration of `GMM.fit` is the fused log-density of every patch under every component (the E-step)
and the float64 sufficient statistics sum_n r_nk x_n x_n^T. Until 2026-12-07 the statistics were one dense
product resp^T (n x K) @ outer (n x d(d+1)/2): for K = 200 and 8x8 patches about 7x the E-step's time.
Now `_Statistics.add` drops responsibilities <= RESP_FLOOR (1e-12) and sums each component's kept pairs as
one (sqrt(r) x)^T (sqrt(r) x) product. This bench times both on the same real patches (train400's training
split, the training path's float32 E-step), side by side in alternating rounds, and compares the M-steps
they lead to, so the speed-up and what the floor changes come from one run.

    python bench/gmm_em_speed.py --gmm bench/results/gmm_k200_p8_it26_twinfree.safetensors pretrained:gmm \
        --out bench/results/gmm_em_speed
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patch_nll_table import resolve  # noqa: E402

from patchreg.data import PatchSampler, load_train400  # noqa: E402
from patchreg.ops.gmm import gmm_log_prob  # noqa: E402
from patchreg.priors import GMM  # noqa: E402
from patchreg.priors.gmm import RESP_FLOOR, _Statistics  # noqa: E402


class DenseUpperStatistics(_Statistics):
    """The accumulation used until 2026-12-07: every (patch, component) pair, the upper triangle of the
    outer products in one dense float64 product."""

    def add(self, x, resp, loglik_sum):
        d = x.shape[1]
        rows, cols = torch.triu_indices(d, d)
        self.count += x.shape[0]
        self.loglik_sum += loglik_sum
        self.resp_sum += resp.sum(dim=0)
        self.first += resp.T @ x
        upper = resp.T @ (x[:, rows] * x[:, cols])
        self.second[:, rows, cols] += upper
        self.second[:, cols, rows] += torch.where(rows == cols, 0.0, 1.0).to(upper) * upper


def statistics_pass(gmm: GMM, batches: list, stats: _Statistics) -> tuple[_Statistics, float, float, float]:
    """One E-step over the batches into `stats`: (stats, seconds in the log-density, seconds in add, pairs above
    RESP_FLOOR per patch)."""
    t_e = t_add = 0.0
    kept = 0
    params = gmm.component_params(dtype=batches[0].dtype)
    for batch in batches:
        x = gmm._prepare(batch)
        start = time.perf_counter()
        comp = gmm_log_prob(x.contiguous(), *params).to(torch.float64)
        loglik = torch.logsumexp(comp, dim=1)
        resp = torch.exp(comp - loglik[:, None])
        mid = time.perf_counter()
        stats.add(x.to(torch.float64), resp, float(loglik.sum()))
        t_e, t_add = t_e + mid - start, t_add + time.perf_counter() - mid
        kept += int((resp > RESP_FLOOR).sum())  # outside the timed parts
    return stats, t_e, t_add, kept / sum(b.shape[0] for b in batches)


def m_step(gmm: GMM, stats: _Statistics) -> dict:
    """The M-step's parameters from `stats` (on a copy of gmm)."""
    copy = GMM(gmm.n_components, gmm.patch_size, remove_mean=gmm.remove_mean)
    copy.load_state_dict(gmm.state_dict())
    copy._m_step(stats, floor=gmm.hyperparameters.get("covariance_floor", 1e-6))
    return {"weights": copy.weights, "means": copy.means, "covariances": copy.covariances}


def measure(spec: str, n: int, batch: int, rounds: int, seed: int, images) -> dict:
    gmm = GMM.load(resolve(spec))
    K, d = gmm.n_components, gmm.dim
    patches = PatchSampler(images, gmm.patch_size, 4096, seed=seed).sample(n)
    batches = list(patches.split(batch))
    times = {"dense": [], "sparse": []}
    e_times = []
    for r in range(rounds):  # alternate, so a load change on the machine hits both
        for name in (("dense", "sparse") if r % 2 == 0 else ("sparse", "dense")):
            cls = DenseUpperStatistics if name == "dense" else _Statistics
            stats, t_e, t_add, _ = statistics_pass(gmm, batches, cls.zeros(K, d, "cpu"))
            times[name].append(t_add)
            e_times.append(t_e)
    dense, _, _, _ = statistics_pass(gmm, batches, DenseUpperStatistics.zeros(K, d, "cpu", resp_floor=0.0))
    sparse, _, _, kept = statistics_pass(gmm, batches, _Statistics.zeros(K, d, "cpu"))
    a, b = m_step(gmm, dense), m_step(gmm, sparse)
    rel = {k: float((a[k] - b[k]).abs().max() / a[k].abs().max()) for k in a}
    e = statistics.median(e_times)
    t_dense, t_sparse = statistics.median(times["dense"]), statistics.median(times["sparse"])
    return dict(checkpoint=spec, patch_size=gmm.patch_size, components=K, patches=n, batch=batch,
                rounds=rounds, e_step_s=e, dense_stats_s=t_dense, sparse_stats_s=t_sparse,
                stats_speedup=t_dense / t_sparse, iteration_speedup=(e + t_dense) / (e + t_sparse),
                pairs_kept_per_patch=kept, mean_loglik_dense=dense.mean_loglik, mean_loglik_sparse=sparse.mean_loglik,
                m_step_max_rel_diff=rel, per_2m_iteration_s={"dense": (e + t_dense) * 2e6 / n,
                                                             "sparse": (e + t_sparse) * 2e6 / n})


def write_report(out: Path, rows: list, command: str, threads: int) -> None:
    lines = ["# EM statistics: grouped sparse second moments against the dense product", "",
             f"Command: `{command}` ({threads} thread(s)). Patches: random patches of train400's training split, "
             "float32 as `patchreg train gmm` streams them; times are medians of alternating rounds over the same "
             f"batches; the responsibility floor is {RESP_FLOOR:g}.", "",
             "| checkpoint | p | K | patches | E-step s | statistics s, dense | statistics s, sparse | statistics x | "
             "iteration x | pairs kept / patch | s per 2M-patch iteration, dense -> sparse | M-step max rel. diff "
             "(weights, means, covariances) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["m_step_max_rel_diff"]
        it = r["per_2m_iteration_s"]
        lines.append(f"| {r['checkpoint']} | {r['patch_size']} | {r['components']} | {r['patches']} | "
                     f"{r['e_step_s']:.2f} | {r['dense_stats_s']:.2f} | {r['sparse_stats_s']:.2f} | "
                     f"{r['stats_speedup']:.1f} | {r['iteration_speedup']:.1f} | {r['pairs_kept_per_patch']:.1f} | "
                     f"{it['dense']:.0f} -> {it['sparse']:.0f} | {m['weights']:.1e}, {m['means']:.1e}, "
                     f"{m['covariances']:.1e} |")
    lines += ["", "The mean log-likelihood of the pass is the same in both (one E-step); the M-step differences are "
              "what dropping the responsibilities at most the floor changes, relative to each parameter's largest "
              "entry."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gmm", nargs="+", default=["pretrained:gmm"], help="GMM checkpoints (paths or pretrained:NAME)")
    ap.add_argument("--n", type=int, default=65536, help="training patches per pass")
    ap.add_argument("--batch", type=int, default=8192, help="patches per batch (the CLI's default)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/gmm_em_speed")
    args = ap.parse_args(argv)
    for name in ("n", "batch", "rounds", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    images = load_train400("train")
    rows = [measure(spec, args.n, args.batch, args.rounds, args.seed, images) for spec in args.gmm]
    for r in rows:
        print(json.dumps(r))
    command = "python bench/gmm_em_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(Path(args.out), rows, command, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
