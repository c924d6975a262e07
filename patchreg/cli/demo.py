"""`patchreg demo`: the main job on the photos scikit-image ships, with a report folder.

Stage 1 (patch operators): extract and aggregate the patches of every bundled image on both
backends, check that they agree, and time them. Further stages live in modules named demo_*.py
beside this one and append themselves to DEMO_STAGES (the CLI imports them in name order).
Writes report.md and report.json into --out.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import backend, io
from ..data import BUNDLED_SPLITS, bundled_image, to_tensor
from ..ops import aggregate_patches, extract_patches

DEMO_STAGES = []  # (name, function(args, report) -> markdown lines); later modules append


def _best_time(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def patch_operator_stage(args, report: dict) -> list[str]:
    names = BUNDLED_SPLITS["train"] + BUNDLED_SPLITS["test"]
    p, s = args.patch_size, 1
    backends = ["reference"] + (["extension"] if backend.extension_available() else [])
    rows, results = [], []
    for name in names:
        x = to_tensor(bundled_image(name), dtype=torch.float32)
        H, W = x.shape[-2:]
        timings, outputs = {}, {}
        for b in backends:
            with backend.use_backend(b):
                outputs[b] = (
                    extract_patches(x, p, s),
                    aggregate_patches(extract_patches(x, p, s), (H, W), p, s, normalize=True),
                )
                patches = outputs[b][0]
                timings[b] = (
                    _best_time(lambda: extract_patches(x, p, s)),
                    _best_time(lambda: aggregate_patches(patches, (H, W), p, s)),
                )
        ref = outputs["reference"]
        agree = all(
            torch.allclose(outputs[b][0], ref[0], atol=1e-6) and torch.allclose(outputs[b][1], ref[1], atol=1e-5)
            for b in backends
        )
        roundtrip_err = float((ref[1] - x).abs().max())
        entry = {"image": name, "size": [H, W], "agree": agree, "roundtrip_max_error": roundtrip_err,
                 "timings_s": {b: {"extract": t[0], "aggregate": t[1]} for b, t in timings.items()}}
        results.append(entry)
        ext = timings.get("extension")
        speed = (
            f"{timings['reference'][0] / ext[0]:.1f}x / {timings['reference'][1] / ext[1]:.1f}x" if ext else "n/a"
        )
        rows.append(f"| {name} | {H}x{W} | {'yes' if agree else 'NO'} | {roundtrip_err:.1e} | {speed} |")
        print(f"  {name:22s} {H}x{W}  backends agree: {agree}  speed-up (extract/aggregate): {speed}")
    report["patch_operators"] = {"patch_size": p, "stride": s, "backends": backends, "images": results}
    if not all(r["agree"] for r in results):
        raise RuntimeError("extension and reference disagree on a bundled image (see report)")
    return [
        f"## Patch operators ({p}x{p} patches, stride {s}, float32)",
        "",
        f"Backends compared: {', '.join(backends)}. Round trip = normalised aggregation of the extracted",
        "patches, which must give the image back.",
        "",
        "| image | size | backends agree | round-trip max error | speed-up vs reference (extract / aggregate) |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


DEMO_STAGES.append(("patch operators", patch_operator_stage))


def run(args) -> int:
    if not 0 < args.sigma < 255:
        raise ValueError(f"--sigma must lie in (0, 255) (the 0-255 scale), got {args.sigma}")
    if args.patchnr_patches < 1 or args.patchnr_steps < 1:
        raise ValueError("--patchnr-patches and --patchnr-steps must be >= 1")
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"seed": args.seed, "backend_default": backend.get_backend()}
    lines = ["# patchreg demo", "", f"Command: `patchreg demo --out {args.out} --seed {args.seed}`", ""]
    for name, stage in DEMO_STAGES:
        print(f"[demo] {name}")
        lines += stage(args, report)
    io.atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    io.atomic_write_json(out / "report.json", report)
    print(f"[demo] report written to {out / 'report.md'}")
    return 0


def register(commands) -> None:
    parser = commands.add_parser("demo", help="run the main job on the bundled scikit-image photos")
    parser.add_argument("--out", default="demo_out", help="report folder (default: demo_out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patch-size", type=int, default=8, help="patch size of the operator stage")
    parser.add_argument("--sigma", type=float, default=25.0, help="noise level on the 0-255 scale")
    parser.add_argument("--patchnr-patches", type=int, default=2_000, help="PatchNR: random patches per iteration")
    parser.add_argument("--patchnr-steps", type=int, default=50, help="PatchNR: Adam iterations")
    parser.set_defaults(func=run)
