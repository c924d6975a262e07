"""Speed, memory and selection error of the chart prior R(x) = mean_i -log p(P_i x), side by side in one run.

Rows (value plus gradient of R for one image, all overlapping patches, stride 1):
  - extension: the fused patch ops, the fused GMM kernel for the selector and the fused chart kernel
    (its AVX-512 loops where the CPU has them);
  - extension with the chart kernel's AVX2 loops (PATCHREG_DISABLE_AVX512=1), the path before 2026-12-05;
  - reference: the same algorithm on patchreg's pure-PyTorch path (patchreg.use_backend("reference"));
  - reference, per-pair selection: the reference path as it was before 2026-12-03, when the selector scored
    every (chart, scale) pair with its own Gaussian (P n^2 per patch; now K n^2, the same ranking);
  - extension in bfloat16 (ChartPrior(precision="bfloat16"), where the CPU has AMX-BF16): the chart kernel's
    decoder tangent GEMMs as bfloat16 AMX tile products, the rest float32; its R and gradient against the
    float32 reference are reported beside the time, and its denoising PSNR against float32 by
    bench/chart_prior_bf16_psnr.py;
  - EPLL's GMM.nll (value plus autograd gradient, fused GMM kernel) for scale.
The contenders alternate within every round (machine noise hits them alike); medians are reported.
Selection error: |log p(top m charts) - log p(all K charts)| per patch over the test image's patches
(a lower bound, so the error is one-sided), for m = 1, 2, 4.
Where the time goes: one extension evaluation under torch.profiler at 1 and 2 threads, the self time of
the fused ops and of the largest remaining aten ops (the rest is many small ops and Python).
Memory: peak resident memory (VmHWM) of a fresh process evaluating R and its gradient on a
512x512 image, minus its peak just before. Extraction robustness: `extract_patches` of a 512x512
image with p = 8 in --fresh fresh processes (first call and the median of 5 later calls) next to
F.unfold.

    python bench/chart_prior_speed.py --checkpoint pretrained:charts --top 4 --rounds 2 --out bench/results/chart_prior_speed.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import patchreg  # noqa: E402
from patchreg.data import load_set12, to_tensor  # noqa: E402
from patchreg.priors import GMM, ChartPrior, PatchCharts  # noqa: E402
from patchreg.ops.charts import charts_bf16_supported  # noqa: E402
from patchreg.priors.chart_prior import chart_patch_log_prob  # noqa: E402


def resolve(spec):
    try:
        from patchreg.pretrained import resolve_checkpoint

        return resolve_checkpoint(spec)
    except ImportError:
        return Path(spec)


def value_and_grad(prior, x):
    xr = x.clone().requires_grad_(True)
    r = prior.nll(xr)
    r.sum().backward()
    return float(r.detach()[0]), xr.grad


def time_once(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_image(size=256, seed=0):
    image = next(im for im in load_set12() if im.shape == (size, size))
    clean = to_tensor(image, torch.float32)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed)) * (25 / 255)
    return clean + noise


def speed_rows(model, gmm, rounds, top):
    x = test_image()
    prior = ChartPrior(model, top_charts=top)
    contenders = {
        "chart prior, extension": lambda: value_and_grad(prior, x),
        MATRIX_ROW: lambda: _patch_matrix(lambda: value_and_grad(prior, x)),
        AVX2_ROW: lambda: _with_avx2_loops(lambda: value_and_grad(prior, x)),
        "chart prior, reference (pure PyTorch)": lambda: _with_reference(lambda: value_and_grad(prior, x)),
        OLD_REF: lambda: _with_reference(lambda: _pair_selection(lambda: value_and_grad(prior, x))),
    }
    prior_bf16 = ChartPrior(model, top_charts=top, precision="bfloat16") if charts_bf16_supported() else None
    if prior_bf16 is not None:
        contenders[BF16_ROW] = lambda: value_and_grad(prior_bf16, x)
    if gmm is not None:
        contenders["EPLL GMM.nll (K=%d), extension" % gmm.n_components] = lambda: value_and_grad(gmm, x)
    for fn in contenders.values():  # warm-up (weights cast, allocator)
        fn()
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].append(time_once(fn))
    v_ext, g_ext = value_and_grad(prior, x)
    v_ref, g_ref = _with_reference(lambda: value_and_grad(prior, x))
    agreement = dict(value=abs(v_ext - v_ref) / abs(v_ref), grad=float((g_ext - g_ref).abs().max() / g_ref.abs().max()))
    if prior_bf16 is not None:
        v_lp, g_lp = value_and_grad(prior_bf16, x)
        agreement.update(bf16_value=abs(v_lp - v_ref) / abs(v_ref), bf16_value_abs=abs(v_lp - v_ref),
                         bf16_grad=float((g_lp - g_ref).abs().max() / g_ref.abs().max()),
                         bf16_grad_norm=float((g_lp - g_ref).norm() / g_ref.norm()))
    return {name: statistics.median(t) for name, t in times.items()}, agreement


OLD_REF = "chart prior, reference, per-pair selection (the path before 2026-12-03)"
MATRIX_ROW = "chart prior, extension, patches extracted as an (N, 36) matrix (the path before 2026-12-06)"
BF16_ROW = "chart prior, extension, bfloat16 decoder tangents on AMX (precision='bfloat16')"
AVX2_ROW = "chart prior, extension with the AVX2 loops (PATCHREG_DISABLE_AVX512=1; the path before 2026-12-05)"


def _with_avx2_loops(fn):
    """fn with the chart kernel's AVX-512 loops switched off (the kernel reads the variable per call)."""
    saved = os.environ.get("PATCHREG_DISABLE_AVX512")
    os.environ["PATCHREG_DISABLE_AVX512"] = "1"
    try:
        return fn()
    finally:
        if saved is None:
            os.environ.pop("PATCHREG_DISABLE_AVX512", None)
        else:
            os.environ["PATCHREG_DISABLE_AVX512"] = saved


