"""Speed of the fused GMM log-likelihood against pure-PyTorch formulations and DeepInverse, side by side.

Case (issue 3): K = 200 components, 6x6 patches (d = 36), all 63001 overlapping patches of a
256x256 bundled test photo, float32, CPU. The mixture is the committed EPLL checkpoint
(bench/results/gmm_k200_p6.safetensors) with covariances Sigma_k + I/beta at sigma = 25/255, beta
= 1/sigma^2 (EPLL's first z-step). Every contender runs once per round, rounds interleaved, so
machine noise hits all alike; the table gives medians and ratios to the fused per-component op.
DeepInverse's row (deepinv.optim.utils.GaussianMixtureModel.component_log_likelihoods, same
weights) runs only when deepinv is installed (a bench-only dependency).

The fused op runs its AVX-512 loops where the CPU has them; the rows "AVX2 loops" and "portable loops"
switch the faster loops off (PATCHREG_DISABLE_AVX512 / PATCHREG_DISABLE_AVX2, read per call), so the gain of
each instruction set is measured in the same run. --gmm takes another checkpoint (e.g. the 8x8 GMM of the EM).

    python bench/gmm_speed_table.py [--rounds 5] [--gmm CKPT] [--out bench/results/gmm_op.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import patchreg  # noqa: E402
from patchreg import _extension  # noqa: E402
from patchreg.data import load_bundled, to_tensor  # noqa: E402
from patchreg.ops import gmm as gmm_ops  # noqa: E402
from patchreg.priors import GMM  # noqa: E402
from patchreg.reference import gmm as ref  # noqa: E402

CHECKPOINT = ROOT / "bench" / "results" / "gmm_k200_p6.safetensors"
SIGMA = 25 / 255


def switched_off(fn, variable: str):
    """fn run with the kernels' loops named by `variable` switched off (PATCHREG_DISABLE_AVX512: the AVX2 loops
    run; PATCHREG_DISABLE_AVX2: the portable ones). The kernels read the variable per call."""
    def run(*args):
        os.environ[variable] = "1"
        try:
            return fn(*args)
        finally:
            os.environ.pop(variable, None)
    return run


def _cpu_has_avx512() -> bool:
    try:
        return " avx512f " in Path("/proc/cpuinfo").read_text().replace("\n", " ")
    except OSError:
        return False


def deepinv_model(gmm: GMM, beta: float):
    """DeepInverse's GaussianMixtureModel with our weights, means and covariances (+ I/beta)."""
    try:
        from deepinv.optim.utils import GaussianMixtureModel
    except ImportError:
        return None
    model = GaussianMixtureModel(gmm.n_components, gmm.dim, device="cpu")
    model.set_weights(gmm.weights.float())
    model.mu.data = gmm.means.float().clone()
    model.set_cov(gmm.covariances.float())
    model.set_cov_reg(1.0 / beta)
    return model


def contenders(gmm: GMM, image: torch.Tensor) -> dict:
    beta = 1 / SIGMA**2
    params = tuple(t.float() for t in gmm.component_params(extra_variance=1 / beta))
    patches = patchreg.extract_patches(image, gmm.patch_size)[0].contiguous()
    ops = torch.ops.patchreg
    out = {
        "fused op, per-component log-lik (N, K)": lambda: ops.gmm_component_log_prob(patches, *params),
        "fused op, best component only (EPLL z-step)": lambda: ops.gmm_best_component(patches, *params),
        "fused op, mixture log-lik + best": lambda: ops.gmm_mixture_log_prob(patches, *params, False),
        "fused op, mixture log-lik + best + gradient": lambda: ops.gmm_mixture_log_prob(patches, *params, True),
        "fused op, per-component, AVX2 loops (AVX-512 off)": switched_off(
            lambda: ops.gmm_component_log_prob(patches, *params), "PATCHREG_DISABLE_AVX512"
        ),
        "fused op, mixture log-lik + best + gradient, AVX2 loops (AVX-512 off)": switched_off(
            lambda: ops.gmm_mixture_log_prob(patches, *params, True), "PATCHREG_DISABLE_AVX512"
        ),
        "fused op, per-component, portable loops (no AVX2)": switched_off(
            lambda: ops.gmm_component_log_prob(patches, *params), "PATCHREG_DISABLE_AVX2"
        ),
        "convolution form (best pure PyTorch, image level)": lambda: ref.gmm_image_component_log_prob(
            image, gmm.patch_size, *params
        ),
        "reference: patch matrix, components in chunks of 8": lambda: ref.gmm_component_log_prob(patches, *params),
    }
    model = deepinv_model(gmm, beta)
    if model is not None:
        def deepinv_run():
            with torch.no_grad():
                return model.component_log_likelihoods(patches, cov_regularization=True)
        out["DeepInverse 0.5 GaussianMixtureModel.component_log_likelihoods"] = deepinv_run
    return out


