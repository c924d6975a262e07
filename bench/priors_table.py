"""The head-to-head on Set12: EPLL, the chart prior, PatchNR and BM3D, cell by cell, resumable.

Tasks (images in [0, 1], the 8-bit files / 255; noise seeded per image: seed + image index):
  denoise15/25/50   Gaussian noise sigma = 15, 25, 50 /255;
  deblur            Gaussian blur std 2 px, noise 0.01;
  sr2, sr4          PatchNR's operator (blur std s/2, stride s), noise 0.01;
  ct_limited        the test image resized to --ct-size, 60 angles over 120 degrees, noise CT_NOISE;
  ct_lowdose        the test image resized to --ct-size, 60 angles over 180 degrees, Poisson counts of
                    LOWDOSE_PHOTONS photons (LoDoPaB-CT's 4096; attenuation 0.02: about 2.3% noise on the
                    sinogram); the splitting priors use the weighted least squares of the counts
                    (patchreg.priors.hqs.weighted_problem);
  inpaint           50% of the pixels missing (seeded mask), noise 0.01.
Priors (all trained on the training split of train400; checkpoints by name or path):
  epll        half-quadratic splitting with the GMM (patchreg.priors.epll_restore; defaults of the paper
              for denoising: lam = d / sigma^2, beta = (1/sigma^2)[1, 4, 8, 16, 32]; the other tasks
              the schedule of patchreg.priors.task_defaults, tuned on validation by bench/hqs_task_tuning.py);
  charts      half-quadratic splitting with the chart prior (patchreg.priors.charts_restore), the same
              schedules, --top-charts (chart, scale) pairs per patch (rows store their settings);
  charts_lbfgs  the chart prior's R(x) (all patches, ChartPrior) minimised by L-BFGS, --lbfgs-steps;
  patchnr     Adam on the image with the flow (patchreg.reconstruct), --patchnr-patches random
              patches and --patchnr-steps iterations at learning rate --patchnr-lr (defaults: the
              paper's code, patchreg.priors.task_defaults: 40k patches, 300 iterations, 3000 for
              limited-angle CT; lr 0.03 for super-resolution, 0.005 for CT, 0.01 elsewhere; reduced
              settings are printed in the table); --device cuda runs it on the GPU;
  bm3d        the `bm3d` package (bench-only dependency) with the true sigma: `bm3d.bm3d` for denoising,
              `bm3d.bm3d_deblurring` (its deblurring entry point, circular blur as ours) for deblur.
PSNR on the full image (no border cropped) with data range 1 after clipping to [0, 1]; SSIM by
scikit-image; wall time and peak resident memory of the reconstruction (patchreg.metrics.measure,
sampled RSS, same process).

    python bench/priors_table.py --tasks denoise25 --priors epll charts bm3d --out bench/results/priors_set12
    python bench/priors_table.py --test-set phantom --tasks ct_lowdose ct_limited --priors epll charts \
        --out bench/results/priors_phantom_ct
--test-set phantom: the Shepp-Logan phantom at --ct-size (patchreg.physics.shepp_logan), CT tasks only, noise seed
--seed (its image index is 0).
Every finished cell is appended to OUT.jsonl at once; a rerun skips the cells already there.
Writes OUT.md (means per task and prior, then per image) and OUT_TASK.png figure grids.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patchreg import physics  # noqa: E402
from patchreg.data import load_set12, to_tensor  # noqa: E402
from patchreg.metrics import measure, psnr, ssim  # noqa: E402
from patchreg.pretrained import resolve_checkpoint  # noqa: E402
from patchreg.priors.hqs import weighted_problem  # noqa: E402
from patchreg.priors.task_defaults import hqs_betas, hqs_lam, patchnr_settings, schedule_from_start  # noqa: E402

TASKS = ("denoise15", "denoise25", "denoise50", "deblur", "sr2", "sr4", "ct_limited", "ct_lowdose", "inpaint")
PRIORS = ("epll", "charts", "charts_lbfgs", "patchnr", "bm3d")
TEST_SETS = ("set12", "phantom")
CT_NOISE = 0.5
LOWDOSE_PHOTONS = 4096.0


def prepare_clean(task: str, clean: torch.Tensor, ct_size: int) -> torch.Tensor:
    """The ground truth of a cell: the image itself, or for CT the image resized (anti-aliased) to ct_size."""
    if not task.startswith("ct_") or max(clean.shape[-2:]) <= ct_size:
        return clean
    from skimage.transform import resize

    small = resize(clean[0, 0].double().numpy(), (ct_size, ct_size), anti_aliasing=True)
    return torch.from_numpy(small).to(clean.dtype)[None, None]


def load_test_images(test_set: str, ct_size: int) -> tuple[list, list[str]]:
    """(images in [0, 1], file names) of a test set: Set12, or the Shepp-Logan phantom on the CT grid."""
    if test_set == "set12":
        return load_set12(with_names=True)
    return [physics.shepp_logan(ct_size)], ["shepp_logan.png"]


def check_selection(args, n_images: int) -> None:
    """Refuse a task or image index the test set does not have, before anything runs."""
    if args.test_set == "phantom" and any(not t.startswith("ct_") for t in args.tasks):
        raise SystemExit(f"--test-set phantom takes the CT tasks only (ct_limited, ct_lowdose), got --tasks "
                         f"{' '.join(args.tasks)}")
    bad = [i for i in (args.images or []) if not 0 <= i < n_images]
    if bad:
        raise SystemExit(f"--images must be indices in [0, {n_images - 1}] for --test-set {args.test_set}, got {bad}")


def make_problem(task: str, clean: torch.Tensor, seed: int):
    """(physics, observation y, noise sigma) for one clean image (1, 1, H, W) float64."""
    H, W = clean.shape[-2:]
    if task.startswith("denoise"):
        sigma = int(task[len("denoise"):]) / 255
        op = physics.Denoising(physics.GaussianNoise(sigma))
    elif task == "deblur":
        sigma, op = 0.01, physics.Blur(std=2.0, noise_model=physics.GaussianNoise(0.01))
    elif task in ("sr2", "sr4"):
        s = int(task[2])
        sigma, op = 0.01, physics.SuperResolution(s, kernel_std=s / 2, noise_model=physics.GaussianNoise(0.01))
    elif task == "ct_limited":
        sigma = CT_NOISE
        op = physics.Tomography((H, W), 60, math.radians(120), noise_model=physics.GaussianNoise(CT_NOISE))
    elif task == "ct_lowdose":
        sigma = 1.0  # the weighted least squares' weights are the inverse variances (task_defaults.POISSON_TASKS)
        op = physics.Tomography((H, W), 60, math.pi, noise_model=physics.PoissonNoise(LOWDOSE_PHOTONS))
    elif task == "inpaint":
        sigma = 0.01
        op = physics.Inpainting.random((H, W), 0.5, seed=seed, noise_model=physics.GaussianNoise(0.01))
    else:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return op, physics.simulate(clean, op, seed=seed), sigma


class Runners:
    def __init__(self, args):
        self.args = args
        self._cache = {}

    def _load(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def epll(self, task, op, y, sigma):
        from patchreg.priors import GMM, epll_restore

        gmm = self._load("gmm", lambda: GMM.load(resolve_checkpoint(self.args.gmm)))
        return self._splitting("epll", gmm.dim, task, op, y, sigma, lambda y_, op_, s_, **kw: epll_restore(y_, op_, gmm, s_, **kw))

    def charts(self, task, op, y, sigma):
        from patchreg.priors import PatchCharts, charts_restore

        model = self._load("charts", lambda: PatchCharts.load(resolve_checkpoint(self.args.charts)))
        top = self.args.top_charts
        return self._splitting("charts", model.dim, task, op, y, sigma,
                               lambda y_, op_, s_, **kw: charts_restore(y_, op_, model, s_, top_charts=top, **kw))

    def _splitting(self, prior, dim, task, op, y, sigma, restore):
        y = y.to(getattr(torch, self.args.precision))
        if task.startswith("denoise"):
            scale = self.args.epll_lam_scale if prior == "epll" else 1.0
            lam = None if scale == 1.0 else scale * dim / sigma**2  # None: the library default d / sigma^2
            factors = self.args.epll_beta_factors if prior == "epll" else None
            betas = None if factors is None else [f / sigma**2 for f in factors]  # None: (1/sigma^2)[1, 4, 8, 16, 32]
            return restore(y, None, sigma, betas=betas, lam=lam).double()
        x0 = op.initial_guess(y) if hasattr(op, "initial_guess") else None
        op, y = weighted_problem(op, y)  # Poisson counts: the whitened weighted least squares
        if self.args.hqs_start is not None:  # image-domain noise level the schedule starts from
            betas, lam = schedule_from_start(self.args.hqs_start), None
        else:  # tuned on validation (bench/hqs_task_tuning.py)
            betas, lam = hqs_betas(prior, task), hqs_lam(prior, task, dim, sigma)
        return restore(y, op, sigma, betas=betas, lam=lam, x0=x0).double()

    def charts_lbfgs(self, task, op, y, sigma):
        """The chart prior as a regularizer R(x) minimised by L-BFGS (all patches, top charts): lam = L / d
        makes ||Ax - y||^2 / (2 sigma^2) + lam * mean_i -log p(P_i x) EPLL's MAP energy up to a factor."""
        from patchreg.priors import ChartPrior, PatchCharts
        from patchreg.reconstruct import reconstruct

        model = self._load("charts", lambda: PatchCharts.load(resolve_checkpoint(self.args.charts)))
        prior = ChartPrior(model, top_charts=self.args.lbfgs_top)
        H, W = y.shape[-2:] if task.startswith("denoise") else op.initial_guess(y).shape[-2:]
        p = model.patch_size
        lam = (H - p + 1) * (W - p + 1) / model.dim
        x0 = y if task.startswith("denoise") else op.initial_guess(y)
        x, _ = reconstruct(y.float(), op, prior, lam, x0=x0.float(), solver="lbfgs", steps=self.args.lbfgs_steps,
                           progress=False)
        return x.double()

    def patchnr(self, task, op, y, sigma, lam_scale=None):
        from patchreg.priors import PatchFlow, PatchNR
        from patchreg.reconstruct import reconstruct

        device = torch.device(self.args.device)
        flow = self._load("flow", lambda: PatchFlow.load(resolve_checkpoint(self.args.flow)).to(device))
        prior = PatchNR(flow, n_patches=self.args.patchnr_patches, seed=self.args.seed,
                        precision=self.args.flow_precision)
        y = y.float().to(device)
        H, W = y.shape[-2:] if task.startswith("denoise") else op.initial_guess(y).shape[-2:]
        scale = self.args.patchnr_lam_scale if lam_scale is None else lam_scale
        lam = scale * (H - flow.patch_size + 1) * (W - flow.patch_size + 1) / flow.dim
        steps, lr = patchnr_schedule(task, self.args)
        x, _ = reconstruct(y, op, prior, lam, steps=steps, lr=lr, clamp=(0.0, 1.0), progress=False)
        return x.detach().double().cpu()

    def bm3d(self, task, op, y, sigma):
        import bm3d

        if not hasattr(np, "trapz"):  # bm4d (under bm3d's colored-noise path) calls numpy < 2's name
            np.trapz = np.trapezoid
        if task == "deblur":  # its deblurring entry point (regularised inverse, then BM3D); circular blur as ours
            psf = op.kernel.reshape(op.kernel.shape[-2:]).double().numpy()
            # a trailing channel axis: with a 2-D z, bm3d 4.0.3's second stage rejects its own first estimate
            out = bm3d.bm3d_deblurring(y[0, 0].double().numpy()[..., None], sigma_psd=sigma, psf=psf)
            return torch.from_numpy(np.asarray(out, dtype=np.float64).reshape(y.shape[-2:]))[None, None]
        if not task.startswith("denoise"):
            return None
        out = bm3d.bm3d(y[0, 0].numpy(), sigma_psd=sigma)
        return torch.from_numpy(np.asarray(out, dtype=np.float64))[None, None]


