"""How many charts a trained patch chart mixture really uses: dead charts, the largest weight, the effective number.

For each PatchCharts checkpoint: K, d, the charts whose weight alpha_k is below 1e-6 (dead: training moved all
responsibility away from them; they keep the pooled noise level), the largest alpha, the effective number of charts
exp(H(alpha)) (K when the weights are uniform, 1 when one chart holds everything), and the range of the per-chart
off-manifold noise levels sigma_k of the live charts. Reads the checkpoints only; nothing is trained or scored.

    python bench/charts_usage.py pretrained:charts CKPT ... --out bench/results/charts_usage.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from patchreg.pretrained import resolve_checkpoint  # noqa: E402
from patchreg.priors import PatchCharts  # noqa: E402

DEAD = 1e-6


def usage(model: PatchCharts) -> dict:
    alpha = torch.exp(model.mixture.log_alpha.detach().double())
    alpha = alpha / alpha.sum()
    live = alpha >= DEAD
    sigma = model.mixture.sigma.detach().double().expand(alpha.shape)[live]
    entropy = -(alpha[live] * alpha[live].log()).sum()
    return dict(K=int(alpha.numel()), d=int(model.mixture.latent_dim), dead=int((~live).sum()),
                max_alpha=float(alpha.max()), effective=float(entropy.exp()),
                sigma_min=float(sigma.min()), sigma_max=float(sigma.max()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", help="PatchCharts checkpoints (paths or pretrained:charts)")
    ap.add_argument("--labels", nargs="*", default=None, help="one label per checkpoint (default: the file name)")
    ap.add_argument("--out", default=None, help="write a markdown table here")
    args = ap.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.checkpoints):
        ap.error(f"--labels needs one label per checkpoint ({len(args.checkpoints)}), got {len(args.labels)}")
    lines = ["| model | K | d | dead charts (alpha < 1e-6) | largest alpha | effective charts exp(H) | sigma_k of live charts |",
             "|---|---|---|---|---|---|---|"]
    for i, spec in enumerate(args.checkpoints):
        path = resolve_checkpoint(spec)
        label = args.labels[i] if args.labels else path.name
        u = usage(PatchCharts.load(path))
        lines.append(f"| {label} | {u['K']} | {u['d']} | {u['dead']} | {u['max_alpha']:.3f} | {u['effective']:.1f} | "
                     f"{u['sigma_min']:.3g} - {u['sigma_max']:.3g} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        command = "python bench/charts_usage.py " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.out).write_text(f"# Chart usage of trained patch chart mixtures\n\nCommand: `{command}`\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
