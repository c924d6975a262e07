"""Our PatchNR against DeepInverse 0.5's PatchNR, side by side: time per iteration and PSNR.

The problem: Set12 image --image (256x256), Gaussian denoising sigma 25/255 (seeded), the objective
||x - y||^2 / (2 sigma^2) + lam * mean_i -log p(P_i x) over N_p random patches per iteration,
lam = (number of image patches) / d, Adam (lr 0.01), float32, the same for both.

- ours: `patchreg.reconstruct` with `patchreg.priors.PatchNR` (fused extraction at positions, the
  flow's weights frozen during the call, pixel clamp to [0, 1]).
- ours, bfloat16: the same with `PatchNR(..., precision="bfloat16")`: the flow's dense layers in
  bfloat16 (weights cast once per reconstruction, inside the timed call), the image, patches,
  log-determinants and Gaussian term in float32 (patchreg.priors.flow_lowp).
- deepinv: the loop of DeepInverse's PatchNR examples written out: `deepinv.utils.patch_extractor`
  (N_p distinct random positions), `deepinv.optim.PatchNR.fn`, Adam on x, clamp. At its best:
  the flow's weights are frozen (requires_grad False), as a careful user would do.

Two flows inside DeepInverse's pipeline:
- "deepinv flow": DeepInverse's own GLOW network (`NormalizingFlow`, 5 blocks, --hidden units), the
  architecture its PatchNR builds by default; randomly initialised, so it is timed, not scored.
- "our net": our trained flow's network inside DeepInverse's pipeline: same model, same settings,
  so the PSNR must agree and the time difference is the pipeline's alone.
- ", autocast bf16": that pipeline's forward pass (patch extraction and PatchNR.fn) under
  torch.autocast("cpu", dtype=torch.bfloat16), the backward pass outside it, as torch recommends:
  what a DeepInverse user could do in two lines (DeepInverse's recommended setting is float32).

Ratios: every DeepInverse row's time over ours (float32) and over ours (bfloat16), from the medians.

Timing: --rounds rounds; in each, every method runs --steps iterations at N_p = --patches (the
paper's 40k by default), in alternation, so machine noise hits all alike; the median time per
iteration is kept (a call's first iteration, with its one-off costs, is inside the mean of its
--steps). PSNR: ours, ours bfloat16 and DeepInverse with our net (float32 and autocast) each run
--parity-steps iterations at N_p = --parity-patches, same seeds.

deepinv is a bench-only dependency:
    pip install --no-deps deepinv==0.5.0 torchvision==0.29.1 && pip install einops h5py natsort requests torchmetrics

    python bench/patchnr_vs_deepinv.py --seed 0 --out bench/results/patchnr_vs_deepinv
    python bench/patchnr_vs_deepinv.py --threads 1 --seed 0 --out bench/results/patchnr_vs_deepinv_bf16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patchreg import physics  # noqa: E402
from patchreg.data import load_set12, to_tensor  # noqa: E402
from patchreg.metrics import psnr  # noqa: E402
from patchreg.pretrained import resolve_checkpoint  # noqa: E402
from patchreg.priors import PatchFlow, PatchNR  # noqa: E402
from patchreg.priors.flow_lowp import bf16_matmul_is_fast  # noqa: E402
from patchreg.reconstruct import reconstruct  # noqa: E402


def deepinv_flow(dim: int, n_blocks: int, hidden: int) -> torch.nn.Module:
    from deepinv.optim.prior import NormalizingFlow

    def subnet(c_in, c_out):
        return torch.nn.Sequential(torch.nn.Linear(c_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                                   torch.nn.ReLU(), torch.nn.Linear(hidden, c_out))

    return NormalizingFlow(dimension=dim, num_layers=n_blocks, subnet=subnet, clamp=1.6)


def run_deepinv(net, y, sigma, lam, n_patches, steps, patch_size, seed, autocast=False):
    """DeepInverse's PatchNR reconstruction loop; returns x. autocast: its forward pass under
    torch.autocast("cpu", bfloat16), the loss and the backward pass outside."""
    import deepinv as dinv
    from deepinv.utils import patch_extractor

    prior = dinv.optim.PatchNR(normalizing_flow=net, patch_size=patch_size, channels=1)
    prior.requires_grad_(False)
    torch.manual_seed(seed)
    x = y.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with cast:
            patches, _ = patch_extractor(x, n_patches, patch_size)
            reg = prior.fn(patches.reshape(x.shape[0], n_patches, -1)).mean()
        reg = reg.float()
        loss = ((x - y) ** 2).sum() / (2 * sigma**2) + lam * reg
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    return x.detach()


def run_ours(flow, y, sigma, lam, n_patches, steps, seed, precision="float32"):
    op = physics.Denoising(physics.GaussianNoise(sigma))
    prior = PatchNR(flow, n_patches=n_patches, seed=seed, precision=precision)
    x, _ = reconstruct(y, op, prior, lam, steps=steps, lr=0.01, clamp=(0.0, 1.0), progress=False)
    return x.detach()


class OurNet(torch.nn.Module):
    """Our trained coupling network with DeepInverse's flow interface: forward(x) -> (z, logdet)."""

    def __init__(self, flow: PatchFlow):
        super().__init__()
        self.net = flow.net

    def forward(self, x, rev=False):
        return self.net.inverse(x) if rev else self.net(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flow", default="pretrained:flow")
    ap.add_argument("--image", type=int, default=0, help="Set12 index (0 = 01.png)")
    ap.add_argument("--patches", type=int, default=40_000)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parity-patches", type=int, default=2000)
    ap.add_argument("--parity-steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/patchnr_vs_deepinv")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import deepinv

    flow = PatchFlow.load(resolve_checkpoint(args.flow)).float()
    p, d = flow.patch_size, flow.dim
    clean = to_tensor(load_set12()[args.image], torch.float32)
    sigma = 25 / 255
    gen = torch.Generator().manual_seed(args.seed)
    y = clean + sigma * torch.randn(clean.shape, generator=gen)
    H, W = clean.shape[-2:]
    lam = (H - p + 1) * (W - p + 1) / d
    hidden = flow.config["hidden"] if hasattr(flow, "config") and isinstance(flow.config, dict) else 512
    methods = {
        "ours": lambda n, s: run_ours(flow, y, sigma, lam, n, s, args.seed),
        "ours, bfloat16": lambda n, s: run_ours(flow, y, sigma, lam, n, s, args.seed, precision="bfloat16"),
        "deepinv, our net": lambda n, s: run_deepinv(OurNet(flow), y, sigma, lam, n, s, p, args.seed),
        "deepinv, deepinv flow": lambda n, s: run_deepinv(deepinv_flow(d, 5, hidden), y, sigma, lam, n, s, p, args.seed),
        "deepinv, our net, autocast bf16": lambda n, s: run_deepinv(OurNet(flow), y, sigma, lam, n, s, p, args.seed,
                                                                    autocast=True),
        "deepinv, deepinv flow, autocast bf16": lambda n, s: run_deepinv(deepinv_flow(d, 5, hidden), y, sigma, lam, n,
                                                                         s, p, args.seed, autocast=True),
    }
    times = {m: [] for m in methods}
    for r in range(args.rounds):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn(args.patches, args.steps)
            times[name].append((time.perf_counter() - start) / args.steps)
            print(f"round {r}: {name}: {times[name][-1]:.2f} s/iteration", flush=True)
    per_iter = {m: statistics.median(v) for m, v in times.items()}
    parity = {}
    for name in ("ours", "ours, bfloat16", "deepinv, our net", "deepinv, our net, autocast bf16"):
        start = time.perf_counter()
        x = methods[name](args.parity_patches, args.parity_steps)
        parity[name] = {"psnr": float(psnr(x.clamp(0, 1), clean)[0]), "seconds": time.perf_counter() - start}
        print(f"parity {name}: {parity[name]['psnr']:.2f} dB in {parity[name]['seconds']:.1f} s", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python bench/patchnr_vs_deepinv.py " + " ".join(argv if argv is not None else sys.argv[1:])
    ours, ours_bf16 = per_iter["ours"], per_iter["ours, bfloat16"]
    ratios = {name: {"over_ours_float32": t / ours, "over_ours_bfloat16": t / ours_bf16}
              for name, t in per_iter.items() if name.startswith("deepinv")}
    bf16_gap = parity["ours, bfloat16"]["psnr"] - parity["ours"]["psnr"]
    result = {"command": command, "per_iteration_s": per_iter, "all_times": times, "ratios": ratios,
              "parity": parity, "psnr_bf16_minus_fp32_db": bf16_gap, "bf16_native": bf16_matmul_is_fast(),
              "deepinv": deepinv.__version__, "torch": torch.__version__, "threads": torch.get_num_threads()}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = ["# PatchNR: ours against DeepInverse, side by side", "", f"Command: `{command}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads), deepinv {deepinv.__version__}; Set12 image {args.image + 1:02d} "
             f"({H}x{W}), sigma 25/255, lam = {lam:.0f}; native bfloat16 matmuls: {bf16_matmul_is_fast()}.", "",
             f"## Time per iteration at N_p = {args.patches} (median of {args.rounds} rounds of {args.steps} iterations, "
             "alternating)", "",
             "| method | s / iteration | ours faster by | ours bfloat16 faster by | 300 iterations (paper) |",
             "|---|---|---|---|---|"]
    for name, t in per_iter.items():
        lines.append(f"| {name} | {t:.2f} | {t / ours:.2f}x | {t / ours_bf16:.2f}x | {300 * t / 60:.0f} min |")
    lines += ["", f"## Same model, same settings: PSNR after {args.parity_steps} iterations at N_p = {args.parity_patches}",
              "", "| method | PSNR dB | time s |", "|---|---|---|"]
    for name, r in parity.items():
        lines.append(f"| {name} | {r['psnr']:.2f} | {r['seconds']:.1f} |")
    lines += ["", f"PSNR ours bfloat16 - ours float32: {bf16_gap:+.3f} dB (same seeds)."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
