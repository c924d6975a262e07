"""`patchreg train flow`: maximum-likelihood training of the PatchNR patch flow on images."""

from __future__ import annotations

import time


def register_train(train_subparsers) -> None:
    p = train_subparsers.add_parser(
        "flow",
        help="train a PatchNR patch flow (GLOW couplings) on image patches",
        description="Train a PatchFlow by maximum likelihood on random patches of gray images. Several "
                    "processes: torchrun --nproc_per_node N -m patchreg train flow ... (DDP; --batch-size is "
                    "the global batch).",
    )
    p.add_argument("--images", required=True, help="a folder of png/jpg/tif images, or 'bundled' (train split)")
    p.add_argument("--patch-size", type=int, default=6)
    p.add_argument("--steps", type=int, required=True, help="total Adam steps (the paper: 750000)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--n-blocks", type=int, default=5)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--clamp", type=float, default=1.6)
    p.add_argument("--mixing", choices=("permutation", "lu"), default="permutation")
    p.add_argument("--out", required=True, help="checkpoint file (.safetensors), written atomically")
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="seeds the weights and the patch stream")
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    p.add_argument("--val-images", default=None,
                   help="held-out images (e.g. train400:validation): their patches' NLL is logged every --val-every steps")
    p.add_argument("--val-patches", type=int, default=20000, help="validation patches (a fixed sample)")
    p.add_argument("--val-every", type=int, default=5000)
    p.add_argument("--patience", type=int, default=None,
                   help="with --val-images: --steps becomes a minimum; go on until the validation NLL has not "
                        "improved for this many steps (PatchNR: 20000), at most --max-steps")
    p.add_argument("--max-steps", type=int, default=None, help="the cap of --patience")
    p.add_argument("--init-from", default=None,
                   help="start from this flow's weights (same architecture) with a fresh Adam, instead of a seeded "
                        "initialisation: a continuation when the original optimizer state is gone")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu, or cuda (under torchrun: GPU LOCAL_RANK of each node, NCCL)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import distributed

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
    with distributed.session(args.device) as world:
        return _train(args, world)


def _train(args, world) -> int:
    """Under torchrun: DDP with --batch-size the global batch, a patch stream per rank, rank 0 saves."""
    import torch

    from ..data import PatchSampler, load_images
    from ..distributed import rank_seed
    from ..pretrained import resolve_checkpoint
    from ..priors.flow import PatchFlow

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.batch_size % world.world_size:
        raise ValueError(f"--batch-size ({args.batch_size}) must be a multiple of the number of processes "
                         f"({world.world_size})")
    _check_stopping_args(args)
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    flow = PatchFlow(
        patch_size=args.patch_size, n_blocks=args.n_blocks, hidden=args.hidden, clamp=args.clamp,
        mixing=args.mixing, seed=args.seed,
    )
    if args.init_from is not None:
        start_from = PatchFlow.load(resolve_checkpoint(args.init_from))
        if start_from.config != {**flow.config, "seed": start_from.config["seed"]}:
            raise ValueError(f"--init-from {args.init_from}: its architecture {start_from.config} differs from "
                             f"the one asked for {flow.config}")
        flow.load_state_dict(start_from.state_dict())
    flow = flow.to(device)
    local_batch = args.batch_size // world.world_size
    sampler = PatchSampler(load_images(args.images), args.patch_size, local_batch,
                           seed=rank_seed(args.seed, world.rank), device=device)
    validation = None
    if args.val_images is not None:  # the same fixed sample on every rank
        validation = PatchSampler(load_images(args.val_images), args.patch_size, 4096, seed=args.seed).sample(
            args.val_patches)
    start = time.perf_counter()
    history = flow.fit(
        sampler, args.steps, lr=args.lr, batch_size=args.batch_size, checkpoint=args.out,
        checkpoint_every=args.checkpoint_every, resume=args.resume, progress=not args.quiet,
        validation=validation, val_every=args.val_every, patience=args.patience, max_steps=args.max_steps,
    )
    if not world.is_main:
        return 0
    elapsed = time.perf_counter() - start
    last = f"{history[-1][1]:.4f}" if history else "n/a (no steps run)"
    reached = history[-1][0] if history else args.steps
    print(f"trained to step {reached} in {elapsed:.1f} s; NLL per patch (last window): {last}; saved {args.out}")
    if flow.validation_history:
        best = min(flow.validation_history, key=lambda h: (h[1], h[0]))
        print(f"validation NLL per patch: {flow.validation_history[-1][1]:.4f} at step {flow.validation_history[-1][0]}"
              f" (best {best[1]:.4f} at step {best[0]})")
    return 0


def _check_stopping_args(args) -> None:
    """The validation and patience flags, checked before the images are read."""
    if args.val_patches < 1:
        raise ValueError(f"--val-patches must be >= 1, got {args.val_patches}")
    if args.val_every < 1:
        raise ValueError(f"--val-every must be >= 1, got {args.val_every}")
    if args.patience is not None:
        if args.val_images is None:
            raise ValueError("--patience needs --val-images (the rule watches their NLL)")
        if args.patience < 1:
            raise ValueError(f"--patience must be >= 1, got {args.patience}")
        if args.max_steps is None or args.max_steps < args.steps:
            raise ValueError(f"--patience needs --max-steps >= --steps ({args.steps}), got {args.max_steps}")
    elif args.max_steps is not None:
        raise ValueError("--max-steps is the cap of --patience; it needs --patience")
    if args.init_from is not None and args.resume:
        raise ValueError("--init-from starts a new run; --resume continues --out: give one of them")
