"""`patchreg reconstruct`: solve an inverse problem with the EPLL (GMM) or PatchNR (flow) prior.

Either `--image CLEAN` (the observation is simulated from it with --seed, and metrics are
computed against it) or `--observation Y.npy` (a given measurement; metrics need --reference).
Writes the estimate as --output (png, clipped to [0, 1]) and as a .npy beside it (float64,
unclipped), and --metrics as JSON.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

TASKS = ("denoise", "deblur", "sr", "ct", "inpaint")
PRIORS = ("epll", "patchnr")
# PatchNR's lam per task (mean patch NLL): the paper's values for CT and x4 SR; tune the others.
# EPLL inpainting: holes need a splitting schedule that starts at a large effective noise (0.3).
INPAINT_BETAS = [2.0**i / 0.3**2 for i in range(6)]
DEFAULT_PATCHNR_LAM = {"ct": 700.0, "sr": 0.15, "deblur": 0.15, "denoise": 0.15, "inpaint": 0.15}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reconstruct",
        help="reconstruct an image with the EPLL or PatchNR prior",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--prior", choices=PRIORS, required=True)
    p.add_argument("--checkpoint", required=True, help="GMM checkpoint (epll) or flow checkpoint (patchnr)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="clean gray image; the observation is simulated from it")
    source.add_argument("--observation", help="measurement as .npy ((H, W) image or (angles, detectors) sinogram)")
    p.add_argument("--reference", help="clean image for metrics when --observation is given")
    p.add_argument("--mask", help="inpainting mask .npy (nonzero = observed) for --observation")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="image size for --task ct with --observation")
    p.add_argument("--output", required=True, help="estimate as .png (a float .npy is written beside it)")
    p.add_argument("--metrics", help="JSON file for PSNR, SSIM, time and settings")
    p.add_argument("--seed", type=int, default=0, help="seeds the simulated noise, mask and PatchNR's patches")
    task = p.add_argument_group("task parameters")
    task.add_argument("--sigma", type=float, default=None,
                      help="Gaussian noise std on the [0, 1] scale (default 25/255 for denoise, 0.01 otherwise)")
    task.add_argument("--kernel-std", type=float, default=2.0, help="Gaussian blur std in pixels (deblur, sr)")
    task.add_argument("--factor", type=int, default=4, choices=(2, 4), help="super-resolution factor")
    task.add_argument("--angles", type=int, default=60, help="number of CT projection angles")
    task.add_argument("--angle-range", type=float, default=180.0, help="CT angular range in degrees (< 180: limited angle)")
    task.add_argument("--photons", type=float, default=None, help="CT: Poisson noise with this photon count instead of Gaussian")
    task.add_argument("--missing", type=float, default=0.5, help="inpainting: fraction of missing pixels")
    solver = p.add_argument_group("prior and solver parameters")
    solver.add_argument("--lam", type=float, default=None,
                        help="regularisation weight (patchnr: weight of the mean patch NLL; epll: data weight, default d/sigma^2)")
    solver.add_argument("--betas", type=str, default=None,
                        help="epll: comma-separated splitting penalties (default (1/sigma^2)[1,4,8,16,32])")
    solver.add_argument("--steps", type=int, default=300, help="patchnr: Adam iterations")
    solver.add_argument("--lr", type=float, default=None, help="patchnr: Adam step size")
    solver.add_argument("--n-patches", type=int, default=40_000, help="patchnr: random patches per iteration")
    solver.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    solver.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _default_sigma(task: str) -> float:
    return 25 / 255 if task == "denoise" else 0.01


def _build_physics(args, image_shape):
    """The forward operator of --task for images of shape (1, 1, H, W)."""
    from .. import physics as ph

    sigma = args.sigma if args.sigma is not None else _default_sigma(args.task)
    if not sigma > 0:
        raise ValueError(f"--sigma must be > 0, got {sigma}")
    noise = ph.GaussianNoise(sigma)
    H, W = image_shape[-2:]
    if args.task == "denoise":
        return ph.Denoising(noise), sigma
    if args.task == "deblur":
        return ph.Blur(std=args.kernel_std, noise_model=noise), sigma
    if args.task == "sr":
        return ph.SuperResolution(args.factor, kernel_std=args.kernel_std, noise_model=noise), sigma
    if args.task == "ct":
        if args.photons is not None:
            noise = ph.PoissonNoise(args.photons)
        return ph.Tomography((H, W), args.angles, math.radians(args.angle_range), noise_model=noise), sigma
    if args.observation is not None:
        if args.mask is None:
            raise ValueError("--task inpaint with --observation needs --mask MASK.npy")
        import numpy as np
        import torch

        mask = torch.from_numpy(np.load(args.mask) != 0)
        return ph.Inpainting(mask, noise), sigma
    return ph.Inpainting.random((H, W), args.missing, seed=args.seed, noise_model=noise), sigma


def _load_problem(args):
    """(clean image or None, observation y, physics, sigma), all (1, 1, ...) float64 tensors."""
    import numpy as np
    import torch

    from ..data import load_image, to_tensor
    from ..physics import simulate

    if args.image is not None:
        clean = to_tensor(load_image(args.image))
        physics, sigma = _build_physics(args, clean.shape)
        return clean, simulate(clean, physics, seed=args.seed), physics, sigma
    y = torch.from_numpy(np.load(args.observation)).to(torch.float64)
    y = y.reshape(1, 1, *y.shape[-2:]) if y.dim() == 2 else y
    clean = to_tensor(load_image(args.reference)) if args.reference else None
    if args.task == "ct":
        if args.image_size is None and clean is None:
            raise ValueError("--task ct with --observation needs --image-size H W or --reference")
        shape = tuple(args.image_size) if args.image_size else clean.shape[-2:]
    elif args.task == "sr":
        shape = (y.shape[-2] * args.factor, y.shape[-1] * args.factor)
    else:
        shape = y.shape[-2:]
    physics, sigma = _build_physics(args, shape)
    return clean, y, physics, sigma


def _run_epll(args, y, physics, sigma):
    from ..priors import GMM, epll_restore

    gmm = GMM.load(args.checkpoint)
    if args.betas is not None:
        betas = [float(b) for b in args.betas.split(",")]
    else:
        betas = INPAINT_BETAS if args.task == "inpaint" else None
    op = None if args.task == "denoise" else physics
    x0 = physics.initial_guess(y) if args.task in ("sr", "ct", "deblur") else None
    return epll_restore(y, op, gmm, sigma, betas=betas, lam=args.lam, x0=x0, progress=not args.quiet)


def _run_patchnr(args, y, physics):
    from ..reconstruct import reconstruct

    try:
        from ..priors import PatchFlow, PatchNR
    except ImportError as exc:  # the flow prior is a separate module of the package
        raise ValueError(f"--prior patchnr needs patchreg.priors.PatchFlow, which is unavailable: {exc}") from None
    flow = PatchFlow.load(args.checkpoint)
    prior = PatchNR(flow, n_patches=args.n_patches, seed=args.seed)
    lam = DEFAULT_PATCHNR_LAM[args.task] if args.lam is None else args.lam
    x, _ = reconstruct(y, physics, prior, lam, steps=args.steps, lr=args.lr, progress=not args.quiet)
    return x


def _write_outputs(args, x, clean, seconds, sigma) -> dict:
    import io

    import imageio.v3 as iio
    import numpy as np

    from ..io import atomic_write_bytes, atomic_write_json
    from ..metrics import psnr, ssim

    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--output must end in .png, got {str(out)!r}")
    image = x[0, 0].detach().cpu().numpy()
    quantised = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    atomic_write_bytes(out, iio.imwrite("<bytes>", quantised, extension=".png"))
    buffer = io.BytesIO()
    np.save(buffer, image)
    atomic_write_bytes(out.with_suffix(".npy"), buffer.getvalue())
    metrics = {
        "task": args.task, "prior": args.prior, "checkpoint": str(args.checkpoint), "sigma": sigma,
        "seed": args.seed, "seconds": seconds,
    }
    if clean is not None:
        metrics["psnr"] = float(psnr(x, clean)[0])
        metrics["ssim"] = float(ssim(x, clean)[0])
    if args.metrics:
        atomic_write_json(args.metrics, metrics)
    return metrics


def run(args) -> int:
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.observation is not None and args.mask is not None and args.task != "inpaint":
        raise ValueError("--mask applies only to --task inpaint")
    clean, y, physics, sigma = _load_problem(args)
    start = time.perf_counter()
    if args.prior == "epll":
        x = _run_epll(args, y, physics, sigma)
    else:
        x = _run_patchnr(args, y, physics)
    seconds = time.perf_counter() - start
    metrics = _write_outputs(args, x, clean, seconds, sigma)
    summary = f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}, " if "psnr" in metrics else ""
    print(f"{args.task} with {args.prior}: {summary}{seconds:.2f} s; wrote {args.output}")
    return 0
