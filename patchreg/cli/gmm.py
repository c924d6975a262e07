"""`patchreg train gmm`: EM fitting of the EPLL patch GMM on patches streamed from images."""

from __future__ import annotations

import time


def register_train(train_subparsers) -> None:
    p = train_subparsers.add_parser(
        "gmm",
        help="fit a Gaussian mixture patch prior (EPLL) by streamed EM",
        description=(
            "Fit a full-covariance GMM on random patches of gray images. Every EM iteration "
            "streams the same --patches-per-iter patches (rewound sampler) in batches; the model "
            "is saved atomically after each iteration, and --resume continues from --out. "
            "Several processes: torchrun --nproc_per_node N -m patchreg train gmm ... (gloo; rank r takes "
            "batches r, r + N, ... of the one seeded stream, so the patches, and the fit up to the float64 "
            "summation order, do not depend on N and --resume works under another N; the EM statistics are "
            "all-reduced in float64, rank 0 saves)."
        ),
    )
    p.add_argument("--images", required=True, help="a folder of png/jpg/tif images, or 'bundled' (train split)")
    p.add_argument("--patch-size", type=int, default=6)
    p.add_argument("--components", type=int, default=200, help="number of mixture components K")
    p.add_argument("--patches-per-iter", type=int, default=1_000_000,
                   help="patches per EM iteration (under torchrun: in all, split over the processes)")
    p.add_argument("--batch-size", type=int, default=8192, help="patches per streamed batch")
    p.add_argument("--iters", type=int, default=30, help="maximum EM iterations")
    p.add_argument("--tol", type=float, default=1e-4, help="stop when the mean log-likelihood gains less")
    p.add_argument("--covariance-floor", type=float, default=1e-6, help="minimum covariance eigenvalue")
    p.add_argument("--keep-mean", action="store_true", help="model the patch mean too (default: remove it)")
    p.add_argument("--out", required=True, help="checkpoint file (.safetensors), written after every iteration")
    p.add_argument("--seed", type=int, default=0, help="seeds the patch stream and the k-means++ initialisation")
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import distributed

    if args.patches_per_iter < 1:
        raise ValueError(f"--patches-per-iter must be >= 1, got {args.patches_per_iter}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    batches, processes = -(-args.patches_per_iter // args.batch_size), distributed.world_from_env().world_size
    if batches < processes:  # checked before the process group waits for its ranks
        raise ValueError(f"--patches-per-iter ({args.patches_per_iter}) makes {batches} batches of --batch-size "
                         f"{args.batch_size}; every process needs one: at least {processes}")
    with distributed.session("cpu") as world:
        return _fit(args, world)


def _fit(args, world) -> int:
    """Under torchrun every rank fits its batches of the one seeded patch stream (RankBatches); the EM
    statistics are all-reduced (see GMM.fit); rank 0 saves and reports."""
    import torch

    from ..data import PatchSampler, RankBatches, load_images
    from ..priors.gmm import GMM

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sampler = PatchSampler(load_images(args.images), args.patch_size, args.batch_size, seed=args.seed)
    batches = RankBatches(sampler, args.patches_per_iter, world.rank, world.world_size)
    model = GMM(args.components, args.patch_size, remove_mean=not args.keep_mean)
    start = time.perf_counter()
    model.fit(
        batches,
        n_iter=args.iters,
        patches_per_iter=batches.count,
        batch_size=args.batch_size,
        tol=args.tol,
        covariance_floor=args.covariance_floor,
        seed=args.seed,
        checkpoint=args.out,
        resume=args.resume,
        progress=not args.quiet,
    )
    if not world.is_main:
        return 0
    model.save(args.out)
    elapsed = time.perf_counter() - start
    last = f"{model.history[-1]:.4f}" if model.history else "n/a"
    print(
        f"fitted K={args.components} on {args.patch_size}x{args.patch_size} patches in {elapsed:.1f} s "
        f"({len(model.history)} EM iterations); mean log-likelihood per patch {last}; saved {args.out}"
    )
    return 0
