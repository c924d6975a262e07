"""Held-out NLL (nats per patch) of the patch priors on the validation split of train400, in common units.

Patches: --n random 6x6 patches of the 40 validation images (seeded). Two units:
  - mean-free: -log p of the 35 coordinates of the patch in an orthonormal basis of the mean-free
    patches (patchreg.priors.mean_free_basis). The chart mixtures model exactly this; for the GMM
    (mean removed, 36-dim with a floored constant direction) it is the exact marginal of those
    coordinates, N(B^T mu_k, B^T Sigma_k B) per component.
  - full patch: -log p of the raw 36 pixel values. The flow (PatchNR) models this; the mean-free
    models get a 1-D density of the DC coordinate (patch mean * 6), a 16-component Gaussian mixture
    fitted on training-split patches, assuming independence of DC and structure.
Chart mixtures are scored exactly (all charts) and with the selector's top 2 (what the prior uses).

    python bench/patch_nll_table.py --gmm pretrained:gmm --flow pretrained:flow \
        --charts pretrained:charts [more chart checkpoints] --unscaled --out bench/results/patch_nll.md
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patchreg.data import PatchSampler, load_train400  # noqa: E402
from patchreg.ops.gmm import gmm_log_prob  # noqa: E402
from patchreg.priors import GMM, PatchCharts, PatchFlow, mean_free_basis  # noqa: E402
from patchreg.priors.chart_prior import chart_patch_log_prob  # noqa: E402


def resolve(spec):
    from patchreg.pretrained import resolve_checkpoint

    return resolve_checkpoint(spec)


def gmm_mean_free_log_prob(gmm: GMM, coords: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Exact marginal log-density of the mean-free coordinates under the (mean-removed) GMM."""
    cov = basis.T @ gmm.covariances @ basis  # (K, n, n)
    mu = gmm.means @ basis
    chol = torch.linalg.cholesky(cov)
    eye = torch.eye(cov.shape[-1], dtype=torch.float64).expand_as(cov)
    prec_chol = torch.linalg.solve_triangular(chol, eye, upper=False).transpose(1, 2)
    n = cov.shape[-1]
    log_const = gmm.weights.log() - 0.5 * n * math.log(2 * math.pi) - torch.diagonal(chol, dim1=1, dim2=2).log().sum(-1)
    comp = gmm_log_prob(coords.contiguous(), prec_chol.contiguous(), log_const, mu.contiguous())
    return torch.logsumexp(comp, dim=1)


class DCDensity:
    """1-D Gaussian mixture of the DC coordinate u = sum(patch) / sqrt(d)."""

    def __init__(self, u_train: np.ndarray, components: int = 16, seed: int = 0):
        from sklearn.mixture import GaussianMixture

        self.gm = GaussianMixture(components, random_state=seed).fit(u_train[:, None])

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.gm.score_samples(u.numpy()[:, None]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gmm", default="pretrained:gmm")
    ap.add_argument("--flow", default="pretrained:flow")
    ap.add_argument("--charts", nargs="*", default=["pretrained:charts"])
    ap.add_argument("--unscaled", action="store_true",
                    help="also score each chart model without its contrast scales (the trained charts alone)")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/patch_nll.md")
    args = ap.parse_args(argv)
    p = 6
    val = PatchSampler(load_train400("validation"), p, 4096, seed=args.seed, dtype=torch.float64).sample(args.n)
    train = PatchSampler(load_train400("train"), p, 4096, seed=args.seed + 1, dtype=torch.float64).sample(100_000)
    basis = mean_free_basis(p * p)
    coords = val @ basis
    dc = DCDensity((train.sum(1) / p).numpy())
    dc_lp = dc.log_prob(val.sum(1) / p)
    rows = []

    def add(name, mean_free, full, seconds, note=""):
        rows.append(dict(model=name, mean_free=None if mean_free is None else float(-mean_free.mean()),
                         full=None if full is None else float(-full.mean()), seconds=seconds, note=note))

    if args.gmm:
        gmm = GMM.load(resolve(args.gmm))
        start = time.perf_counter()
        lp = gmm_mean_free_log_prob(gmm, coords, basis)
        add(f"GMM K={gmm.n_components} (EPLL)", lp, lp + dc_lp, time.perf_counter() - start,
            f"{len(gmm.history)} EM iterations")
    if args.flow:
        flow = PatchFlow.load(resolve(args.flow))
        start = time.perf_counter()
        with torch.no_grad():
            lp = torch.cat([flow.log_prob(c.float()).double() for c in val.split(4096)])
        add("PatchNR flow", None, lp, time.perf_counter() - start, "raw patches")
    models = []
    for spec in args.charts:
        model = PatchCharts.load(resolve(spec))
        models.append((f"({Path(str(resolve(spec))).name})", model))
        if args.unscaled and model.scales.numel() > 1:
            # the same trained charts without the contrast scale mixture: scale 1 with the charts' own weights
            bare = PatchCharts.load(resolve(spec))
            log_alpha = bare.mixture.log_alpha.detach()[:, None]
            bare.scales = torch.ones(1, dtype=bare.scales.dtype)
            bare.scale_log_alpha = log_alpha.masked_fill(log_alpha < math.log(1e-10), -math.inf)
            models.append((f"({Path(str(resolve(spec))).name}, trained charts only, no contrast scales)", bare))
    for label, model in models:
        m = model.mixture
        cfg = m.config
        name = f"charts {cfg['family']}:{cfg['architecture']} K={m.n_charts} d={m.latent_dim} {label}"
        start = time.perf_counter()
        exact = torch.cat([chart_patch_log_prob(model, c.float(), None, compute_grad=False)[0].double()
                           for c in coords.split(4096)])
        add(name + ", all charts", exact, exact + dc_lp, time.perf_counter() - start)
        if model.has_selector:
            start = time.perf_counter()
            top = torch.cat([chart_patch_log_prob(model, c.float(), 2, compute_grad=False)[0].double()
                             for c in coords.split(4096)])
            add(name + ", top 2 charts", top, top + dc_lp, time.perf_counter() - start)
    lines = ["# Held-out NLL of the patch priors (nats per 6x6 patch, lower is better)", "",
             f"Command: `python bench/patch_nll_table.py --gmm {shlex.quote(args.gmm)} --flow {shlex.quote(args.flow)} "
             f"--charts {' '.join(args.charts)} "
             f"--n {args.n} --seed {args.seed}{' --unscaled' if args.unscaled else ''}`", "",
             f"{args.n} random patches of the 40 validation images of train400 (seed {args.seed}). 'mean-free': the 35 "
             "coordinates without the patch mean; 'full patch': all 36 pixels (mean-free models plus a 1-D DC density "
             f"fitted on training patches, DC NLL alone {float(-dc_lp.mean()):.2f}).", "",
             "| model | mean-free NLL | full-patch NLL | eval s | note |", "|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines += [f"| {r['model']} | {fmt(r['mean_free'])} | {fmt(r['full'])} | {r['seconds']:.1f} | {r['note']} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