def patchnr_schedule(task: str, args) -> tuple[int, float]:
    """(Adam iterations, learning rate) of a PatchNR cell: the flags, else the paper's per-task values
    (patchreg.priors.task_defaults.patchnr_settings, as the CLI)."""
    steps, lr, _ = patchnr_settings("denoise" if task.startswith("denoise") else task)
    return (steps if args.patchnr_steps is None else args.patchnr_steps,
            lr if args.patchnr_lr is None else args.patchnr_lr)


def cell_settings(prior: str, args, task: str) -> dict:
    """What a row's numbers depend on beyond the task and image (older rows lack it: float64, top 2)."""
    if prior in ("epll", "charts"):
        extra = {"top_charts": args.top_charts} if prior == "charts" else \
            ({"lam_scale": args.epll_lam_scale} if args.epll_lam_scale != 1.0 else {})
        if prior == "epll" and args.epll_beta_factors is not None:
            extra = {**extra, "beta_factors": args.epll_beta_factors}
        return {"precision": args.precision, "hqs_start": args.hqs_start, **extra}
    if prior == "patchnr":
        steps, lr = patchnr_schedule(task, args)
        extra = {} if args.flow_precision == "float32" else {"flow_precision": args.flow_precision}
        return {"n_patches": args.patchnr_patches, "steps": steps, "lr": lr, "lam_scale": args.patchnr_lam_scale,
                "device": args.device, "tf32": args.tf32, **extra}
    if prior == "charts_lbfgs":
        return {"steps": args.lbfgs_steps, "top_charts": args.lbfgs_top}
    return {}