def _old_path(switch, value, fn):
    """fn with one of chart_prior's baseline switches (_SELECT_BY_PAIRS, _READ_FROM_IMAGE) set to value."""
    import patchreg.priors.chart_prior as cp

    saved = getattr(cp, switch)
    setattr(cp, switch, value)
    try:
        return fn()
    finally:
        setattr(cp, switch, saved)


def _pair_selection(fn):
    return _old_path("_SELECT_BY_PAIRS", True, fn)


def _patch_matrix(fn):
    return _old_path("_READ_FROM_IMAGE", False, fn)


def _with_reference(fn):
    with patchreg.use_backend("reference"):
        return fn()


STAGES = {
    "patchreg::charts_log_prob_image": "fused chart kernel reading the image (value and gradient)",
    "patchreg::charts_log_prob": "fused chart kernel (value and gradient)",
    "patchreg::gmm_component_log_prob": "selector: fused GMM op, K zero-mean Gaussians",
    "aten::topk": "selector: top charts, top pairs",
    "patchreg::extract_patches": "patch extraction",
    "patchreg::aggregate_patches": "aggregation (adjoint of extraction)",
}


def time_breakdown(model, top, threads):
    """Per thread count: (wall ms of one evaluation, profiled total ms, [(stage, ms)]), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    x = test_image()
    out = {}
    saved = torch.get_num_threads()
    for t in threads:
        torch.set_num_threads(t)
        prior = ChartPrior(model, top_charts=top)
        value_and_grad(prior, x)
        wall = statistics.median(time_once(lambda: value_and_grad(prior, x)) for _ in range(2))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            value_and_grad(prior, x)
            profiled = time.perf_counter() - start
        self_ms = {}
        for e in prof.key_averages():
            self_ms[e.key] = self_ms.get(e.key, 0.0) + e.self_cpu_time_total / 1000
        rows = [(label, self_ms.pop(op, 0.0)) for op, label in STAGES.items()]
        rest = sorted(((ms, key) for key, ms in self_ms.items() if key.startswith("aten::")), reverse=True)[:5]
        rows += [(f"{key} (all calls)", ms) for ms, key in rest]
        out[t] = (1000 * wall, 1000 * profiled, rows)
    torch.set_num_threads(saved)
    return out


def selection_error(model, tops):
    x = test_image()
    patches = patchreg.extract_patches(x, model.patch_size)[0]
    coords = model.coords(patches)
    exact, _ = chart_patch_log_prob(model, coords, top_charts=None, compute_grad=False)
    rows = {}
    for m in tops:
        approx, _ = chart_patch_log_prob(model, coords, top_charts=m, compute_grad=False)
        err = (exact - approx).double()
        rows[m] = dict(mean=float(err.mean()), p99=float(err.quantile(0.99)), max=float(err.max()),
                       R_error=float(err.mean()))
    return rows


_MEMORY_CHILD = r"""
import sys, torch
sys.path.insert(0, {root!r})
from patchreg.priors import ChartPrior, PatchCharts
import patchreg.priors.chart_prior as cp
cp._READ_FROM_IMAGE = {from_image}
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            return int(line.split()[1]) / 1024
model = PatchCharts.load({path!r})
prior = ChartPrior(model, top_charts={top})
x = torch.rand(1, 1, 64, 64)
prior.nll(x.requires_grad_(True)).sum().backward()
x = torch.rand(1, 1, 512, 512)
before = hwm()
xr = x.clone().requires_grad_(True)
prior.nll(xr).sum().backward()
print(hwm() - before)
"""

_EXTRACT_CHILD = r"""
import sys, time, statistics, torch
sys.path.insert(0, {root!r})
import patchreg
torch.manual_seed(0)
x = torch.rand(1, 1, 512, 512)
def t(fn):
    s = time.perf_counter(); fn(); return time.perf_counter() - s
