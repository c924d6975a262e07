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
    from ..priors.flow import PatchFlow

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.batch_size % world.world_size:
        raise ValueError(f"--batch-size ({args.batch_size}) must be a multiple of the number of processes "
                         f"({world.world_size})")
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    flow = PatchFlow(
        patch_size=args.patch_size, n_blocks=args.n_blocks, hidden=args.hidden, clamp=args.clamp,
        mixing=args.mixing, seed=args.seed,
    ).to(device)
    local_batch = args.batch_size // world.world_size
    sampler = PatchSampler(load_images(args.images), args.patch_size, local_batch,
                           seed=rank_seed(args.seed, world.rank), device=device)
    start = time.perf_counter()
    history = flow.fit(
        sampler, args.steps, lr=args.lr, batch_size=args.batch_size, checkpoint=args.out,
        checkpoint_every=args.checkpoint_every, resume=args.resume, progress=not args.quiet,
    )
    if not world.is_main:
        return 0
    elapsed = time.perf_counter() - start
    last = f"{history[-1][1]:.4f}" if history else "n/a (no steps run)"
    print(f"trained to step {args.steps} in {elapsed:.1f} s; NLL per patch (last window): {last}; saved {args.out}")
    return 0
