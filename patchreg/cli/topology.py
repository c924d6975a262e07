"""`patchreg topology`: the topology of high-contrast patches (or of a point cloud) two ways."""

from __future__ import annotations

import argparse
from pathlib import Path


def _core(text: str):
    if text.lower() == "none":
        return None
    try:
        k, q = text.split(",")
        return int(k), float(q)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--core must be 'k,q' (e.g. 300,30) or 'none', got {text!r}") from None


def _charts(text: str):
    return text if text == "auto" else int(text)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "topology",
        help="topology of the patch manifold: persistent homology and the nerve of a chart cover",
        description="Patch-space pipeline (log intensity, mean removal, top 20%% D-norm contrast, DCT "
        "coordinates on S^(p^2-2)), density core X(k, q), then Betti numbers over Z/2 and Z/3 from "
        "landmark barcodes and from the nerve of a chart cover; writes report.md, verdict.json, figures.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images, or 'bundled' for the bundled photos (all splits)")
    source.add_argument("--points", help=".npy/.mat point cloud: (N, p^2-1) points on S^(p^2-2) or (N, p^2) raw patches")
    parser.add_argument("--any-points", action="store_true",
                        help="--points is any point cloud (no patch size or sphere check, no patch figures)")
    parser.add_argument("--patch-size", type=int, default=3, help="p (>= 2); checked against --points columns")
    parser.add_argument("--core", type=_core, default=(300, 30.0), help="k,q of X(k, q), or 'none' (default 300,30)")
    parser.add_argument("--charts", type=_charts, default="auto", help="number of charts K, or 'auto'")
    parser.add_argument("--chart-dim", default="auto", choices=["auto", "1", "2"])
    parser.add_argument("--landmarks", type=int, default=150, help="maxmin landmarks for persistent homology")
    parser.add_argument("--patches-per-image", type=int, default=5000, help="random patches drawn per image")
    parser.add_argument("--max-chart-points", type=int, default=8000, help="core points used to fit charts")
    parser.add_argument("--no-charts", action="store_true", help="persistent homology only")
    parser.add_argument("--cover", default="pca", choices=["pca", "learned"],
                        help="charts of the nerve: local PCA (fast) or a learned FIF chart mixture")
    parser.add_argument("--learned-steps", type=int, default=300,
                        help="--cover learned: mixture training steps (plus half as many pretraining, a third overlap)")
    parser.add_argument("--learned-width", type=int, default=32, help="--cover learned: width of the residual-MLP charts")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def load_sphere_points(args):
    """Points on S^(p^2-2) from --images or --points, with the input checks."""
    import numpy as np

    from ..topology import preprocessing as pre

    if args.any_points and args.points is None:
        raise ValueError("--any-points needs --points")
    if args.patch_size < 2:
        raise ValueError(f"--patch-size must be >= 2 (a 1x1 patch has no contrast), got {args.patch_size}")
    if args.images is not None:
        from .. import data

        if args.images == "bundled":
            images = [im for split in ("train", "validation", "test") for im in data.load_bundled(split)]
        else:
            if not Path(args.images).is_dir():
                raise FileNotFoundError(f"--images {args.images} is not a folder")
            images = data.load_folder(args.images)
        return pre.images_to_sphere(images, args.patch_size, max_patches_per_image=args.patches_per_image, seed=args.seed)
    points = pre.load_points(args.points)
    if args.any_points:
        return points
    dim = points.shape[1]
    if dim == args.patch_size**2:
        return pre.patches_to_sphere(points)[0]
    if dim != args.patch_size**2 - 1:
        raise ValueError(
            f"--points has {dim} columns; --patch-size {args.patch_size} needs {args.patch_size**2 - 1} "
            f"(DCT coordinates on S^{args.patch_size**2 - 2}) or {args.patch_size**2} (raw patches)"
        )
    pre.check_on_sphere(points, name="--points")
    return np.asarray(points)


def run(args) -> int:
    from ..topology.density import check_core_parameters
    from ..topology.pipeline import analyse_points
    from ..topology.report import write_report

    if args.landmarks < 2:
        raise ValueError(f"--landmarks must be >= 2, got {args.landmarks}")
    fitter = None
    if args.cover == "learned":
        from ..topology.learned_cover import learned_cover_fitter

        if args.learned_steps < 1:
            raise ValueError(f"--learned-steps must be >= 1, got {args.learned_steps}")
        if args.learned_width < 2:
            raise ValueError(f"--learned-width must be >= 2, got {args.learned_width}")
        fitter = learned_cover_fitter(args.learned_steps, args.learned_width, progress=True)
    points = load_sphere_points(args)
    if args.core is not None:
        check_core_parameters(len(points), *args.core)
    result = analyse_points(
        points,
        core=args.core,
        n_landmarks=args.landmarks,
        n_charts=args.charts,
        dim=args.chart_dim if args.chart_dim == "auto" else int(args.chart_dim),
        seed=args.seed,
        max_chart_points=args.max_chart_points,
        charts=not args.no_charts,
        cover_fitter=fitter,
    )
    inputs = {k: v for k, v in vars(args).items() if k != "func"}
    evidence = write_report(result, inputs, args.out, patch_size=None if args.any_points else args.patch_size, title=f"p={args.patch_size}, core={args.core}")
    print(f"verdict: {evidence['verdict']}  (report: {Path(args.out) / 'report.md'})")
    return 0
