"""Forward-operator costs: blur direct vs FFT (sets blur.DIRECT_MAX_TAPS) and the Radon transform.

Writes a markdown report (default bench/results/physics.md) with the command that made it.

Run:  PATCHREG_BACKEND=reference .venv/bin/python bench/bench_physics.py --seed 0
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

import patchreg.physics as P
from patchreg.metrics import measure, psnr


def best_time(fn, repeats: int) -> float:
    """Fastest of `repeats` runs in seconds (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def blur_table(size: int, repeats: int, generator: torch.Generator) -> list[str]:
    x = torch.rand(1, 1, size, size, generator=generator)
    rows = [
        f"### Blur, one {size}x{size} float32 image, A then A* (best of {repeats})",
        "",
        "| kernel | taps | direct (ms) | FFT (ms) | max abs difference |",
        "|---:|---:|---:|---:|---:|",
    ]
    kernels = [("1x1", torch.ones(1, 1)), ("3x3 box", torch.full((3, 3), 1 / 9))]
    kernels += [(f"Gaussian std {std}", P.gaussian_kernel(std)) for std in (0.5, 1.0, 1.5, 2.0, 3.0)]
    for label, kernel in kernels:
        direct, fft = P.Blur(kernel=kernel, method="direct"), P.Blur(kernel=kernel, method="fft")
        t_direct = best_time(lambda: direct.A_adjoint(direct.A(x)), repeats)
        t_fft = best_time(lambda: fft.A_adjoint(fft.A(x)), repeats)
        difference = float((direct.A(x) - fft.A(x)).abs().max())
        rows.append(
            f"| {label} | {direct.kernel.numel()} | {1e3 * t_direct:.2f} | {1e3 * t_fft:.2f} | {difference:.1e} |"
        )
    rows.append(f"\nmethod='auto' uses the direct path up to {P.blur.DIRECT_MAX_TAPS} taps.")
    return rows


def tomography_table(size: int, repeats: int) -> list[str]:
    phantom = torch.from_numpy(P.shepp_logan(size))[None, None]
    rows = [
        f"### Tomography, {size}x{size} Shepp-Logan phantom (float64 for the FBP, float32 for timing)",
        "",
        "| geometry | build (s) | build peak RSS (MB) | nnz | A (ms) | A* (ms) "
        "| FBP ramp PSNR (dB) | FBP Hann PSNR (dB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    geometries = ((180, math.pi, "180 angles over 180 deg"), (120, 2 * math.pi / 3, "limited angle: 120 over 120 deg"))
    for n_angles, angle_range, label in geometries:
        with measure() as m:
            op = P.Tomography(size, n_angles, angle_range=angle_range)
        sinogram = op.A(phantom)
        x32 = phantom.float()
        y32 = sinogram.float()
        op.A(x32), op.A_adjoint(y32)  # convert the matrices once
        t_a = best_time(lambda: op.A(x32), repeats)
        t_at = best_time(lambda: op.A_adjoint(y32), repeats)
        ramp = psnr(op.fbp(sinogram), phantom)[0]
        hann = psnr(op.fbp(sinogram, filter="hann"), phantom)[0]
        nnz = op._matrices["A"].nnz
        rows.append(
            f"| {label} | {m.seconds:.2f} | {m.peak_megabytes:.0f} | {nnz / 1e6:.1f}M | {1e3 * t_a:.1f} | "
            f"{1e3 * t_at:.1f} | {ramp:.2f} | {hann:.2f} |"
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings when shared)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "physics.md")
    parser.add_argument("--machine", default="2-core CPU dev machine, no GPU")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    command = "PATCHREG_BACKEND=reference .venv/bin/python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = [
        "# Forward operators: cost and accuracy",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {args.machine}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}; load average at start {os.getloadavg()[0]:.1f} "
        "(other jobs shared the cores: times are best-of-repeats, read them as upper bounds).",
        "",
        *blur_table(args.size, args.repeats, generator),
        "",
        *tomography_table(args.size, args.repeats),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
