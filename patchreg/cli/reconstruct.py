"""`patchreg reconstruct`: solve an inverse problem with the EPLL (GMM), PatchNR (flow) or chart prior.

Either `--image CLEAN` (the observation is simulated from it with --seed, and metrics are
computed against it) or `--observation Y` (a given measurement; metrics need --reference).
Writes the estimate as --output: a .png (clipped to [0, 1], 8 bits) with a float64 .npy of the
unclipped estimate beside it, or only that .npy; --metrics as JSON. Every option and input
file is checked before anything is loaded or computed.

Solvers (--solver): "hqs", the half-quadratic splitting of EPLL (epll and charts priors; one
patch step per --betas entry), or the gradient solvers "adam" / "lbfgs" of
patchreg.reconstruct (minimise the data NLL + lam * mean patch NLL; PatchNR works with Adam
only, its random patches break L-BFGS's line search). "auto": hqs for epll and charts, adam
for patchnr.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

TASKS = ("denoise", "deblur", "sr", "ct", "inpaint")
PRIORS = ("epll", "patchnr", "charts")
SOLVERS = ("auto", "hqs", "adam", "lbfgs")
GRADIENT_SOLVERS = ("adam", "lbfgs")
AUTO_SOLVER = {"epll": "hqs", "charts": "hqs", "patchnr": "adam"}
PRIOR_SOLVERS = {"epll": ("hqs", "adam", "lbfgs"), "charts": ("hqs", "adam", "lbfgs"), "patchnr": ("adam",)}
CHECKPOINT_KIND = {"epll": "gmm", "patchnr": "flow", "charts": "charts"}
PRETRAINED_NAME = {"epll": "gmm", "patchnr": "flow", "charts": "charts"}
OUTPUT_SUFFIXES = (".png", ".npy")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")  # patchreg.data.load_image's
FLOW_PRECISIONS = ("float32", "bfloat16")  # patchreg.priors.patchnr.PRECISIONS
CHART_PRECISIONS = ("float32", "bfloat16")  # patchreg.ops.charts.PRECISIONS

# HQS schedules of the tasks other than denoising: patchreg.priors.task_defaults (tuned on validation).
DEFAULT_STEPS = 300  # gradient solvers
DEFAULT_N_PATCHES = 40_000  # patchnr's random patches per iteration
# (chart, scale) pairs kept per patch: HQS keeps 1 (validation, sigma 25: 0.03 dB below 2 at 0.6x the time,
# bench/results/chart_prior_tuning_top.md); the gradient solvers 4 (log p error 0.94 nats/patch on clean patches)
DEFAULT_TOP_CHARTS = {"hqs": 1, "adam": 4, "lbfgs": 4}
# Gradient solvers (adam, lbfgs), every prior: lam weighs the mean patch NLL and defaults to
# SCALE[task] * n_patches / d, n_patches = (H - p + 1)(W - p + 1) and
# d the patch dimension. Scale 1 makes the objective EPLL's energy (data NLL + (1/d) * sum of the
# patch NLLs: Zoran & Weiss's data weight d / sigma^2, divided by d). On a 64x64 crop of
# `camera` (L-BFGS, 100 steps, bench/results/gmm_k200_p6) scale 1 gave 27.7 dB for denoising at
# 25/255 (HQS: 30.5 dB) and 27.4 dB for deblurring (HQS: 23.9 dB); 0.25 and 4 were not better
# for denoising. Tune per task.
DEFAULT_EPLL_LAM_SCALE = {"ct": 1.0, "sr": 1.0, "deblur": 1.0, "denoise": 1.0, "inpaint": 1.0}
DEFAULT_CHARTS_LAM_SCALE = {"ct": 1.0, "sr": 1.0, "deblur": 1.0, "denoise": 1.0, "inpaint": 1.0}
# PatchNR (a mean over N_p random patches) on the same scale. The paper's lam (700 for CT, 0.15 for
# x4 SR) belongs to its unweighted data terms: with our data NLL ||Ax - y||^2 / (2 sigma^2) 0.15 left
# a sigma-25 denoising visibly noisy (the demo's camera crop; lam = n_patches / d gave 28.3 dB there).
# Its scale, iterations and learning rate per task (sr2/sr4, ct_limited/ct_lowdose apart) are
# patchreg.priors.task_defaults.patchnr_settings: the paper code's iterations and rates, the scale chosen on
# validation at the paper's 40k patches (bench/results/patchnr_paper_set12.md).
LAM_SCALES = {"epll": DEFAULT_EPLL_LAM_SCALE, "charts": DEFAULT_CHARTS_LAM_SCALE}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reconstruct",
        help="reconstruct an image with the EPLL, PatchNR or chart prior",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--prior", choices=PRIORS, required=True)
    p.add_argument("--checkpoint", default=None,
                   help="GMM (epll), flow (patchnr) or chart-mixture (charts) checkpoint: a path or "
                        "pretrained:gmm / pretrained:flow / pretrained:charts (default: the prior's pretrained one)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="clean gray image (or (H, W) .npy); the observation is simulated from it")
    source.add_argument("--observation",
                        help="measurement as .npy or gray image: (H, W) image ((H/f, W/f) for sr) or "
                             "(angles, detectors) sinogram for ct; (1, H, W) and (1, 1, H, W) are squeezed")
    source.add_argument("--images", metavar="DIR",
                        help="a folder of clean images (as --image, one seed each: --seed + index); writes "
                             "--output-dir, skips images already done, sharded over ranks under torchrun")
    source.add_argument("--observations", metavar="DIR",
                        help="a folder of measurements (as --observation, matched by file name to --references "
                             "and --masks); writes --output-dir like --images")
    folder = p.add_argument_group("folder mode (--images or --observations)")
    folder.add_argument("--output-dir", help="the folder for the estimates (NAME.png/.npy), their metrics (NAME.json) "
                                             "and summary.md/.json")
    folder.add_argument("--references", metavar="DIR",
                        help="with --observations: clean images NAME.* for the metrics (every observation needs one)")
    folder.add_argument("--masks", metavar="DIR",
                        help="with --observations --task inpaint: the masks NAME.npy or NAME.png (nonzero = observed)")
    folder.add_argument("--batch-size", type=int, default=1,
                        help="images of the same size reconstructed together as one batch (default 1; every image "
                             "is solved as if alone, except that PatchNR's random patches are drawn per batch)")
    p.add_argument("--reference", help="clean image (.png etc. or .npy) for metrics when --observation is given")
    p.add_argument("--mask", help="inpainting mask .npy or image (nonzero = observed), with --observation")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="image size for --task ct with --observation (default: --reference's)")
    p.add_argument("--output",
                   help="(required unless --images) estimate as .png (clipped, 8 bits; a float64 .npy is written beside it) or .npy "
                        "(float64 only)")
    p.add_argument("--metrics", help="JSON file for PSNR, SSIM, time and settings")
    p.add_argument("--seed", type=int, default=0, help="seeds the simulated noise, mask and random patches")
    task = p.add_argument_group("task parameters")
    task.add_argument("--sigma", type=float, default=None,
                      help="Gaussian noise std on the [0, 1] intensity scale (default 25/255 for denoise, 0.01 "
                           "otherwise); 8-bit levels must be divided by 255")
    task.add_argument("--kernel-std", type=float, default=2.0,
                      help="Gaussian blur std in pixels (deblur: > 0; sr: >= 0, 0 = no blur)")
    task.add_argument("--factor", type=int, default=4, choices=(2, 4), help="super-resolution factor")
    task.add_argument("--angles", type=int, default=60, help="number of CT projection angles")
    task.add_argument("--angle-range", type=float, default=180.0,
                      help="CT angular range in degrees, in (0, 180] (< 180: limited angle)")
    task.add_argument("--photons", type=float, default=None,
                      help="CT: Poisson noise with this photon count instead of Gaussian")
    task.add_argument("--missing", type=float, default=0.5, help="inpainting: fraction of missing pixels, in [0, 1)")
    solver = p.add_argument_group("prior and solver parameters")
    solver.add_argument("--solver", choices=SOLVERS, default="auto",
                        help="hqs (epll, charts), adam (all) or lbfgs (epll, charts); auto: hqs for epll and "
                             "charts, adam for patchnr")
    solver.add_argument("--lam", type=float, default=None,
                        help="hqs: data weight (> 0; default d/sigma^2 for denoise, the tuned multiple of it for the "
                             "other tasks: patchreg.priors.task_defaults; ct with --photons: the weighted least "
                             "squares of the counts, whose weights carry the 1/sigma^2); adam/lbfgs: weight (>= 0) of the mean patch "
                             "NLL (default: a per-task scale times n_patches/d, EPLL's MAP energy)")
    solver.add_argument("--betas", type=str, default=None,
                        help="hqs: comma-separated splitting penalties (default (1/sigma^2)[1,4,8,16,32])")
    solver.add_argument("--steps", type=int, default=None, help=f"adam/lbfgs: iterations (default {DEFAULT_STEPS}; patchnr: the paper's "
                        "per task, 3000 for limited-angle CT)")
    solver.add_argument("--lr", type=float, default=None, help="adam/lbfgs: step size (default 0.01 adam, 1 lbfgs; patchnr: the paper's per task, "
                        "0.03 sr, 0.005 ct)")
    solver.add_argument("--n-patches", type=int, default=None,
                        help=f"patchnr, or charts with adam: random patches per iteration (patchnr default "
                             f"{DEFAULT_N_PATCHES}; charts default: all patches)")
    solver.add_argument("--top-charts", type=int, default=None,
                        help=f"charts: (chart, scale) pairs evaluated per patch (default per solver: {DEFAULT_TOP_CHARTS})")
    solver.add_argument("--precision", choices=("float32", "float64"), default="float32",
                        help="arithmetic of the solver (default float32: twice as fast as float64, PSNR equal to "
                             "1e-3 dB on Set12; float64 for ill-conditioned operators)")
    solver.add_argument("--flow-precision", choices=FLOW_PRECISIONS, default="float32",
                        help="patchnr: arithmetic of the flow's dense layers (default float32; bfloat16: 3-5x faster "
                             "on CPUs with AVX-512-BF16 / AMX, the image and the log-determinants stay float32; "
                             "see patchreg.priors.PatchNR)")
    solver.add_argument("--chart-precision", choices=CHART_PRECISIONS, default="float32",
                        help="charts with --solver adam/lbfgs: arithmetic of the chart kernel's decoder Jacobian "
                             "(default float32; bfloat16: AMX tile products, about 1.3x faster on CPUs with AMX-BF16, "
                             "log p within about 1e-3 nats; see patchreg.priors.ChartPrior)")
    solver.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    solver.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the model and the solver run (cuda: the current GPU; under torchrun GPU LOCAL_RANK "
                             "with the NCCL backend)")
    solver.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------ option checks
def _default_sigma(task: str) -> float:
    return 25 / 255 if task == "denoise" else 0.01


def _check_number(name: str, value, low=None, high=None, low_open=True, high_open=False) -> None:
    """value finite and within the bounds (open or closed); the message names the option and the bound."""
    if value is None:
        return
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    if low is not None and high is not None:
        bound = f"in {lo}, {hi}"
    elif low is not None:
        bound = f"{'>' if low_open else '>='} {low:g}"
    else:
        bound = f"{'<' if high_open else '<='} {high:g}"
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"{name} must be {bound} (and finite), got {value!r}")


def _parse_betas(text: str) -> list[float]:
    message = f"--betas must be a comma-separated list of positive numbers (e.g. 100,400,1600), got {text!r}"
    try:
        betas = [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(message) from None
    if not betas or any(not (math.isfinite(b) and b > 0) for b in betas):
        raise ValueError(message)
    return betas


def _check_options(args) -> None:
    """Every numeric option and combination, before any work; resolves args.solver, .steps, .lr defaults."""
    _check_number("--sigma", args.sigma, 0)
    if args.sigma is not None and args.task != "ct" and args.sigma >= 1:
        raise ValueError(
            f"--sigma must be < 1 for --task {args.task} (noise std on the [0, 1] intensity scale), got "
            f"{args.sigma:g}; for a noise level in 8-bit units divide by 255 (e.g. --sigma {args.sigma / 255:.4g})"
        )
    if args.task == "sr":
        _check_number("--kernel-std", args.kernel_std, 0, low_open=False)
    else:
        _check_number("--kernel-std", args.kernel_std, 0)
    _check_number("--angles", args.angles, 1, low_open=False)
    _check_number("--angle-range", args.angle_range, 0, 180)
    _check_number("--photons", args.photons, 0)
    _check_number("--missing", args.missing, 0, 1, low_open=False, high_open=True)
    _check_number("--steps", args.steps, 0, low_open=False)
    _check_number("--lr", args.lr, 0)
    _check_number("--n-patches", args.n_patches, 1, low_open=False)
    _check_number("--top-charts", args.top_charts, 1, low_open=False)
    _check_number("--threads", args.threads, 1, low_open=False)
    _check_number("--seed", args.seed, 0, low_open=False)
    if args.image_size is not None:
        for which, value in zip(("H", "W"), args.image_size):
            if value < 1:
                raise ValueError(f"--image-size must be two ints >= 1 (H W), got {which} = {value}")
    args.betas_list = _parse_betas(args.betas) if args.betas is not None else None

    solver = AUTO_SOLVER[args.prior] if args.solver == "auto" else args.solver
    if solver not in PRIOR_SOLVERS[args.prior]:
        why = {
            "patchnr": "it scores random patches, which break L-BFGS's line search, and has no HQS patch step",
        }.get(args.prior, "")
        raise ValueError(
            f"--prior {args.prior} works only with --solver {' or '.join(PRIOR_SOLVERS[args.prior])}"
            f"{' (' + why + ')' if why else ''}; got --solver {solver}"
        )
    args.solver = solver
    if solver == "hqs":
        _check_number("--lam", args.lam, 0)  # the data weight of the splitting
        for option, value in (("--steps", args.steps), ("--lr", args.lr)):
            if value is not None:
                raise ValueError(f"{option} applies only to --solver adam or lbfgs; --solver hqs runs one patch step "
                                 f"per --betas entry")
    else:
        _check_number("--lam", args.lam, 0, low_open=False)
        if args.betas is not None:
            raise ValueError(f"--betas applies only to --solver hqs, got --solver {solver} (use --steps and --lr)")
        if args.prior == "patchnr":  # the paper's iterations and learning rate per task
            steps, lr, _ = _patchnr_settings(args)
            args.steps = steps if args.steps is None else args.steps
            args.lr = lr if args.lr is None else args.lr
        args.steps = DEFAULT_STEPS if args.steps is None else args.steps
    if args.n_patches is not None:
        if args.prior == "epll" or (args.prior == "charts" and solver != "adam"):
            raise ValueError(
                "--n-patches applies only to --prior patchnr, or --prior charts with --solver adam "
                f"(got --prior {args.prior} --solver {solver}: it uses all patches"
                f"{'; random patches would break L-BFGS line search' if solver == 'lbfgs' else ''})"
            )
    if getattr(args, "flow_precision", "float32") != "float32" and args.prior != "patchnr":
        raise ValueError(f"--flow-precision applies only to --prior patchnr, got --prior {args.prior}")
    if args.top_charts is not None and args.prior != "charts":
        raise ValueError(f"--top-charts applies only to --prior charts, got --prior {args.prior}")
    if getattr(args, "chart_precision", "float32") != "float32":
        if args.prior != "charts" or solver == "hqs":
            raise ValueError("--chart-precision applies only to --prior charts with --solver adam or lbfgs, got "
                             f"--prior {args.prior} --solver {solver}")
        if args.precision != "float32":
            raise ValueError(f"--chart-precision bfloat16 needs --precision float32, got --precision {args.precision}")
        from ..ops.charts import charts_bf16_supported

        if not charts_bf16_supported():
            raise ValueError("--chart-precision bfloat16 needs a CPU with AMX-BF16 and the compiled extension "
                             "(patchreg.ops.charts_bf16_supported() is False here); use --chart-precision float32")

    if args.observation is not None:
        if args.mask is not None and args.task != "inpaint":
            raise ValueError("--mask applies only to --task inpaint")
        if args.task == "inpaint" and args.mask is None:
            raise ValueError("--task inpaint with --observation needs --mask MASK.npy (nonzero = observed)")
        if args.image_size is not None and args.task != "ct":
            raise ValueError(f"--image-size applies only to --task ct (the sinogram does not give the image size), "
                             f"got --task {args.task}")
        if args.task == "ct" and args.image_size is None and args.reference is None:
            raise ValueError("--task ct with --observation needs --image-size H W or --reference")
    else:
        for option, value, why in (
            ("--mask", args.mask, "with --image the mask is drawn at random (--missing, --seed)"),
            ("--reference", args.reference, "with --image, the image is the reference"),
            ("--image-size", args.image_size, "with --image, the image gives the size"),
        ):
            if value is not None:
                raise ValueError(f"{option} applies only with --observation; {why}")


def _check_output_path(option: str, path: Path, suffixes: tuple[str, ...]) -> None:
    """Suffix, not a folder, and a parent folder that exists or can be created."""
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{option} must end in {' or '.join(suffixes)}, got {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a folder; give a file name")
    folder = path.absolute().parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option}: cannot create the folder {str(folder)!r}: {str(existing)!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option}: the folder {str(existing)!r} is not writable")


def _output_paths(args) -> list[Path]:
    """The files this run writes."""
    out = Path(args.output)
    written = [out]
    if out.suffix.lower() == ".png":
        written.append(out.with_suffix(".npy"))
    if args.metrics:
        written.append(Path(args.metrics))
    return written


def _check_outputs(args) -> None:
    _check_output_path("--output", Path(args.output), OUTPUT_SUFFIXES)
    if args.metrics:
        _check_output_path("--metrics", Path(args.metrics), (".json",))
    inputs = {"--image": args.image, "--observation": args.observation, "--reference": args.reference,
              "--mask": args.mask}
    for path in _output_paths(args):
        for option, given in inputs.items():
            if given is not None and Path(given).resolve() == path.resolve():
                raise ValueError(f"--output/--metrics would overwrite {option} {given!r} (writing {str(path)!r})")


def _check_input_files(args) -> None:
    """Every input file exists (FileNotFoundError naming the option) and has a readable kind of name."""
    for option, value, suffixes in (
        ("--image", args.image, IMAGE_SUFFIXES + (".npy",)),
        ("--observation", args.observation, IMAGE_SUFFIXES + (".npy",)),
        ("--reference", args.reference, IMAGE_SUFFIXES + (".npy",)),
        ("--mask", args.mask, IMAGE_SUFFIXES + (".npy",)),
    ):
        if value is None:
            continue
        path = Path(value)
        if path.is_dir():
            raise ValueError(f"{option} {value!r} is a folder, not a file")
        if not path.is_file():
            raise FileNotFoundError(f"{option} {value!r}: no such file")
        if path.suffix.lower() not in suffixes:
            raise ValueError(f"{option} {value!r} must end in one of {', '.join(suffixes)}")


def _checkpoint_kind(path: Path) -> str:
    """The kind in a patchreg checkpoint's header (read without loading the tensors)."""
    import json

    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        header = json.loads(metadata["patchreg"])
        return str(header["kind"])
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
        raise ValueError(
            f"--checkpoint {str(path)!r} is not a patchreg checkpoint (not a safetensors file with a patchreg "
            f"header: {exc})"
        ) from None