first = t(lambda: patchreg.extract_patches(x, 8))
later = statistics.median(t(lambda: patchreg.extract_patches(x, 8)) for _ in range(5))
ufirst = t(lambda: torch.nn.functional.unfold(x, 8))
ulater = statistics.median(t(lambda: torch.nn.functional.unfold(x, 8)) for _ in range(5))
print(first, later, ufirst, ulater)
"""


def peak_memory_mb(path, top, from_image=True):
    child = _MEMORY_CHILD.format(root=str(ROOT), path=str(path), top=top, from_image=from_image)
    out = subprocess.run([sys.executable, "-c", child],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def extraction_spread(n):
    rows = []
    for _ in range(n):
        out = subprocess.run([sys.executable, "-c", _EXTRACT_CHILD.format(root=str(ROOT))], capture_output=True,
                             text=True, check=True)
        rows.append([float(v) * 1000 for v in out.stdout.split()])
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="pretrained:charts")
    ap.add_argument("--gmm", default="pretrained:gmm", help="GMM checkpoint for the EPLL row ('' to skip)")
    ap.add_argument("--top", type=int, default=2, help="charts kept per patch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fresh", type=int, default=10, help="fresh processes for the extraction spread")
    ap.add_argument("--out", default="bench/results/chart_prior_speed.md")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    path = resolve(args.checkpoint)
    model = PatchCharts.load(path)
    gmm = GMM.load(resolve(args.gmm)) if args.gmm else None
    load_before = os.getloadavg()
    times, agreement = speed_rows(model, gmm, args.rounds, args.top)
    load_after = os.getloadavg()
    breakdown = time_breakdown(model, args.top, [1, 2])
    errors = selection_error(model, [1, 2, 4])
    memory = peak_memory_mb(path, args.top)
    memory_matrix = peak_memory_mb(path, args.top, from_image=False)
    spread = extraction_spread(args.fresh)
    K, d = model.n_charts, model.mixture.latent_dim
    ext = times["chart prior, extension"]
    ref = times["chart prior, reference (pure PyTorch)"]
    lines = [
        "# Chart prior: value plus gradient of R on a 256x256 image",
        "",
        f"Command: `python bench/chart_prior_speed.py --checkpoint {args.checkpoint} --top {args.top} --rounds {args.rounds}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}; load average (1, 5, 15 min) before the timed rounds: {', '.join(f'{v:.1f}' for v in load_before)}, "
        f"after: {', '.join(f'{v:.1f}' for v in load_after)}.",
        f"Model: {path.name}, K = {K} charts, d = {d}, {model.patch_size}x{model.patch_size} patches; image: the first "
        f"256x256 Set12 image plus noise of sigma 25/255; all 63001 patches (stride 1), top {args.top} charts per patch; "
        f"float32; medians of {args.rounds} interleaved rounds.",
        f"Extension vs reference: relative difference {agreement['value']:.1e} in R, {agreement['grad']:.1e} in the gradient (max).",
        "",
        "| contender | value + gradient, ms |",
        "|---|---|",
    ]
    lines += [f"| {name} | {1000 * t:.0f} |" for name, t in times.items()]
    if BF16_ROW in times:
        lines += ["", f"**bfloat16: reference / extension = {ref / times[BF16_ROW]:.1f}x** (goal >= 10x); extension in "
                  f"bfloat16 {1000 * times[BF16_ROW]:.0f} ms, {ext / times[BF16_ROW]:.2f}x the float32 extension. Its R "
                  f"against the float32 reference: {agreement['bf16_value_abs']:.1e} nats per patch "
                  f"(relative {agreement['bf16_value']:.1e}); gradient: max abs error / max abs "
                  f"{agreement['bf16_grad']:.1e}, relative L2 error {agreement['bf16_grad_norm']:.1e}."]
    else:
        lines += ["", "No bfloat16 row: this CPU or build has no AMX-BF16 chart loops (charts_bf16_supported() False)."]
    lines += ["", f"**float32: reference / extension = {ref / ext:.1f}x** (goal >= 10x); extension {1000 * ext:.0f} ms. "
              f"Against the reference with the old per-pair selection: {times[OLD_REF] / ext:.1f}x. "
              f"The AVX-512 loops against the AVX2 loops of the same kernel: {times[AVX2_ROW] / ext:.2f}x "
              f"(reference / AVX2 path: {ref / times[AVX2_ROW]:.1f}x). The kernel reading the image against the extracted "
              f"patch matrix: {times[MATRIX_ROW] / ext:.2f}x.", ""]
    lines += ["## Where the extension's time goes (one evaluation, torch.profiler self time, ms)", ""]
    for t, (wall, profiled, rows) in breakdown.items():
        listed = sum(ms for _, ms in rows)
        lines += [f"{t} thread{'s' if t > 1 else ''}: {wall:.0f} ms per evaluation without the profiler, {profiled:.0f} ms "
                  "under it.", "", "| stage | ms | share |", "|---|---|---|"]
        lines += [f"| {label} | {ms:.1f} | {100 * ms / profiled:.1f}% |" for label, ms in rows]
        lines += [f"| everything else (small ops, Python, autograd) | {profiled - listed:.1f} | "
                  f"{100 * (profiled - listed) / profiled:.1f}% |", ""]
    lines += ["## Error of chart selection (nats per patch, log p(all charts) - log p(top m))", "",
              "| m | mean (= error in R) | 99th percentile | max |", "|---|---|---|---|"]
    lines += [f"| {m} | {e['mean']:.2e} | {e['p99']:.2e} | {e['max']:.2e} |" for m, e in errors.items()]
    lines += ["", f"## Peak memory, 512x512 image, value + gradient: {memory:.0f} MB above the process's earlier peak "
              "(goal < 1 GB)", "",
              f"The kernel reads the patches from the image; the path before 2026-12-06 (an extracted (N, 36) patch "
              f"matrix and an (N m, 35) matrix of rescaled points) peaked at {memory_matrix:.0f} MB in the same "
              f"measurement ({memory_matrix / memory:.2f}x).", ""]
    lines += ["## extract_patches, 512x512, p = 8, fresh processes (ms)", "",
              "| process | extract first call | extract later (median of 5) | F.unfold first | F.unfold later |",
              "|---|---|---|---|---|"]
    lines += [f"| {i} | {a:.1f} | {b:.1f} | {c:.1f} | {e:.1f} |" for i, (a, b, c, e) in enumerate(spread)]
    firsts = [r[0] for r in spread]
    laters = [r[1] for r in spread]
    lines += ["", f"extract first call: median {statistics.median(firsts):.1f} ms, max {max(firsts):.1f} ms; later calls: "
              f"median {statistics.median(laters):.1f} ms, max {max(laters):.1f} ms.", ""]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(dict(times=times, agreement=agreement, selection_error=errors,
                                                        load_before=load_before, load_after=load_after,
                                                        breakdown={str(t): v for t, v in breakdown.items()},
                                                        peak_memory_mb=memory, peak_memory_mb_patch_matrix=memory_matrix,
                                                        extraction_ms=spread), indent=1))


if __name__ == "__main__":
    main()
