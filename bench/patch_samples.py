"""Samples of the three shipped patch priors next to real validation patches, as one figure.

Rows: real 6x6 patches of the validation split of train400; the GMM (EPLL); the PatchNR flow; the
chart prior (pair (k, s) ~ alpha_{k,s}, z ~ the compact latent prior, patch = s D_k(z), on the
manifold, plus the off-manifold noise s sigma_k in the second chart row). Mean-free models get
the real patches' mean 0.5; every patch is shown with its own gray range (contrast varies by
orders of magnitude), so the figure compares structure, not contrast.

    python bench/patch_samples.py --seed 0 --out bench/results/patch_samples.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patchreg.data import PatchSampler, load_train400  # noqa: E402
from patchreg.pretrained import resolve_checkpoint  # noqa: E402
from patchreg.priors import GMM, PatchCharts, PatchFlow  # noqa: E402


def gmm_samples(gmm: GMM, n: int, gen: torch.Generator) -> torch.Tensor:
    k = torch.multinomial(gmm.weights, n, replacement=True, generator=gen)
    chol = torch.linalg.cholesky(gmm.covariances)
    eps = torch.randn(n, gmm.dim, generator=gen, dtype=torch.float64)
    return gmm.means[k] + (chol[k] @ eps[:, :, None])[..., 0]


@torch.no_grad()
def chart_samples(model: PatchCharts, n: int, gen: torch.Generator, noise: bool) -> torch.Tensor:
    pairs = model.pairs()
    weights = model.scale_log_alpha[pairs[:, 0], pairs[:, 1]].exp().double()
    pick = torch.multinomial(weights, n, replacement=True, generator=gen)
    z = model.mixture.prior.sample(n, gen, torch.float32)
    out = torch.empty(n, model.dim - 1)
    for p in pick.unique().tolist():
        rows = (pick == p).nonzero()[:, 0]
        k, j = pairs[p].tolist()
        s = float(model.scales[j])
        c = model.mixture.charts[k].decode(z[rows])
        if noise:
            c = c + float(model.mixture.sigma[k]) * torch.randn(c.shape, generator=gen)
        out[rows] = s * c
    return model.patches_from_coords(out).double()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/patch_samples.png")
    args = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    real = PatchSampler(load_train400("validation"), 6, 256, seed=args.seed, dtype=torch.float64).sample(args.n)
    rows = [("validation patches", real)]
    rows.append(("GMM (EPLL)", gmm_samples(GMM.load(resolve_checkpoint("pretrained:gmm")), args.n, gen)))
    flow = PatchFlow.load(resolve_checkpoint("pretrained:flow"))
    with torch.no_grad():
        rows.append(("PatchNR flow", flow.sample(args.n, gen).double()))
    charts = PatchCharts.load(resolve_checkpoint("pretrained:charts"))
    rows.append(("charts, on the manifold", chart_samples(charts, args.n, gen, noise=False)))
    rows.append(("charts, with sigma_k", chart_samples(charts, args.n, gen, noise=True)))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), args.n, figsize=(args.n * 0.7, len(rows) * 0.85))
    for r, (title, patches) in enumerate(rows):
        for i in range(args.n):
            ax = axes[r, i]
            ax.imshow(patches[i].reshape(6, 6).numpy(), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
