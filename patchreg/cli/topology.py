"""`patchreg topology`: the topology of high-contrast patches (or of a point cloud) two ways."""

from __future__ import annotations

import argparse
from pathlib import Path


def _core(text: str):
    if text.lower() in ("none", "auto"):
        return None if text.lower() == "none" else "auto"
    try:
        k, q = text.split(",")
        return int(k), float(q)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--core must be 'k,q' (e.g. 300,30), 'auto' or 'none', got {text!r}") from None


def _charts(text: str):
    return text if text == "auto" else int(text)


def _patches_per_image(text: str):
    return text if text == "all" else int(text)


def _auto_int(text: str):
    return text if text == "auto" else int(text)


def _ints(text: str):
    return tuple(int(x) for x in text.split(","))


def _floats(text: str):
    return tuple(float(x) for x in text.split(","))


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
    parser.add_argument("--core", type=_core, default="auto",
                        help="k,q of X(k, q), 'none', or 'auto' (default): for patch data the core of the --core-ks x "
                        "--core-qs grid whose persistent-homology reading has the largest gap; for --any-points no core")
    parser.add_argument("--core-ks", type=_ints, default=(5, 15, 50, 100, 300), help="--core auto: the k of the grid")
    parser.add_argument("--core-qs", type=_floats, default=(10.0, 20.0, 30.0), help="--core auto: the q%% of the grid")
    parser.add_argument("--denoise", type=int, default=None,
                        help="replace core points by the mean of their m nearest core neighbours (default: chosen "
                        "with the core under --core auto among 0 and 30, else 0)")
    parser.add_argument("--complex", default="rips", choices=["rips", "witness"],  # pipeline.COMPLEXES (kept literal: no heavy import at CLI start)
                        help="persistent homology on the landmarks alone (Rips) or on the lazy witness complex with "
                        "every core point a witness (Carlsson et al.'s complex)")
    parser.add_argument("--orientation-bins", type=int, default=0,
                        help="patch data: > 0 takes each core per orientation bin (the q%% densest of every bin), "
                        "so that orientations rare in the images (diagonals) are not cut out; 0: one global core")
    parser.add_argument("--rotations", type=int, default=1,
                        help="--images at scale: also see every image rotated by 90 r / R degrees, r = 1..R-1, each "
                        "angle's top 20%% by contrast kept (a camera at every roll: evens out the orientations that "
                        "a level camera favours); 1: the images as they are")
    parser.add_argument("--charts", type=_charts, default="auto", help="number of charts K, or 'auto'")
    parser.add_argument("--chart-dim", default="auto", choices=["auto", "1", "2"])
    parser.add_argument("--landmarks", type=_auto_int, default="auto",
                        help="maxmin landmarks for persistent homology; auto: 400 for patch data, 150 for --any-points")
    parser.add_argument("--patches-per-image", type=_patches_per_image, default="all",
                        help="'all' (default for a folder: every patch of every image, the at-scale pipeline with "
                        "caches) or N random patches per image")
    parser.add_argument("--cache", default=None, help="cache folder for the patch set and kNN (default: OUT/cache)")
    parser.add_argument("--n-reference", type=int, default=100_000, help="at scale: kNN reference points")
    parser.add_argument("--n-queries", type=int, default=15_000, help="at scale: points whose density is estimated")
    parser.add_argument("--max-chart-points", type=int, default=None,
                        help="core points used to fit charts (default: 3000 for --chart-sample maxmin, 8000 for random)")
    parser.add_argument("--chart-sample", choices=["maxmin", "random"], default="maxmin",
                        help="how the chart points are drawn from the core: maxmin (density-balanced, as the witness "
                             "landmarks; the thin sheet between the three circles gets its share) or seeded random")
    parser.add_argument("--no-charts", action="store_true", help="persistent homology only")
    parser.add_argument("--cover", default="pca", choices=["pca", "learned"],
                        help="charts of the nerve: local PCA (fast) or a learned FIF chart mixture")
    parser.add_argument("--learned-steps", type=int, default=300,
                        help="--cover learned: mixture training steps (plus half as many pretraining, a third overlap)")
    parser.add_argument("--learned-width", type=int, default=32, help="--cover learned: width of the residual-MLP charts")
    parser.add_argument("--nerve-reading", choices=["scan", "filtration"], default="scan",
                        help="the chart reading that meets persistent homology in the verdict: the threshold scan's "
                             "stable name, or the nerve filtration read by the long-bar rule (both are reported)")
    parser.add_argument("--nerve-cut", choices=["none", "first-loop-death"], default="first-loop-death",
                        help="the nerve filtration read without the classes born after its first long loop dies (default: "
                             "there the charts have outgrown a loop of the surface; patchreg.topology.nerve_persistence), "
                             "or whole (none)")
    parser.add_argument("--learned-overlap", choices=["reconstruction", "ownership"], default="reconstruction",
                        help="--cover learned: chart k holds a point when it reconstructs it (reconstruction) or also lies "
                             "within tau chart radii of a point k owns (ownership; patchreg.topology.learned_cover)")
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