def _resolve_checkpoint(args) -> Path:
    from ..pretrained import resolve_checkpoint

    spec = args.checkpoint if args.checkpoint is not None else f"pretrained:{PRETRAINED_NAME[args.prior]}"
    try:
        path = resolve_checkpoint(spec)
    except FileNotFoundError as exc:
        hint = "" if args.checkpoint is not None else " (the default for --prior " + args.prior + ")"
        raise FileNotFoundError(f"--checkpoint{hint}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"--checkpoint: {exc}") from None
    if path.is_dir():
        raise ValueError(f"--checkpoint {str(path)!r} is a folder, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {str(path)!r}: no such file")
    kind = _checkpoint_kind(path)
    expected = CHECKPOINT_KIND[args.prior]
    if kind != expected:
        owner = {v: k for k, v in CHECKPOINT_KIND.items()}.get(kind)
        hint = f" (a {kind!r} checkpoint is for --prior {owner})" if owner else ""
        raise ValueError(
            f"--checkpoint {str(path)!r} holds a {kind!r} checkpoint, expected {expected!r} for --prior "
            f"{args.prior}{hint}"
        )
    return path


# ------------------------------------------------------------------------------------ inputs
def _read_array(option: str, path: str):
    """A .npy file (no pickles) or a gray image as a numpy array."""
    import numpy as np

    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        from ..data import load_image

        try:
            return load_image(path)
        except (ValueError, FileNotFoundError) as exc:
            raise ValueError(f"{option}: {exc}") from None
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{option} {path!r} is not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{option} {path!r} must hold one array (.npy), not an archive of several (.npz)")
    return array


def _as_2d(option: str, array, what: str = "(H, W) image"):
    """array as float64 (H, W): (1, H, W) and (1, 1, H, W) are squeezed; finite values only."""
    import numpy as np

    shape = tuple(array.shape)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{option} must hold real numbers, got dtype {array.dtype}")
    if array.ndim == 3 and shape[0] == 1:
        array = array[0]
    elif array.ndim == 4 and shape[:2] == (1, 1):
        array = array[0, 0]
    if array.ndim != 2:
        raise ValueError(f"{option} must be a 2-D {what} (or (1, H, W) / (1, 1, H, W)), got shape {shape}")
    if 0 in array.shape:
        raise ValueError(f"{option} is empty, shape {shape}")
    array = array.astype(np.float64)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise ValueError(f"{option} holds {bad} non-finite values (NaN or inf) out of {array.size}")
    return array


def _build_physics(args, image_shape, mask=None):
    """The forward operator of --task for images of shape (..., H, W), and sigma."""
    from .. import physics as ph

    sigma = args.sigma if args.sigma is not None else _default_sigma(args.task)
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
    if mask is not None:
        return ph.Inpainting(mask, noise), sigma
    return ph.Inpainting.random((H, W), args.missing, seed=args.seed, noise_model=noise), sigma


def _load_problem(args):
    """(clean image or None, observation y, physics, sigma, image shape (H, W)); tensors (1, 1, ...) float64."""
    import numpy as np
    import torch

    from ..data import to_tensor
    from ..physics import simulate

    if args.image is not None:
        image = _as_2d("--image", _read_array("--image", args.image))
        H, W = image.shape
        if args.task == "sr" and (H % args.factor or W % args.factor):
            raise ValueError(f"--image is {H}x{W}, not a multiple of --factor {args.factor} in both sizes")
        clean = to_tensor(image)
        physics, sigma = _build_physics(args, clean.shape)
        return clean, simulate(clean, physics, seed=args.seed), physics, sigma, (H, W)

    what = "(angles, detectors) sinogram" if args.task == "ct" else "(H, W) image"
    observation = _as_2d("--observation", _read_array("--observation", args.observation), what)
    clean = None
    if args.reference is not None:
        clean = _as_2d("--reference", _read_array("--reference", args.reference))
    h, w = observation.shape
    if args.task == "ct":
        if args.image_size is not None:
            shape = tuple(args.image_size)
            if clean is not None and clean.shape != shape:
                raise ValueError(f"--reference is {clean.shape[0]}x{clean.shape[1]} but --image-size is "
                                 f"{shape[0]} {shape[1]}")
        else:
            shape = clean.shape
        if h != args.angles:
            raise ValueError(f"--observation is a sinogram of shape {(h, w)} (angles, detectors): {h} angles, "
                             f"but --angles is {args.angles}")
    elif args.task == "sr":
        shape = (h * args.factor, w * args.factor)
    else:
        shape = (h, w)
    if clean is not None and args.task != "ct" and clean.shape != shape:
        fits = f" (--observation {h}x{w} times --factor {args.factor})" if args.task == "sr" else " (--observation's)"
        raise ValueError(f"--reference is {clean.shape[0]}x{clean.shape[1]} but the image is "
                         f"{shape[0]}x{shape[1]}{fits}")
    mask = None
    if args.task == "inpaint":
        mask_array = _as_2d("--mask", _read_array("--mask", args.mask))
        if mask_array.shape != shape:
            raise ValueError(f"--mask has shape {mask_array.shape} but --observation has shape {shape}")
        mask = torch.from_numpy(mask_array != 0)
        if not bool(mask.any()):
            raise ValueError("--mask observes no pixel (all zeros; nonzero = observed)")
    physics, sigma = _build_physics(args, shape, mask)
    if args.task == "ct" and w != physics.n_detectors:
        raise ValueError(
            f"--observation is a sinogram of shape {(h, w)} (angles, detectors) but a {shape[0]}x{shape[1]} "
            f"image (--image-size or --reference) is measured on {physics.n_detectors} detectors "
            f"(sinogram shape ({args.angles}, {physics.n_detectors})); check --image-size"
        )
    y = torch.from_numpy(np.ascontiguousarray(observation))[None, None]
    return (None if clean is None else to_tensor(clean)), y, physics, sigma, tuple(shape)


# ------------------------------------------------------------------------------------ priors
def check_device(args) -> None:
    """--device cuda needs a visible GPU (checked before any loading)."""
    import torch

    if getattr(args, "device", "cpu") == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu)")