def errors_vs_float64(runs: dict, gmm: GMM, image: torch.Tensor) -> dict:
    """Largest |error| (nats) of each per-component contender against float64, first 5000 patches."""
    params = gmm.component_params(extra_variance=SIGMA**2)
    exact = ref.gmm_component_log_prob(patchreg.extract_patches(image.double(), gmm.patch_size)[0][:5000], *params)
    errors = {}
    for name, fn in runs.items():
        out = fn()
        if isinstance(out, tuple):  # best component / mixture ops: checked in tests/test_gmm.py
            continue
        errors[name] = float((out.reshape(-1, out.shape[-1])[:5000].double() - exact).abs().max())
    return errors, float(exact.abs().max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--gmm", default=str(CHECKPOINT), help="GMM checkpoint (default: the committed 6x6 EPLL GMM)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gmm_op.md"))
    args = p.parse_args(argv)
    _extension.load()
    if not gmm_ops.kernels_compiled():
        raise SystemExit("the GMM kernels are not compiled; build the extension first")
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {args.rounds}")
    gmm = GMM.load(args.gmm)
    image = to_tensor(load_bundled("test")[0])[..., :256, :256].float().contiguous()
    runs = contenders(gmm, image)
    errors, scale = errors_vs_float64(runs, gmm, image)
    times = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    med = {name: statistics.median(v) for name, v in times.items()}
    base = med["fused op, per-component log-lik (N, K)"]
    n_patches = (256 - gmm.patch_size + 1) ** 2
    flops = 2 * n_patches * gmm.n_components * gmm.dim * (gmm.dim + 1) / 2  # triangular solves
    command = "python bench/gmm_speed_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Fused `gmm_log_prob` vs pure PyTorch and DeepInverse (CPU)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; AVX2 loops: {_extension.build_info().get('avx2')}; AVX-512 loops: "
        f"{_cpu_has_avx512()} (CPU flag; the op uses them unless PATCHREG_DISABLE_AVX512 is set).",
        f"Case: K = {gmm.n_components}, {gmm.patch_size}x{gmm.patch_size} patches (d = {gmm.dim}), the {n_patches} "
        f"overlapping patches of a 256x256 test photo, float32, {Path(args.gmm).name} with Sigma_k + I/beta "
        "(sigma 25/255). Medians of "
        f"{args.rounds} interleaved rounds. Error: the largest |difference| (nats) of the per-component "
        f"log-likelihoods from a float64 evaluation, first 5000 patches (log-likelihoods reach {scale:.0f} in size).",
        "",
        "| contender | median time (s) | time / fused per-component | error (nats) |",
        "|---|---|---|---|",
    ]
    for name, t in med.items():
        err = f"{errors[name]:.1e}" if name in errors else "(tested)"
        lines.append(f"| {name} | {t:.3f} | {t / base:.2f}x | {err} |")
    lines += [
        "",
        f"The fused per-component op does {flops / 1e9:.1f} GFLOP (triangular solves) in {base:.3f} s: "
        f"{flops / base / 1e9:.0f} GFLOP/s.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