def _check_args(args):
    """Every bound, before any expensive work."""
    if args.landmarks != "auto" and args.landmarks < 2:
        raise ValueError(f"--landmarks must be >= 2 or 'auto', got {args.landmarks}")
    if args.patches_per_image != "all" and args.patches_per_image < 1:
        raise ValueError(f"--patches-per-image must be >= 1 or 'all', got {args.patches_per_image}")
    if args.n_queries < 2 or args.n_reference < args.n_queries:
        raise ValueError(f"need 2 <= --n-queries <= --n-reference, got {args.n_queries} and {args.n_reference}")
    if args.denoise is not None and args.denoise < 0:
        raise ValueError(f"--denoise must be >= 0, got {args.denoise}")
    if min(args.core_ks) < 1:
        raise ValueError(f"--core-ks must be positive, got {args.core_ks}")
    if not all(0 < q <= 100 for q in args.core_qs):
        raise ValueError(f"--core-qs must be percentages in (0, 100], got {args.core_qs}")
    if args.orientation_bins < 0:
        raise ValueError(f"--orientation-bins must be >= 0 (0: one global core), got {args.orientation_bins}")
    if args.orientation_bins > 0 and args.any_points:
        raise ValueError("--orientation-bins needs patch data (not --any-points)")
    if args.rotations < 1:
        raise ValueError(f"--rotations must be >= 1 (1: the images as they are), got {args.rotations}")
    if args.max_chart_points is not None and args.max_chart_points < 1:
        raise ValueError(f"--max-chart-points must be >= 1, got {args.max_chart_points}")
    if args.rotations > 1 and (args.images in (None, "bundled") or args.patches_per_image != "all"):
        raise ValueError("--rotations needs --images DIR with --patches-per-image all (the at-scale patch set)")
    if args.images is not None and args.images != "bundled" and not Path(args.images).is_dir():
        raise FileNotFoundError(f"--images {args.images} is not a folder")


def _points_and_source(args):
    """(points, cache key or None, patch-set metadata or None); rows in random order (seeded)."""
    import numpy as np

    if args.images not in (None, "bundled") and args.patches_per_image == "all":
        from ..topology.patchsets import build_patch_set

        cache = Path(args.cache) if args.cache else Path(args.out) / "cache"
        pset = build_patch_set(args.images, args.patch_size, cache, seed=args.seed, progress=True, rotations=args.rotations)
        return pset.points, pset.path.name, pset.meta
    if args.images == "bundled" and args.patches_per_image == "all":
        args.patches_per_image = None
    points = load_sphere_points(args)
    return points[np.random.default_rng(args.seed).permutation(len(points))], None, None