def solver_device(args):
    """The torch device of --device (cuda: the current GPU, which torchrun's session sets per rank)."""
    import torch

    if getattr(args, "device", "cpu") == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _load_model(args, checkpoint: Path):
    """The GMM, flow or PatchCharts in the checkpoint, on --device; load errors name --checkpoint."""
    if args.prior == "epll":
        from ..priors import GMM as loader
    elif args.prior == "patchnr":
        try:
            from ..priors import PatchFlow as loader
        except ImportError as exc:  # the flow prior is a separate module of the package
            raise ValueError(f"--prior patchnr needs patchreg.priors.PatchFlow, which is unavailable: {exc}") from None
    else:
        loader = _charts_api()[0]
    try:
        model = loader.load(checkpoint)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"--checkpoint {str(checkpoint)!r}: {exc}") from None
    device = solver_device(args)
    return model if device.type == "cpu" else model.to(device)  # loaded on the CPU


def _charts_api():
    """(PatchCharts, ChartPrior, charts_restore), imported only when --prior charts is used."""
    try:
        from ..priors import ChartPrior, PatchCharts, charts_restore
    except ImportError as exc:
        raise ValueError(f"--prior charts needs patchreg.priors.PatchCharts, ChartPrior and charts_restore, "
                         f"which are unavailable in this version: {exc}") from None
    return PatchCharts, ChartPrior, charts_restore


