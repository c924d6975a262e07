"""Achieved memory bandwidth of the CUDA patch kernels vs a device-to-device copy (same run).

Bytes counted per call: extraction reads the image and writes the patch matrix; aggregation
reads the patch matrix and writes the image; the copy reads and writes one tensor as large as
the patch matrix. Times are medians of CUDA-event timings.

    python bench/gpu_bandwidth.py [--out bench/results/gpu_bandwidth.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import patchreg  # noqa: E402


def cuda_time(fn, repeats: int = 50) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    dev = torch.device("cuda")
    lines = [f"Device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", "",
             "| op | image | p | s | dtype | ms | GB/s | copy GB/s | fraction of copy | torch ms | torch / ext |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, p, s in [(512, 8, 1), (1024, 8, 1), (2048, 8, 1), (2048, 6, 2), (1024, 3, 1)]:
        for dtype in (torch.float32,):
            x = torch.rand(4, 1, n, n, device=dev, dtype=dtype)
            patches = patchreg.extract_patches(x, p, s)
            buf = torch.empty_like(patches)
            copy_s = cuda_time(lambda: buf.copy_(patches))
            copy_bw = 2 * patches.numel() * patches.element_size() / copy_s
            cases = {
                "extract": (lambda: patchreg.extract_patches(x, p, s), lambda: F.unfold(x, p, stride=s),
                            (patches.numel() + x.numel()) * x.element_size()),
                "aggregate": (lambda: patchreg.aggregate_patches(patches, (n, n), p, s),
                              lambda: F.fold(patches.transpose(1, 2), (n, n), p, stride=s),
                              (patches.numel() + x.numel()) * x.element_size()),
            }
            for op, (ours, theirs, nbytes) in cases.items():
                t = cuda_time(ours)
                tt = cuda_time(theirs)
                bw = nbytes / t
                lines.append(f"| {op} | 4x{n}x{n} | {p} | {s} | {str(dtype)[6:]} | {t * 1e3:.3f} | {bw / 1e9:.0f} | "
                             f"{copy_bw / 1e9:.0f} | **{bw / copy_bw:.0%}** | {tt * 1e3:.3f} | {tt / t:.1f}x |")
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