def _landmark_fragility(core_points, n_landmarks, seed, main_name, complex="rips"):
    """The reading again with half the landmarks and with another landmark seed: fragile if any differs."""
    from ..topology.pipeline import homology_from_persistence

    others = {}
    for label, n, s in ((f"{max(2, n_landmarks // 2)} landmarks", max(2, n_landmarks // 2), seed),
                        (f"landmark seed {seed + 1}", n_landmarks, seed + 1)):
        r = homology_from_persistence(core_points, min(n, len(core_points)), s, complex=complex)
        others[label] = {"verdict": r["name"], "betti": {k: list(v) for k, v in r["betti"].items()},
                         "gap": None if r["gap"] == float("inf") else round(float(r["gap"]), 3)}
    fragile = any(o["verdict"] != main_name for o in others.values()) or main_name.startswith("other (no clear gap")
    return {"fragile": bool(fragile), "readings": others}


_MODEL_OF = {"Klein bottle": "Klein bottle", "three-circle model": "three-circle model", "circle": "primary circle"}


def _model_fit(core_points, patch_size, verdict):
    from ..topology.model_fit import distance_summary, project_to_model

    fits = {m: distance_summary(project_to_model(core_points, patch_size, m)[0]) for m in ("klein", "three-circle")}
    closer = "Klein bottle" if fits["klein"]["q50"] <= fits["three-circle"]["q50"] else "three-circle model"
    return {
        "distances": fits,
        "closer_model": closer,
        "which_model_fits": _MODEL_OF.get(verdict, f"none (the topology reading is: {verdict})"),
        "note": "chord distances on the patch sphere from the core points to the nearest model patch; the three-circle "
        "model is a subset of the Klein bottle, so its distances are never smaller; which_model_fits follows the "
        "topology verdict",
    }


def run(args) -> int:
    import numpy as np

    from ..io import atomic_write_json, atomic_write_text
    from ..topology.density import check_core_parameters
    from ..topology.pipeline import analyse_points
    from ..topology.report import write_report
    from ..topology.scale import ScaleConfig, choose_core, core_of, denoise, density_estimates, read_grid

    _check_args(args)
    fitter = None
    if args.cover == "learned":
        from ..topology.learned_cover import learned_cover_fitter

        if args.learned_steps < 1:
            raise ValueError(f"--learned-steps must be >= 1, got {args.learned_steps}")
        if args.learned_width < 2:
            raise ValueError(f"--learned-width must be >= 2, got {args.learned_width}")
        fitter = learned_cover_fitter(args.learned_steps, args.learned_width, progress=True, overlap=args.learned_overlap)
    if args.any_points and args.points is None:
        raise ValueError("--any-points needs --points")
    patch_data = not args.any_points
    core = args.core if args.core != "auto" else ("auto" if patch_data else None)
    n_landmarks = args.landmarks if args.landmarks != "auto" else (400 if patch_data else 150)
    points, cache_key, patch_set = _points_and_source(args)
    n = len(points)
    if isinstance(core, tuple):
        check_core_parameters(n, *core)
    extra = {"defaults": {"core": "auto: grid choice for patch data, none for --any-points",
                          "landmarks": "auto: 400 for patch data, 150 for --any-points"},
             "landmarks_used": n_landmarks, "patch_set": patch_set}
    if core is None:
        core_points, core_label = np.asarray(points, dtype=np.float64), None
    else:
        ks = tuple(sorted(set(args.core_ks) | ({core[0]} if isinstance(core, tuple) else set())))
        ks = tuple(k for k in ks if k < min(args.n_reference, n)) or (min(ks),)
        config = ScaleConfig(ks=ks, qs=args.core_qs, n_reference=min(args.n_reference, n),
                             n_queries=min(args.n_queries, n), landmarks=n_landmarks,
                             denoise_neighbours=(0, 30) if args.denoise is None else (args.denoise,),
                             complex=args.complex, orientation_bins=args.orientation_bins)
        cache = (Path(args.cache) if args.cache else Path(args.out) / "cache") if cache_key else None
        rows, rho, info = density_estimates(points, config, args.seed, cache, cache_key or "", progress=True)
        print(f"kNN density: {info}")
        query_points = np.asarray(points[rows], dtype=np.float64)
        theta = None
        if args.orientation_bins > 0:
            from ..topology.orientation import patch_orientation

            theta = patch_orientation(query_points, args.patch_size)
        if core == "auto":
            grid = read_grid(query_points, rho, config, seed=args.seed, progress=True, theta=theta)
            chosen = choose_core(grid)
            k, q, m = chosen["k"], chosen["q"], chosen["denoise"]
            extra["core_grid"] = grid
            extra["core_choice"] = {key: v for key, v in chosen.items() if key != "top_bars"}
        else:
            (k, q), m = core, (args.denoise or 0)
        core_points = denoise(query_points[core_of(rho, config.ks, k, q, theta, args.orientation_bins)], m)
        core_label = [k, q]
        extra["density"] = {**info, "denoise_neighbours": m, "orientation_bins": args.orientation_bins}
    extra["complex"] = args.complex
    result = analyse_points(core_points, core=None, n_landmarks=min(n_landmarks, len(core_points)), n_charts=args.charts,
                            dim=args.chart_dim if args.chart_dim == "auto" else int(args.chart_dim), seed=args.seed,
                            max_chart_points=args.max_chart_points, charts=not args.no_charts, cover_fitter=fitter,
                            complex=args.complex, chart_sample=args.chart_sample, nerve_cut=args.nerve_cut)
    result.update(n_points=n, core=core_label, n_core=len(core_points))
    extra["persistence_fragility"] = _landmark_fragility(core_points, min(n_landmarks, len(core_points)), args.seed,
                                                         result["persistence"]["name"], args.complex)
    inputs = {k: v for k, v in vars(args).items() if k != "func"}
    patch_size = None if args.any_points else args.patch_size
    evidence = write_report(result, inputs, args.out, patch_size=patch_size, title=f"p={args.patch_size}, core={core_label}")
    if patch_size is not None and patch_size >= 3:
        extra["model_fit"] = _model_fit(core_points, patch_size, evidence["verdict"])
    evidence.update(extra)
    out = Path(args.out)
    atomic_write_json(out / "verdict.json", evidence)
    atomic_write_text(out / "report.md", (out / "report.md").read_text() + _extra_markdown(extra))
    fragile = " (FRAGILE reading: see report)" if extra["persistence_fragility"]["fragile"] else ""
    print(f"verdict: {evidence['verdict']}{fragile}  (report: {out / 'report.md'})")
    return 0


def _extra_markdown(extra) -> str:
    lines = ["", "## Defaults, core choice, fragility, model fit", "",
             f"- landmarks used: {extra['landmarks_used']}; defaults: {extra['defaults']}"]
    if extra.get("patch_set"):
        m = extra["patch_set"]
        lines.append(f"- patch set: {m['n_points']:,} high-contrast patches of {m['n_patches_total']:,} "
                     f"({m['n_images']} images), cached")
    if "density" in extra:
        d = extra["density"]
        lines.append(f"- kNN density: {d['n_queries']} query points against {d['n_reference']} reference points, "
                     f"{d.get('method', 'cached')}, {d['seconds']} s; denoising neighbours {d['denoise_neighbours']}"
                     + (f"; cores per orientation ({d['orientation_bins']} bins)" if d.get("orientation_bins") else ""))
    lines.append(f"- persistent homology complex: {extra.get('complex', 'rips')}")
    if "core_choice" in extra:
        c = extra["core_choice"]
        lines.append(f"- core chosen: X({c['k']}, {c['q']:g}), denoise {c['denoise']} ({c['reason']}; gap {c['gap']})"
                     + (" - FRAGILE" if c["fragile"] else ""))
        lines += ["", "| k | q% | denoise | points | Betti Z/2 | Betti Z/3 | gap | verdict |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {g['k']} | {g['q']:g} | {g['denoise']} | {g['n_core']} | {tuple(g['betti_Z2'])} | "
                  f"{tuple(g['betti_Z3'])} | {g['gap']} | {g['name']} |" for g in extra["core_grid"]]
        lines.append("")
    f = extra["persistence_fragility"]
    lines.append(f"- persistent homology is {'FRAGILE' if f['fragile'] else 'not fragile'} under other landmark "
                 f"settings: {f['readings']}")
    if "model_fit" in extra:
        mf = extra["model_fit"]
        lines.append(f"- model fit (core -> model, chord distance): Klein bottle {mf['distances']['klein']}, "
                     f"three-circle {mf['distances']['three-circle']}; which model fits: **{mf['which_model_fits']}**")
    return "\n".join(lines) + "\n"