def _gradient_lam(args, model, image_shape) -> float:
    """Default lam of the gradient solvers (see DEFAULT_*_LAM*)."""
    scale = _patchnr_settings(args)[2] if args.prior == "patchnr" else LAM_SCALES[args.prior][args.task]
    p = model.patch_size
    H, W = image_shape[-2:]
    dim = getattr(model, "dim", p * p)
    return scale * (H - p + 1) * (W - p + 1) / dim


def _patchnr_settings(args) -> tuple[int, float, float]:
    from ..priors.task_defaults import patchnr_settings

    return patchnr_settings(_tuned_task(args))


def _tuned_task(args) -> str:
    """The task's name in patchreg.priors.task_defaults (CT: the low-dose schedule with --photons, else the
    limited-angle one)."""
    ct = "ct_lowdose" if args.photons is not None else "ct_limited"
    return {"sr": f"sr{args.factor}", "ct": ct}.get(args.task, args.task)


def _solve(args, model, y, physics, sigma, image_shape):
    """(estimate (1, 1, H, W), lam used or None for the HQS default)."""
    import torch

    from ..priors.hqs import weighted_problem
    from ..priors.task_defaults import POISSON_TASKS, hqs_betas, hqs_lam

    progress = not args.quiet
    y = y.to(device=solver_device(args), dtype=getattr(torch, args.precision))  # solvers: y's dtype and device
    if args.solver == "hqs":
        if args.betas_list is not None:
            betas = args.betas_list
        else:
            betas = None if args.task == "denoise" else hqs_betas(args.prior, _tuned_task(args))
        x0 = physics.initial_guess(y) if args.task in ("sr", "ct", "deblur") else None
        op = None if args.task == "denoise" else physics
        if _tuned_task(args) in POISSON_TASKS:  # the weighted least squares of the counts: weights carry 1/sigma^2
            op, y = weighted_problem(physics, y)
            sigma = 1.0
        lam = args.lam
        if lam is None and args.task != "denoise":
            lam = hqs_lam(args.prior, _tuned_task(args), model.dim, sigma)
        if args.prior == "epll":
            from ..priors import epll_restore

            return epll_restore(y, op, model, sigma, betas=betas, lam=lam, x0=x0, progress=progress), lam
        charts_restore = _charts_api()[2]
        top = DEFAULT_TOP_CHARTS["hqs"] if args.top_charts is None else args.top_charts
        x = charts_restore(y, op, model, sigma, betas=betas, lam=lam, x0=x0, top_charts=top, progress=progress)
        return x, lam

    from ..reconstruct import reconstruct

    if args.prior == "epll":
        prior = model  # GMM.nll(x): mean patch NLL over all patches, differentiable
    elif args.prior == "patchnr":
        from ..priors import PatchNR

        n_patches = DEFAULT_N_PATCHES if args.n_patches is None else args.n_patches
        precision = getattr(args, "flow_precision", "float32")
        prior = PatchNR(model, n_patches=n_patches, seed=args.seed, precision=precision)
    else:
        ChartPrior = _charts_api()[1]
        top = DEFAULT_TOP_CHARTS[args.solver] if args.top_charts is None else args.top_charts
        prior = ChartPrior(model, stride=1, n_patches=args.n_patches, top_charts=top, reduction="mean", seed=args.seed,
                           precision=getattr(args, "chart_precision", "float32"))
    lam = _gradient_lam(args, model, image_shape) if args.lam is None else args.lam
    x, _ = reconstruct(y, physics, prior, lam, solver=args.solver, steps=args.steps, lr=args.lr, progress=progress)
    return x, lam


