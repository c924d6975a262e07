"""Twin components and held-out NLL of EPLL GMM checkpoints (issue 11).

Before 2026-12-05 `GMM.fit` started every k-means cluster of at most d patches from one shared
fallback (mean 0, the global covariance): exact twins, which EM keeps identical for ever. This
bench counts each checkpoint's twins (`GMM.twin_groups`) and scores its held-out NLL on validation
patches of train400 (the mean-free marginal of bench/patch_nll_table.py), so a GMM refitted by the
mended initialisation can be compared with the one it replaces at equal EM iterations.

    python bench/gmm_twins.py --gmm pretrained:gmm bench/results/gmm_k200_p6_twinfree.safetensors \
        --out bench/results/gmm_twins
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patch_nll_table import gmm_mean_free_log_prob, resolve  # noqa: E402

from patchreg.data import PatchSampler, load_train400  # noqa: E402
from patchreg.priors import GMM, mean_free_basis  # noqa: E402


def score(spec: str, n: int, seed: int, images=None) -> dict:
    """Twins, EM progress and held-out mean-free NLL (nats per patch) of one GMM checkpoint."""
    gmm = GMM.load(resolve(spec))
    p = gmm.patch_size
    images = load_train400("validation") if images is None else images
    val = PatchSampler(images, p, 4096, seed=seed, dtype=torch.float64).sample(n)
    basis = mean_free_basis(p * p)
    start = time.perf_counter()
    nll = -gmm_mean_free_log_prob(gmm, val @ basis, basis).mean()
    groups = gmm.twin_groups()
    history = gmm.history
    return dict(
        checkpoint=spec, patch_size=p, components=gmm.n_components,
        distinct=gmm.n_components - sum(len(g) - 1 for g in groups), twin_groups=len(groups),
        largest_group=max((len(g) for g in groups), default=1), em_iterations=len(history),
        train_loglik=history[-1] if history else None,
        last_gain=history[-1] - history[-2] if len(history) > 1 else None,
        heldout_nll=float(nll), seconds=time.perf_counter() - start,
    )


def write_report(out: Path, rows: list, command: str, n: int, seed: int) -> None:
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    lines = ["# Twin components and held-out NLL of GMM checkpoints", "", f"Command: `{command}`", "",
             f"Held-out NLL: {n} random patches of the 40 validation images of train400 (seed {seed}), "
             "mean-free coordinates (nats per patch, lower is better). Distinct: components left when each "
             "group of exact twins (same mean and covariance to 1e-9) counts once.", "",
             "| checkpoint | p | K | distinct | twin groups (largest) | EM its | train loglik | last gain | held-out NLL |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['checkpoint']} | {r['patch_size']} | {r['components']} | {r['distinct']} | "
                     f"{r['twin_groups']} ({r['largest_group']}) | {r['em_iterations']} | "
                     f"{fmt(r['train_loglik'], '.3f')} | {fmt(r['last_gain'], '.4f')} | {r['heldout_nll']:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gmm", nargs="+", default=["pretrained:gmm"], help="GMM checkpoints (paths or pretrained:NAME)")
    ap.add_argument("--n", type=int, default=20000, help="held-out validation patches")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/gmm_twins")
    args = ap.parse_args(argv)
    if args.n < 1:
        raise SystemExit(f"--n must be >= 1, got {args.n}")
    images = load_train400("validation")  # read once for every checkpoint
    rows = [score(spec, args.n, args.seed, images) for spec in args.gmm]
    for r in rows:
        print(r)
    command = "python bench/gmm_twins.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(Path(args.out), rows, command, args.n, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
