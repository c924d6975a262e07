"""Speed of the fused chart-mixture op against the pure-PyTorch reference, side by side in one run.

The case of the issue: K = 16 charts, n = 36, d = 4, ResidualMLP width 64 with 2 blocks (the
default), float32, random weights and frames. Rows:
  - forward + gradient: charts_log_prob_fused(..., compute_grad=True) vs the reference
    patchreg.charts.charts_log_prob plus torch.autograd.grad of its sum with respect to x;
  - forward only: compute_grad=False vs the reference under torch.no_grad.
The reference runs in chunks of --ref-chunk points (default 8192, its fastest on the CPU): unchunked, its
(B, K, width, d) intermediates need tens of GB for 65536 points. Several --ref-chunk values each give a
reference contender and the ratio is taken against the fastest of them. --device cuda times the CUDA
kernel against the reference on the GPU (CUDA synchronised around every call). The contenders alternate within every round (so
machine noise hits them alike); the table gives medians and reference / fused.

    python bench/charts_op_speed.py [--points 65536] [--small 4096] [--rounds 3] [--out bench/results/charts_op.md]
    python bench/charts_op_speed.py --device cuda --ref-chunk 8192 65536 --out bench/results/charts_op_cuda.md
"""

from __future__ import annotations

import argparse
import math
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
from patchreg.charts import charts_log_prob  # noqa: E402
from patchreg.ops.charts import charts_log_prob_fused  # noqa: E402


def random_charts(K, n, d, width, n_blocks, seed=0, dtype=torch.float32):
    """A stack_mlp_charts-like dict (orthogonal frames, weights ~ 1/sqrt(fan_in)) and log_alpha."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape):
        return torch.randn(K, *shape, generator=g, dtype=torch.float64) / math.sqrt(shape[-1])

    def b(size):
        return 0.1 * torch.randn(K, size, generator=g, dtype=torch.float64)

    params = {
        "center": torch.randn(K, n, generator=g, dtype=torch.float64),
        "basis": torch.linalg.qr(torch.randn(K, n, n, generator=g, dtype=torch.float64))[0],
        "scale": torch.rand(K, generator=g, dtype=torch.float64) + 0.5,
    }
    for prefix, n_in, n_out in (("encoder", n, d), ("decoder", d, n)):
        params[f"{prefix}.input.weight"], params[f"{prefix}.input.bias"] = w(width, n_in), b(width)
        for i in range(n_blocks):
            for j in range(2):
                params[f"{prefix}.blocks.{i}.{j}.weight"] = w(width, width)
                params[f"{prefix}.blocks.{i}.{j}.bias"] = b(width)
        params[f"{prefix}.output.weight"], params[f"{prefix}.output.bias"] = w(n_out, width), b(n_out)
    log_alpha = torch.full((K,), -math.log(K), dtype=torch.float64)
    return {k: v.to(dtype) for k, v in params.items()}, log_alpha.to(dtype)


def reference_grad(x, params, log_alpha, sigma, chunk):
    out, grads = [], []
    for xs in x.split(chunk):
        xs = xs.detach().requires_grad_(True)
        total = charts_log_prob(xs, params, log_alpha, sigma)
        grads.append(torch.autograd.grad(total.sum(), xs)[0])
        out.append(total.detach())
    return torch.cat(out), torch.cat(grads)


def reference_forward(x, params, log_alpha, sigma, chunk):
    with torch.no_grad():
        return torch.cat([charts_log_prob(xs, params, log_alpha, sigma) for xs in x.split(chunk)])


def time_interleaved(fns: dict, rounds: int, sync=lambda: None) -> dict:
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=65536)
    parser.add_argument("--small", type=int, default=4096, help="points of the extra forward-only row")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ref-chunk", type=int, nargs="+", default=[8192])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=None, help="also write the table as markdown here")
    args = parser.parse_args(argv)
    if not patchreg.extension_available():
        sys.exit("the compiled extension is not available: nothing to compare")
    patchreg.set_backend("extension")

    K, n, d, width, n_blocks, sigma = 16, 36, 4, 64, 2, 0.1
    params, log_alpha = random_charts(K, n, d, width, n_blocks)
    x = torch.randn(args.points, n, generator=torch.Generator().manual_seed(1))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    params = {k: v.to(device) for k, v in params.items()}
    log_alpha, x = log_alpha.to(device), x.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    small = x[: args.small]
    chunk = args.ref_chunk[0]

    # Warm-up on a few points (code paths, allocator), and a correctness check.
    lp, _, g = charts_log_prob_fused(x[:512], params, log_alpha, sigma)
    r_lp, r_g = reference_grad(x[:512], params, log_alpha, sigma, chunk)
    err_lp = ((lp - r_lp).abs().max() / r_lp.abs().max()).item()
    err_g = ((g - r_g).abs().max() / r_g.abs().max()).item()

    def contenders(points, grad):
        fns = {"fused": lambda: charts_log_prob_fused(points, params, log_alpha, sigma, compute_grad=grad)}
        ref = reference_grad if grad else reference_forward
        for c in args.ref_chunk:
            fns[f"reference@{c}"] = lambda c=c: ref(points, params, log_alpha, sigma, c)
        return fns

    rows = [
        (f"forward + gradient, {args.points} points", contenders(x, True)),
        (f"forward only, {args.points} points", contenders(x, False)),
        (f"forward only, {args.small} points", contenders(small, False)),
    ]
    info = patchreg._extension.build_info() if device.type == "cpu" else {}
    gpu = f"GPU: {torch.cuda.get_device_name(device)}, " if device.type == "cuda" else ""
    lines = [
        f"Machine: {gpu}{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, AVX2 kernels: {info.get('avx2')}; "
        f"load average before the run: {', '.join(f'{v:.1f}' for v in os.getloadavg())}.",
        f"Case: K = {K}, n = {n}, d = {d}, width {width}, {n_blocks} blocks, float32, sigma = {sigma}; "
        f"device {device}; reference in chunks of {', '.join(map(str, args.ref_chunk))} points (best one used); "
        f"medians of {args.rounds} interleaved rounds.",
        f"Fused vs reference on 512 points: max relative difference {err_lp:.1e} (log p), {err_g:.1e} (gradient).",
        "",
        "| case | fused s | best reference s (chunk) | reference / fused |"
        + (" fused peak MiB | reference peak MiB |" if device.type == "cuda" else ""),
        "|---|---|---|---|" + ("---|---|" if device.type == "cuda" else ""),
    ]
    print("\n".join(lines), flush=True)
    for name, fns in rows:
        peak = {}
        if device.type == "cuda":  # warm-up of this size (allocator, kernel caches), peak memory
            for key, fn in fns.items():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                fn()
                sync()
                peak[key] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        t = time_interleaved(fns, args.rounds, sync)
        best = min((v, k) for k, v in t.items() if k != "fused")
        memory = (f" | {peak['fused']:.0f} | {peak[best[1]]:.0f}" if peak else "")
        row = (f"| {name} | {t['fused']:.4f} | {best[0]:.4f} ({best[1].split('@')[1]}) | "
               f"**{best[0] / t['fused']:.1f}x**{memory} |")
        lines.append(row)
        print(row, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = "python bench/charts_op_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
        args.out.write_text(f"# Fused chart-mixture op vs reference ({device.type.upper()})\n\nCommand: `{cmd}`\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