def _check_patch_fits(model, image_shape, args) -> None:
    p = getattr(model, "patch_size", None)
    H, W = image_shape[-2:]
    if isinstance(p, int) and (H < p or W < p):
        source = "--image" if args.image is not None else "the image (--observation)"
        raise ValueError(f"{source} is {H}x{W}, smaller than the {p}x{p} patches of --checkpoint")


# ------------------------------------------------------------------------------------ outputs
def _write_outputs(args, x, clean, seconds, sigma, lam, extra: dict | None = None) -> dict:
    import io

    import numpy as np

    from ..io import atomic_write_bytes, atomic_write_json
    from ..metrics import psnr, ssim

    out = Path(args.output)
    image = x[0, 0].detach().cpu().numpy().astype(np.float64)
    buffer = io.BytesIO()
    np.save(buffer, image)
    if out.suffix.lower() == ".png":
        import imageio.v3 as iio

        quantised = (np.clip(np.nan_to_num(image), 0, 1) * 255).round().astype(np.uint8)
        atomic_write_bytes(out, iio.imwrite("<bytes>", quantised, extension=".png"))
        atomic_write_bytes(out.with_suffix(".npy"), buffer.getvalue())
    else:
        atomic_write_bytes(out, buffer.getvalue())
    metrics = {
        "task": args.task, "prior": args.prior, "solver": args.solver, "checkpoint": str(args.checkpoint_path),
        "sigma": sigma, "lam": lam, "seed": args.seed, "seconds": seconds, **(extra or {}),
    }
    if clean is not None:
        metrics["psnr"] = float(psnr(x, clean)[0])
        metrics["ssim"] = float(ssim(x, clean)[0])
    if args.metrics:
        atomic_write_json(args.metrics, metrics)
    return metrics


