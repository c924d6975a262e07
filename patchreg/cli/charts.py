"""`patchreg train charts`, `patchreg sample`, `patchreg evaluate`: chart mixtures from the command line."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


# The point-data defaults, for the help text only (importing patchreg.charts here would load torch on every
# command); tests/test_charts.py checks that they equal patchreg.charts.training.TOY_DEFAULTS.
_TOY = dict(steps=3000, split="0.1/0.7/0.2", batch_size=128, lr=1e-3, lr_schedule="cosine", train_sigma=0.05, width=64, blocks=2, seed_fraction=0.3,
            overlap_scale=1.0, overlap_in_loss=False)
# The VAE family's own point-data settings (patchreg.charts.training.FAMILY_SETTINGS["vae"]), likewise for the help text.
_VAE = dict(train_sigma=0.01, overlap_scale=1.5, steps=6000)


def register_train(train_kinds) -> None:
    p = train_kinds.add_parser("charts", help="train a mixture of charts (VAE or FIF family) on points or images")
    p.add_argument("--data", required=True,
                   help="toy:NAME | points:FILE.npy | digits | image patches: train400:train, bundled or images:DIR "
                        "(with --patch-size)")
    p.add_argument("--patch-size", type=int, default=None,
                   help="image data: model p x p patches (mean removed; per-chart noise levels), e.g. 6 or 8")
    p.add_argument("--data-noise", type=float, default=0.0,
                   help="toy data: add Gaussian noise of this standard deviation to the points (default 0: on the manifold)")
    p.add_argument("--responsibility-floor", type=float, default=1e-3,
                   help="image data: a chart's loss is evaluated only where its responsibility exceeds this "
                        "(0: every point; patches are nearly hard-assigned, so this saves most of the work)")
    p.add_argument("--responsibility-sigma", choices=("shared", "per-chart"), default="shared",
                   help="image data: the off-manifold sigma in the training responsibilities: the loss's --train-sigma "
                        "for every chart (shared, the default) or each chart's running maximum-likelihood sigma")
    p.add_argument("--selector-points", type=int, default=50_000,
                   help="image data: patches used to fit the chart selector after training")
    p.add_argument("--family", choices=("vae", "fif"), default="fif")
    p.add_argument("--charts", type=int, default=None,
                   help="number of charts K (>= 1; default: a toy manifold's suggested K, e.g. sphere 2, torus 12 "
                        "(patchreg.charts.training.TOY_SETTINGS), else 2)")
    p.add_argument("--latent-dim", type=int, default=None, help="chart dimension d (< n); default: the toy manifold's")
    p.add_argument("--architecture", choices=("mlp", "conv"), default="mlp")
    p.add_argument("--width", type=int, default=None, help=f"hidden width (default: point data {_TOY['width']}, images 64)")
    p.add_argument("--blocks", type=int, default=None,
                   help=f"residual blocks per network (default: point data {_TOY['blocks']}, images 2)")
    p.add_argument("--train-sigma", type=float, default=None,
                   help=f"noise scale of the training loss (default: point data {_TOY['train_sigma']} (vae family "
                        f"{_VAE['train_sigma']}; a toy may have its own, patchreg.charts.training.FAMILY_TOY_SETTINGS), "
                        "images 0.05)")
    p.add_argument("--latent-blocks", type=int, default=0,
                   help="vae family, point data: coupling blocks of a latent flow in front of the radial prior, so each "
                        "chart learns its latent density (Alberti et al.'s code uses 3 when d > 1; 0: none, the default)")
    p.add_argument("--beta", type=float, default=None, help="FIF reconstruction weight (default 1/(2 train_sigma^2))")
    p.add_argument("--steps", type=int, default=None,
                   help=f"total steps (default: point data {_TOY['steps']} (vae family {_VAE['steps']}), split {_TOY['split']} pretrain / mixture / "
                        "overlap, see patchreg.charts.training.TOY_DEFAULTS; images 1600, split 1/4, 1/2, 1/4)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"mini-batch size (default: point data {_TOY['batch_size']}, images 128)")
    p.add_argument("--lr", type=float, default=None, help=f"Adam learning rate (default: point data {_TOY['lr']}, images 1e-3)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default=None,
                   help=f"after pre-training (default: point data {_TOY['lr_schedule']}, images constant)")
    p.add_argument("--seed-fraction", type=float, default=None,
                   help=f"local seeding: each chart starts on this fraction of its k-means cluster, nearest its centre "
                        f"(default: point data {_TOY['seed_fraction']}, images 1)")
    p.add_argument("--overlap-scale", type=float, default=None,
                   help=f"overlap phase: responsibilities use the latent prior at this multiple of |z|, so points near a "
                        f"chart's border go to a neighbour (>= 1; 1: no hand-off, the phase is a plain mixture phase; "
                        f"default: point data {_TOY['overlap_scale']} (vae family {_VAE['overlap_scale']}), images 1.5)")
    p.add_argument("--overlap-in-loss", action=argparse.BooleanOptionalAction, default=None,
                   help=f"overlap phase: the scaled prior in the charts' loss too, as Alberti et al.'s code (draws each chart's "
                        f"data inward so that its latent support reaches past them); default: point data "
                        f"{_TOY['overlap_in_loss']} (vae family {_VAE.get('overlap_in_loss', _TOY['overlap_in_loss'])}), images False")
    p.add_argument("--revive-every", type=int, default=0,
                   help="mixture phase: every N steps re-seed the dead charts (weight < 0.1 / K) on the worst-explained "
                        "data (0: never, the default), each first trained alone on its cluster for 50 steps")
    p.add_argument("--n-train", type=int, default=5000, help="training points drawn from a toy manifold")
    p.add_argument("--eval-every", type=int, default=0,
                   help="point data: every this many steps (and at the end) evaluate a finalized copy on held-out "
                        "points and write the curve to OUT.curve.md / .json (0: off, the default)")
    p.add_argument("--eval-n", type=int, default=2000, help="point data: held-out points and samples per evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--resume", action="store_true", help="continue from --out if it holds a training state")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, help="checkpoint file (.safetensors)")
    p.set_defaults(func=_train)


def register(commands) -> None:
    s = commands.add_parser("sample", help="draw samples from a trained chart mixture")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--noise", action="store_true", help="add the off-manifold noise sigma")
    s.add_argument("--out", required=True, help="output .npy (N, n); chart labels go to OUT with suffix .labels.npy")
    s.set_defaults(func=_sample)
    e = commands.add_parser("evaluate", help="metrics of a trained chart mixture on held-out data")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", required=True, help="toy:NAME | points:FILE.npy | digits")
    e.add_argument("--data-noise", type=float, default=0.0,
                   help="toy data: Gaussian noise of this standard deviation on the held-out points (as trained with)")
    e.add_argument("--n", type=int, default=2000, help="generated samples and held-out points")
    e.add_argument("--eps", type=float, default=0.1, help="coverage radius")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default=None, help="write the metrics as JSON here")
    e.set_defaults(func=_evaluate)


def _train(args) -> int:
    """Under torchrun: DDP (patchreg.charts.training), --batch-size the global batch, rank 0 saves and reports."""
    from .. import distributed

    import contextlib
    import io

    with distributed.session("cpu") as world:
        quiet = contextlib.nullcontext() if world.is_main else contextlib.redirect_stdout(io.StringIO())
        with quiet:  # one report, rank 0's
            code = _train_in_world(args)
    return code if world.is_main else 0


def _train_in_world(args) -> int:
    import torch

    from ..charts import TrainingDiverged, build_mixture, load_mixture, train_mixture
    from ..charts.curves import heldout_curve_callback
    from ..charts.datasets import load_dataset
    from ..charts.training import toy_defaults, toy_train_config

    image = _is_image_spec(args.data) or args.patch_size is not None
    # point data: TOY_DEFAULTS with a toy manifold's own settings over them (patchreg.charts.training.TOY_SETTINGS)
    defaults = (dict(steps=1600, batch_size=128, lr=1e-3, lr_schedule="constant", train_sigma=0.05, width=64, blocks=2,
                     seed_fraction=1.0, overlap_scale=1.5, overlap_in_loss=False)
                if image else toy_defaults(args.data[4:] if args.data.startswith("toy:") else None, args.family))
    for name in ("steps", "batch_size", "lr", "lr_schedule", "train_sigma", "width", "blocks", "seed_fraction",
                 "overlap_scale", "overlap_in_loss"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    if args.charts is not None and args.charts < 1:
        raise ValueError(f"--charts must be >= 1, got {args.charts}")
    if not 0 < args.seed_fraction <= 1:
        raise ValueError(f"--seed-fraction must be in (0, 1], got {args.seed_fraction}")
    if args.steps < 4:
        raise ValueError(f"--steps must be >= 4 (each phase needs a step), got {args.steps}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.width < 1 or args.blocks < 1:
        raise ValueError(f"--width and --blocks must be >= 1, got {args.width} and {args.blocks}")
    from ..distributed import current_world

    if args.batch_size % current_world().world_size:
        raise ValueError(f"--batch-size ({args.batch_size}) must be a multiple of the number of processes "
                         f"({current_world().world_size})")
    if not args.train_sigma > 0:
        raise ValueError(f"--train-sigma must be > 0, got {args.train_sigma}")
    if args.latent_blocks < 0:
        raise ValueError(f"--latent-blocks must be >= 0, got {args.latent_blocks}")
    if args.latent_blocks and (args.family != "vae" or image):
        raise ValueError("--latent-blocks is for the vae family on point data (--family vae, no --patch-size)")
    if not args.overlap_scale >= 1:
        raise ValueError(f"--overlap-scale must be >= 1 (1: no hand-off), got {args.overlap_scale}")
    if args.data_noise != 0 and not args.data.startswith("toy:"):
        raise ValueError(f"--data-noise is for toy data (--data toy:NAME), got --data {args.data}")
    if not (args.data_noise >= 0 and math.isfinite(args.data_noise)):
        raise ValueError(f"--data-noise must be a finite number >= 0, got {args.data_noise}")
    if args.eval_every < 0 or args.eval_n < 1:
        raise ValueError(f"--eval-every must be >= 0 (0: off) and --eval-n >= 1, got {args.eval_every} and {args.eval_n}")
    if args.eval_every and image:
        raise ValueError("--eval-every is for point data (toy:NAME, points:FILE.npy, digits), not image patches")
    if args.responsibility_sigma != "shared" and not image:
        raise ValueError("--responsibility-sigma per-chart is for image data (--patch-size): point-data models have "
                         "one sigma for all charts")
    if image:
        if args.charts is None:
            args.charts = 2
        return _train_patches(args)
    data = load_dataset(args.data, args.n_train, args.eval_n if args.eval_every else 10, args.seed, args.latent_dim or 1,
                        noise=args.data_noise)
    if args.charts is None:
        args.charts = (defaults.get("charts") or data.manifold.suggested_charts) if args.data.startswith("toy:") else 2
    d = args.latent_dim or (data.manifold.intrinsic_dim if data.manifold is not None else None)
    if d is None:
        raise ValueError("--latent-dim is required for this data")
    n = data.train.shape[1]
    if not torch.isfinite(data.train).all():
        raise ValueError(f"data {args.data} contains NaN or infinite values")
    out = Path(args.out)
    torch.manual_seed(args.seed)  # the initial weights too (as bench/charts_toy_seeds.py)
    if args.resume and out.is_file():
        model, _ = load_mixture(out, torch.float32)
    else:
        model = build_mixture(args.family, args.charts, n, d, args.architecture, args.width, args.blocks,
                              args.train_sigma, args.beta, latent_blocks=args.latent_blocks).float()
    config = toy_train_config(args.steps, batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule,
                              train_sigma=args.train_sigma, seed=args.seed, checkpoint_every=args.checkpoint_every,
                              seed_fraction=args.seed_fraction, revive_every=args.revive_every,
                              overlap_scale=args.overlap_scale, overlap_in_loss=args.overlap_in_loss,
                              log_every=math.gcd(50, args.eval_every) if args.eval_every else 50)  # the callback's steps
    callback = (heldout_curve_callback(data, config, args.eval_every, min(args.eval_n, len(data.test)), seed=args.seed)
                if args.eval_every else None)
    try:
        history = train_mixture(model, data.train.float(), config, out, resume=args.resume, progress=not args.no_progress,
                                callback=callback)
    except TrainingDiverged as exc:
        print(f"patchreg train charts: {exc}", file=sys.stderr)
        return 1
    if args.eval_every and current_world().is_main:  # rank 0 alone evaluates (train_mixture's callback)
        _write_curve(out, history, f"{args.family} mixture, K = {args.charts}, {args.data}, seed {args.seed}")
    print(f"trained {args.family} mixture K={args.charts} d={d} on {args.data}: final loss {history[-1]['loss']:.4g}, "
          f"sigma {model.sigma.item():.4g}, alpha {[round(a, 3) for a in model.log_alpha.exp().tolist()]} -> {out}")
    return 0


def _write_curve(out: Path, history: list[dict], title: str) -> None:
    """OUT.curve.md and OUT.curve.json: the held-out curve of the training (resumed runs: the whole curve)."""
    from ..charts.curves import curve_markdown, curve_rows
    from ..io import atomic_write_json, atomic_write_text

    rows = curve_rows(history)
    atomic_write_text(out.with_suffix(".curve.md"), curve_markdown(rows, f"Training curve: {title}"))
    atomic_write_json(out.with_suffix(".curve.json"), rows)
    print(f"held-out curve ({len(rows)} evaluations) -> {out.with_suffix('.curve.md')}")


IMAGE_SPECS = ("train400", "bundled", "images:")


def _is_image_spec(spec: str) -> bool:
    return spec.startswith(IMAGE_SPECS)


def _train_patches(args) -> int:
    """`patchreg train charts --data train400:train --patch-size 6`: a PatchCharts model (patchreg.priors)."""
    import torch

    from ..charts import TrainConfig, TrainingDiverged
    from ..data import load_images
    from ..priors.patch_charts import train_patch_charts

    if not _is_image_spec(args.data):
        raise ValueError(f"--patch-size needs image data (--data train400:train, bundled or images:DIR), got {args.data!r}")
    if args.patch_size is None or args.patch_size < 2:
        raise ValueError(f"--patch-size must be an int >= 2 for image data, got {args.patch_size}")
    if args.latent_dim is None or not 1 <= args.latent_dim < args.patch_size**2 - 1:
        raise ValueError(f"--latent-dim is required for image data and must lie in [1, {args.patch_size**2 - 2}], "
                         f"got {args.latent_dim}")
    if args.architecture != "mlp":
        raise ValueError("image patches: the patch model (PatchCharts) has MLP charts only; use --architecture mlp")
    if args.selector_points < args.charts:
        raise ValueError(f"--selector-points must be >= --charts ({args.charts}), got {args.selector_points}")
    q = args.steps // 4
    config = TrainConfig(pretrain_steps=q, mixture_steps=args.steps - 2 * q, overlap_steps=q, batch_size=args.batch_size,
                         lr=args.lr, lr_schedule=args.lr_schedule, train_sigma=args.train_sigma, seed=args.seed,
                         seed_fraction=args.seed_fraction, overlap_scale=args.overlap_scale,
                         overlap_in_loss=args.overlap_in_loss, checkpoint_every=args.checkpoint_every, seed_points=max(5000, 50 * args.charts),
                         responsibility_floor=args.responsibility_floor, revive_every=args.revive_every,
                         responsibility_sigma=args.responsibility_sigma.replace("-", "_")).check()
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {str(out)!r}")
    spec = args.data[len("images:"):] if args.data.startswith("images:") else args.data
    images = load_images(spec, "train")
    torch.manual_seed(args.seed)
    try:
        model = train_patch_charts(images, args.patch_size, args.family, args.charts, args.latent_dim, args.width,
                                   args.blocks, config, out, resume=args.resume, progress=not args.no_progress,
                                   selector_points=args.selector_points, seed=args.seed)
    except TrainingDiverged as exc:
        print(f"patchreg train charts: {exc}", file=sys.stderr)
        return 1
    sigma = model.mixture.sigma
    print(f"trained patch charts K={args.charts} d={args.latent_dim} on {args.patch_size}x{args.patch_size} patches of "
          f"{args.data} ({len(images)} images): sigma {float(sigma.min()):.3g}..{float(sigma.max()):.3g} -> {out}")
    return 0


def _sample(args) -> int:
    import numpy as np
    import torch

    from ..charts import load_mixture

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    model, _ = load_mixture(args.checkpoint)
    x, labels = model.sample(args.n, torch.Generator().manual_seed(args.seed), noise=args.noise)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, x.numpy())
    np.save(out.with_suffix(".labels.npy"), labels.numpy())
    print(f"wrote {args.n} samples to {out}")
    return 0


def _evaluate(args) -> int:
    from ..charts import load_mixture
    from ..charts.datasets import load_dataset
    from ..charts.metrics import evaluate_mixture
    from ..io import atomic_write_json

    model, header = load_mixture(args.checkpoint)
    dataset = load_dataset(args.data, 10, args.n, args.seed, model.latent_dim, noise=args.data_noise)
    if dataset.test.shape[1] != model.ambient_dim:
        raise ValueError(f"data {args.data} has dimension {dataset.test.shape[1]}, the model {model.ambient_dim}")
    result = evaluate_mixture(model, dataset, args.n, args.eps, args.seed)
    for key, value in result.items():
        print(f"{key}: {value}")
    if args.out:
        atomic_write_json(args.out, {"checkpoint": str(args.checkpoint), "data": args.data, **result})
    return 0
