"""Speed ratios of the patch operators, measured side by side in one run.

For every case of tests/patch_cases.BENCH_CASES, the extension, the pure-PyTorch reference and
torch's own F.unfold / F.fold are timed in interleaved rounds (so machine noise hits all of them
alike); the table gives medians and the ratios torch / extension. Peak memory is measured in a
fresh subprocess per operator (Linux: VmHWM reset through /proc/self/clear_refs) as the growth
of the peak resident set while the op runs, next to the size of its output.

    python bench/patch_speed_table.py [--rounds 15] [--out bench/results/patch_speed.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import patchreg  # noqa: E402
from tests.patch_cases import BENCH_CASES  # noqa: E402


def _ext(fn):
    def run(*a):
        with patchreg.use_backend("extension"):
            return fn(*a)
    return run


def _ref(fn):
    def run(*a):
        with patchreg.use_backend("reference"):
            return fn(*a)
    return run


def contenders(case):
    """name -> {impl -> zero-argument callable}, inputs built once per case."""
    x = torch.rand(case.B, case.C, case.H, case.W)
    size, p, s = (case.H, case.W), case.p, case.s
    patches = patchreg.extract_patches(x, p, s)
    cols = patches.transpose(1, 2)  # F.fold takes (B, C*p*p, L); a user holding (B, L, D) passes this view
    g = torch.randn_like(patches)
    xg = x.clone().requires_grad_(True)

    def backward_of(extract):
        def run():
            xg.grad = None
            extract(xg).backward(g)
        return run

    return {
        "extract": {
            "extension": lambda: _ext(patchreg.extract_patches)(x, p, s),
            "reference": lambda: _ref(patchreg.extract_patches)(x, p, s),
            "torch": lambda: F.unfold(x, p, stride=s),
        },
        "aggregate": {
            "extension": lambda: _ext(patchreg.aggregate_patches)(patches, size, p, s),
            "reference": lambda: _ref(patchreg.aggregate_patches)(patches, size, p, s),
            "torch": lambda: F.fold(cols, size, p, stride=s),
        },
        "extract backward": {
            "extension": backward_of(lambda t: _ext(patchreg.extract_patches)(t, p, s)),
            "reference": backward_of(lambda t: _ref(patchreg.extract_patches)(t, p, s)),
            "torch": backward_of(lambda t: F.unfold(t, p, stride=s).transpose(1, 2)),
        },
    }


def time_interleaved(fns: dict, rounds: int) -> dict:
    samples = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


_MEMORY_CHILD = r"""
import sys, json, torch, torch.nn.functional as F
sys.path.insert(0, sys.argv[1])
import patchreg
op, impl, n, p, s = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(2)
x = torch.rand(1, 1, n, n)
patches = patchreg.extract_patches(x, p, s) if op == "aggregate" else None
# warm the code paths on a small input so one-off allocations do not count
small = torch.rand(1, 1, 2 * p + 3, 2 * p + 3)
with patchreg.use_backend("extension" if impl == "extension" else "reference"):
    patchreg.aggregate_patches(patchreg.extract_patches(small, p, s), small.shape[-2:], p, s)
F.fold(F.unfold(small, p, stride=s), small.shape[-2:], p, stride=s)
def run():
    if impl == "torch":
        return F.unfold(x, p, stride=s) if op == "extract" else F.fold(patches.transpose(1, 2), (n, n), p, stride=s)
    with patchreg.use_backend(impl):
        if op == "extract":
            return patchreg.extract_patches(x, p, s)
        return patchreg.aggregate_patches(patches, (n, n), p, s)
def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
before = status_kb("VmRSS")
out = run()
peak = status_kb("VmHWM")
print(json.dumps({"peak_growth_mb": (peak - before) / 1024, "output_mb": out.numel() * out.element_size() / 2**20}))
"""


def peak_memory(op: str, impl: str, n: int, p: int, s: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(ROOT), op, impl, str(n), str(p), str(s)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None, help="also write the table as markdown here")
    parser.add_argument("--quick", action="store_true", help="512x512, p=8, s=1 only")
    args = parser.parse_args(argv)
    if not patchreg.extension_available():
        sys.exit("the compiled extension is not available: nothing to compare")

    cases = [c for c in BENCH_CASES if not args.quick or (c.H == 512 and c.p == 8 and c.s == 1)]
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; medians of {args.rounds} interleaved rounds.",
        "",
        "| op | image | p | s | extension ms | reference ms | torch ms | torch / ext | reference / ext |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for case in cases:
        for op, fns in contenders(case).items():
            t = time_interleaved(fns, args.rounds)
            row = (
                f"| {op} | {case.H}x{case.W} | {case.p} | {case.s} | {t['extension'] * 1e3:.2f} | "
                f"{t['reference'] * 1e3:.2f} | {t['torch'] * 1e3:.2f} | "
                f"**{t['torch'] / t['extension']:.1f}x** | {t['reference'] / t['extension']:.1f}x |"
            )
            lines.append(row)
            print(row, flush=True)

    mem_lines = [
        "",
        "Peak memory (512x512, p=8, s=1, float32): peak resident set during one call minus the "
        "resident set before it (VmHWM after resetting it through /proc/self/clear_refs), fresh process each.",
        "",
        "| op | impl | peak growth MB | output MB |",
        "|---|---|---|---|",
    ]
    for op in ("extract", "aggregate"):
        for impl in ("extension", "reference", "torch"):
            m = peak_memory(op, impl, 512, 8, 1)
            mem_lines.append(f"| {op} | {impl} | {m['peak_growth_mb']:.1f} | {m['output_mb']:.1f} |")
    print("\n".join(mem_lines), flush=True)
    lines += mem_lines
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = "python bench/patch_speed_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
        args.out.write_text(f"# Patch operator speed\n\nCommand: `{cmd}`\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