def done_cells(path: Path) -> dict:
    cells = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                cells[(row["task"], row["prior"], row["image"])] = row
    return cells


def configure_device(args) -> None:
    """--device cuda needs a GPU (checked before any work); --tf32 switches float32 products to TF32."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.tf32 and args.device != "cuda":
        raise SystemExit("--tf32 needs --device cuda")
    torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["denoise15", "denoise25", "denoise50"], choices=TASKS)
    ap.add_argument("--priors", nargs="+", default=["epll", "charts", "bm3d"], choices=PRIORS)
    ap.add_argument("--test-set", choices=TEST_SETS, default="set12",
                    help="set12, or phantom: the Shepp-Logan phantom on the CT grid (CT tasks only)")
    ap.add_argument("--images", type=int, nargs="*", default=None,
                    help="indices into the test set (Set12: 0-11, phantom: 0); default all")
    ap.add_argument("--gmm", default="pretrained:gmm")
    ap.add_argument("--charts", default="pretrained:charts")
    ap.add_argument("--flow", default="pretrained:flow")
    ap.add_argument("--top-charts", type=int, default=1, help="charts (HQS): pairs per patch (the library default 1)")
    ap.add_argument("--precision", choices=("float32", "float64"), default="float32",
                    help="epll and charts (HQS) arithmetic (float32: PSNR equal to 1e-3 dB, twice as fast)")
    ap.add_argument("--hqs-start", type=float, default=None,
                    help="non-denoising tasks: sigma the HQS schedule starts from (default: "
                         "patchreg.priors.task_defaults, tuned on validation)")
    ap.add_argument("--ct-size", type=int, default=256, help="ct_*: larger images are resized to this size")
    ap.add_argument("--lbfgs-steps", type=int, default=100, help="charts_lbfgs: L-BFGS iterations")
    ap.add_argument("--lbfgs-top", type=int, default=4, help="charts_lbfgs: (chart, scale) pairs kept per patch")
    ap.add_argument("--patchnr-patches", type=int, default=40_000)
    ap.add_argument("--patchnr-steps", type=int, default=None, help="patchnr: Adam iterations (default PATCHNR_STEPS)")
    ap.add_argument("--patchnr-lr", type=float, default=None, help="patchnr: Adam learning rate (default PATCHNR_LR)")
    ap.add_argument("--epll-lam-scale", type=float, default=1.0,
                    help="epll, denoising: lam = SCALE * d / sigma^2 (1: the paper's and the library's default)")
    ap.add_argument("--epll-beta-factors", type=lambda v: [float(f) for f in v.split(",")], default=None,
                    help="epll, denoising: betas = FACTORS / sigma^2, comma-separated (default 1,4,8,16,32: Zoran & "
                         "Weiss; 1,4,8,16,32,64 is bench/epll_denoise_tuning.py's zw6)")
    ap.add_argument("--patchnr-lam-scale", type=float, default=1.0,
                    help="patchnr: lam = SCALE * n_image_patches / d (1: EPLL's MAP energy, the CLI's default)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="patchnr's device (the others run on the CPU)")
    ap.add_argument("--flow-precision", choices=("float32", "bfloat16"), default="float32",
                    help="patchnr: the flow's arithmetic (bfloat16: patchreg.priors.flow_lowp, CPU only)")
    ap.add_argument("--tf32", action="store_true", help="cuda: float32 matrix products on TF32 tensor cores")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/priors_set12")
    ap.add_argument("--report-only", action="store_true", help="rewrite OUT.md from OUT.jsonl, run nothing")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    configure_device(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cells_path = out.with_suffix(".jsonl")
    cells = done_cells(cells_path)
    if args.report_only:
        write_report(out, args, argv, cells)
        return 0
    images, names = load_test_images(args.test_set, args.ct_size)
    check_selection(args, len(images))
    indices = range(len(images)) if args.images is None else args.images
    runners = Runners(args)
    estimates = {}
    for task in args.tasks:
        for i in indices:
            clean = prepare_clean(task, to_tensor(images[i]), args.ct_size)
            op, y, sigma = make_problem(task, clean, args.seed + i)
            for prior in args.priors:
                key = (task, prior, names[i])
                if key in cells:
                    continue
                with measure(args.device if prior == "patchnr" else "cpu") as m:
                    x = getattr(runners, prior)(task, op, y, sigma)
                if x is None:
                    continue
                x = x.clamp(0, 1)
                row = dict(task=task, prior=prior, image=names[i], size=list(clean.shape[-2:]),
                           psnr=float(psnr(x, clean)[0]), ssim=float(ssim(x, clean)[0]), seconds=m.seconds,
                           peak_mb=m.peak_megabytes, seed=args.seed + i, settings=cell_settings(prior, args, task))
                cells[key] = row
                with cells_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                estimates[key] = x
                print(f"{task:10s} {prior:8s} {names[i]}: {row['psnr']:.2f} dB  SSIM {row['ssim']:.3f}  {m.seconds:.1f} s",
                      flush=True)
            if i == indices[0] and any((task, p, names[i]) in estimates for p in args.priors):
                save_grid(out, task, clean, y, op, {p: estimates.get((task, p, names[i])) for p in args.priors})
    write_report(out, args, argv, cells)
    return 0


def save_grid(out: Path, task, clean, y, op, estimates) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [("ground truth", clean)]
    if y.shape == clean.shape:
        shown.append(("observation", y))
    shown += [(p, x) for p, x in estimates.items() if x is not None]
    fig, axes = plt.subplots(1, len(shown), figsize=(3 * len(shown), 3.3))
    for ax, (title, img) in zip(np.atleast_1d(axes), shown):
        ax.imshow(img[0, 0].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        extra = "" if title in ("ground truth", "observation") and title != "observation" else \
            f" {float(psnr(img.clamp(0, 1), clean)[0]):.2f} dB"
        ax.set_title(title + extra, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(f"{out}_{task}.png", dpi=90)
    plt.close(fig)


def write_report(out: Path, args, argv, cells: dict) -> None:
    tasks = [t for t in TASKS if any(k[0] == t for k in cells)]
    priors = [p for p in PRIORS if any(k[1] == p for k in cells)]
    command = "python bench/priors_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    phantom = bool(cells) and all(k[2] == "shepp_logan.png" for k in cells)  # the cells say which test set
    lines = [f"# {'The Shepp-Logan phantom' if phantom else 'Set12'}: patch priors trained on train400 (training split)", "",
             f"Cells from {out.with_suffix('.jsonl').name}, appended by successive runs (each row stores the "
             f"settings it depends on; rows without them: float64, top 2 pairs). Last command: `{command}`", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             + ("of the report only (the cells ran in earlier calls, their threads are in RESULTS.md)."
                if args.report_only else f"{torch.get_num_threads()} threads."),
             "PSNR on the full image after clipping to [0, 1]; time and peak RSS of the reconstruction alone.", "",
             "## Means over the images of each cell", "",
             "Paired: the mean over the images that every prior of the task has (the fair comparison when a",
             "prior was run on a subset). Time: median over the 256x256 / 512x512 images.", "",
             "| task | prior | images | PSNR dB | paired PSNR dB (images) | paired SSIM | time s (256 / 512) | peak MB |",
             "|---|---|---|---|---|---|---|---|"]
    for task in tasks:
        have = [{k[2] for k in cells if k[0] == task and k[1] == prior} for prior in priors]
        common = set.intersection(*[h for h in have if h]) if any(have) else set()
        for prior in priors:
            rows = [r for k, r in cells.items() if k[0] == task and k[1] == prior]
            if rows:
                paired = [r["psnr"] for r in rows if r["image"] in common]
                paired_ssim = [r["ssim"] for r in rows if r["image"] in common]
                times = [statistics.median(v) if v else None for v in
                         ([r["seconds"] for r in rows if r["size"][0] <= 256], [r["seconds"] for r in rows if r["size"][0] > 256])]
                lines.append(f"| {task} | {prior} | {len(rows)} | {statistics.mean(r['psnr'] for r in rows):.2f} | "
                             + (f"{statistics.mean(paired):.2f} ({len(paired)})" if paired else "-") + " | "
                             + (f"{statistics.mean(paired_ssim):.4f}" if paired else "-") + " | "
                             + " / ".join("-" if t is None else f"{t:.1f}" for t in times) + " | "
                             f"{max(r['peak_mb'] for r in rows):.0f} |")
    lines += ["", "## Per image (PSNR dB)", ""]
    for task in tasks:
        names = sorted({k[2] for k in cells if k[0] == task})
        lines += [f"### {task}", "", "| image | " + " | ".join(priors) + " |", "|---" * (len(priors) + 1) + "|"]
        for name in names:
            vals = [cells.get((task, p, name)) for p in priors]
            lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v['psnr']:.2f}" for v in vals) + " |")
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
