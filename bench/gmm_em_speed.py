"""EM statistics of the EPLL GMM: three ways from the E-step's log-densities to the sufficient statistics.

An EM iteration of `GMM.fit` is the fused log-density of every patch under every component (the E-step)
and the float64 sufficient statistics sum_n r_nk, sum_n r_nk x_n, sum_n r_nk x_n x_n^T. The three paths:

- dense (until 2026-12-07): the float64 softmax of all n x K log-densities, then one dense product of the
  responsibilities with the upper triangle of every patch's outer product; about 7x the E-step for K 200, 8x8.
- sparse (2026-12-07): the same softmax, then `_Statistics.add`: pairs with r_nk <= RESP_FLOOR (1e-12) dropped,
  each component's kept pairs summed as one (sqrt(r) x)^T (sqrt(r) x) product.
- candidates (2026-12-07, later; the training path now): `_Statistics.add_log_densities` picks the pairs that can
  pass the floor in the log-densities' own dtype and does the softmax, the floor test and the sums in float64 on
  those only (about 22 of 200 per 8x8 patch), so no dense n x K float64 array is made.

This bench times the three on the same real patches (train400's training split, the training path's float32
E-step), side by side in alternating rounds, and compares the M-steps they lead to, so the speed-ups and what the
floor changes come from one run.

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


PATHS = ("dense", "sparse", "candidates")


def _softmax_add(stats: _Statistics, x: torch.Tensor, comp: torch.Tensor) -> None:
    comp = comp.to(torch.float64)
    loglik = torch.logsumexp(comp, dim=1)
    stats.add(x, torch.exp(comp - loglik[:, None]), float(loglik.sum()))


def statistics_pass(gmm: GMM, batches: list, path: str, resp_floor: float = RESP_FLOOR) -> tuple:
    """One E-step over the batches by `path`: (stats, seconds in the log-density, seconds from the log-densities to
    the statistics, pairs above RESP_FLOOR per patch)."""
    K, d = gmm.n_components, gmm.dim
    stats = (DenseUpperStatistics if path == "dense" else _Statistics).zeros(K, d, "cpu", resp_floor=resp_floor)
    t_e = t_add = 0.0
    kept = 0
    params = gmm.component_params(dtype=batches[0].dtype)
    for batch in batches:
        x = gmm._prepare(batch)
        start = time.perf_counter()
        comp = gmm_log_prob(x.contiguous(), *params)
        mid = time.perf_counter()
        if path == "candidates":
            stats.add_log_densities(x.to(torch.float64), comp)
        else:
            _softmax_add(stats, x.to(torch.float64), comp)
        t_e, t_add = t_e + mid - start, t_add + time.perf_counter() - mid
        kept += int((torch.softmax(comp.to(torch.float64), dim=1) > RESP_FLOOR).sum())  # outside the timed parts
    return stats, t_e, t_add, kept / sum(b.shape[0] for b in batches)


def m_step(gmm: GMM, stats: _Statistics) -> dict:
    """The M-step's parameters from `stats` (on a copy of gmm)."""
    copy = GMM(gmm.n_components, gmm.patch_size, remove_mean=gmm.remove_mean)
    copy.load_state_dict(gmm.state_dict())
    copy._m_step(stats, floor=gmm.hyperparameters.get("covariance_floor", 1e-6))
    return {"weights": copy.weights, "means": copy.means, "covariances": copy.covariances}


def measure(spec: str, n: int, batch: int, rounds: int, seed: int, images) -> dict:
    gmm = GMM.load(resolve(spec))
    patches = PatchSampler(images, gmm.patch_size, 4096, seed=seed).sample(n)
    batches = list(patches.split(batch))
    times = {name: [] for name in PATHS}
    e_times = []
    for r in range(rounds):  # rotate the order, so a load change on the machine hits every path
        for name in PATHS[r % 3:] + PATHS[:r % 3]:
            _, t_e, t_add, _ = statistics_pass(gmm, batches, name)
            times[name].append(t_add)
            e_times.append(t_e)
    exact, _, _, _ = statistics_pass(gmm, batches, "dense", resp_floor=0.0)
    results = {name: statistics_pass(gmm, batches, name) for name in ("sparse", "candidates")}
    kept = results["candidates"][3]
    reference = m_step(gmm, exact)
    rel = {}
    for name, (stats, *_) in results.items():
        got = m_step(gmm, stats)
        rel[name] = {k: float((reference[k] - got[k]).abs().max() / reference[k].abs().max()) for k in got}
    e = statistics.median(e_times)
    stats_s = {name: statistics.median(times[name]) for name in PATHS}
    return dict(checkpoint=spec, patch_size=gmm.patch_size, components=gmm.n_components, patches=n, batch=batch,
                rounds=rounds, e_step_s=e, stats_s=stats_s,
                stats_speedup={"dense": stats_s["dense"] / stats_s["candidates"],
                               "sparse": stats_s["sparse"] / stats_s["candidates"]},
                iteration_speedup={"dense": (e + stats_s["dense"]) / (e + stats_s["candidates"]),
                                   "sparse": (e + stats_s["sparse"]) / (e + stats_s["candidates"])},
                pairs_kept_per_patch=kept,
                mean_loglik={"exact": exact.mean_loglik, **{k: v[0].mean_loglik for k, v in results.items()}},
                m_step_max_rel_diff=rel,
                per_2m_iteration_s={name: (e + stats_s[name]) * 2e6 / n for name in PATHS})


def write_report(out: Path, rows: list, command: str, threads: int) -> None:
    lines = ["# EM statistics: dense product, sparse pairs, candidate pairs", "",
             f"Command: `{command}` ({threads} thread(s)). Patches: random patches of train400's training split, "
             "float32 as `patchreg train gmm` streams them; times are medians of rounds over the same batches, the "
             "three paths in rotating order; the responsibility floor is "
             f"{RESP_FLOOR:g}. E-step: the fused log-density; statistics: from the log-densities to the sums "
             "(the float64 softmax included for dense and sparse).", "",
             "| checkpoint | p | K | patches | E-step s | statistics s: dense / sparse / candidates | candidates x "
             "(vs dense, vs sparse) | iteration x (vs dense, vs sparse) | pairs kept / patch | s per 2M-patch "
             "iteration: dense / sparse / candidates | M-step max rel. diff to the exact sums (weights, means, "
             "covariances): sparse; candidates |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        st, it, m = r["stats_s"], r["per_2m_iteration_s"], r["m_step_max_rel_diff"]
        diffs = "; ".join(", ".join(f"{m[p][k]:.1e}" for k in ("weights", "means", "covariances"))
                          for p in ("sparse", "candidates"))
        lines.append(f"| {r['checkpoint']} | {r['patch_size']} | {r['components']} | {r['patches']} | "
                     f"{r['e_step_s']:.2f} | {st['dense']:.2f} / {st['sparse']:.2f} / {st['candidates']:.2f} | "
                     f"{r['stats_speedup']['dense']:.1f}, {r['stats_speedup']['sparse']:.1f} | "
                     f"{r['iteration_speedup']['dense']:.1f}, {r['iteration_speedup']['sparse']:.1f} | "
                     f"{r['pairs_kept_per_patch']:.1f} | {it['dense']:.0f} / {it['sparse']:.0f} / "
                     f"{it['candidates']:.0f} | {diffs} |")
    lines += ["", "The exact sums keep every pair (dense, floor 0). The M-step differences are what the floor and the "
              "reordered float64 sums change, relative to each parameter's largest entry; the mean log-likelihoods of "
              "the pass agree to the last digits (JSON)."]
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
