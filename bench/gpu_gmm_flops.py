"""FLOP rate of the CUDA GMM log-likelihood kernels as a fraction of the card's FP32 peak (same run).

Work counted per call: 2 * N * K * d (d + 1) / 2 FLOP (the triangular solves U_k^T (x - mu_k)
with the zero half of the triangular factors skipped), for K = 200, d = 36 and all overlapping
6x6 patches of a 256x256 and a 1024x1024 image, float32. Peak: a measured FP32 matrix product
(8192^3, TF32 off) in the same run, and the nominal FP32 peak of known cards.

    python bench/gpu_gmm_flops.py [--out bench/results/gpu_gmm_flops.md]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bandwidth import cuda_time  # noqa: E402  (CUDA-event medians, shared)
from patchreg import _extension  # noqa: E402

NOMINAL_FP32_TFLOPS = {"H100": 67.0, "H200": 67.0, "A100": 19.5}  # SXM boards, vendor data sheets


def mixture(K: int, d: int):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(K, d, d, generator=g, dtype=torch.float64)
    cov = (a @ a.mT / d + 0.05 * torch.eye(d, dtype=torch.float64)) * 1e-2
    chol = torch.linalg.cholesky(cov)
    u = torch.linalg.solve_triangular(chol, torch.eye(d, dtype=torch.float64).expand(K, d, d), upper=False).mT
    log_const = torch.full((K,), -math.log(K)) - chol.diagonal(dim1=1, dim2=2).log().sum(1)
    means = 0.05 * torch.randn(K, d, generator=g, dtype=torch.float64)
    return [t.float().cuda().contiguous() for t in (u, log_const, means)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    _extension.load()
    ops = torch.ops.patchreg
    name = torch.cuda.get_device_name()
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(8192, 8192, device="cuda")
    mm_peak = 2 * 8192**3 / cuda_time(lambda: a @ a, repeats=5) / 1e12
    nominal = next((v for k, v in NOMINAL_FP32_TFLOPS.items() if k in name), None)
    K, d = 200, 36
    u, c, mu = mixture(K, d)
    lines = [
        "# CUDA GMM kernels: FLOP rate",
        "",
        f"Card: {name}; torch {torch.__version__}. Measured FP32 matmul (8192^3, TF32 off): {mm_peak:.1f} TFLOP/s"
        + (f"; nominal FP32 peak {nominal:.0f} TFLOP/s." if nominal else "."),
        "",
        "| image | op | time (ms) | TFLOP/s | / measured matmul | / nominal peak |",
        "|---|---|---|---|---|---|",
    ]
    for size in (256, 1024):
        N = (size - 5) ** 2
        x = torch.rand(N, d, device="cuda")
        flop = 2 * N * K * d * (d + 1) / 2
        for label, fn, factor in (
            ("per-component", lambda: ops.gmm_component_log_prob(x, u, c, mu), 1),
            ("mixture + best", lambda: ops.gmm_mixture_log_prob(x, u, c, mu, False), 1),
            ("mixture + best + gradient", lambda: ops.gmm_mixture_log_prob(x, u, c, mu, True), 2),
        ):
            t = cuda_time(fn)
            rate = factor * flop / t / 1e12
            lines.append(
                f"| {size}x{size} | {label} | {t * 1e3:.2f} | {rate:.2f} | {rate / mm_peak:.0%} | "
                + (f"{rate / nominal:.0%} |" if nominal else "n/a |")
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