def run(args) -> int:
    if getattr(args, "images", None) is not None or getattr(args, "observations", None) is not None:
        from .reconstruct_folder import run_folder

        return run_folder(args)
    for option, value in (("--output-dir", getattr(args, "output_dir", None)),
                          ("--references", getattr(args, "references", None)),
                          ("--masks", getattr(args, "masks", None))):
        if value is not None:
            raise ValueError(f"{option} applies only with --images DIR or --observations DIR")
    if getattr(args, "batch_size", 1) != 1:
        raise ValueError(f"--batch-size applies only with --images DIR or --observations DIR, got {args.batch_size}")
    if args.output is None:
        raise ValueError("--output is required (or --images DIR / --observations DIR with --output-dir)")
    # Everything that can be checked without loading or computing, first.
    _check_options(args)
    _check_outputs(args)
    _check_input_files(args)
    check_device(args)
    args.checkpoint_path = _resolve_checkpoint(args)

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    clean, y, physics, sigma, image_shape = _load_problem(args)
    model = _load_model(args, args.checkpoint_path)
    metrics = _solve_and_write(args, model, clean, y, physics, sigma, image_shape)
    seconds = metrics["seconds"]
    summary = f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}, " if "psnr" in metrics else ""
    print(f"{args.task} with {args.prior} ({args.solver}): {summary}{seconds:.2f} s; wrote {args.output}")
    return 0


def _solve_and_write(args, model, clean, y, physics, sigma, image_shape) -> dict:
    """Reconstruct one loaded problem with a loaded model, write --output (and --metrics); returns the metrics."""
    import torch

    _check_patch_fits(model, image_shape, args)
    start = time.perf_counter()
    x, lam = _solve(args, model, y, physics, sigma, image_shape)
    seconds = time.perf_counter() - start
    x = x.double().cpu()  # metrics and the .npy output are float64 whatever --precision was
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"the reconstruction diverged (non-finite values) with --solver {args.solver}; "
                         "try a smaller --lr or --lam, or --solver hqs")
    return _write_outputs(args, x, clean, seconds, sigma, lam)
