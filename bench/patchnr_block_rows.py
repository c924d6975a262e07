"""Time of one PatchNR gradient evaluation in bfloat16 against the block size of its reverse pass.

`Bfloat16FlowLogProb` (patchreg.priors.flow_lowp) runs the flow forward and its hand-written reverse pass
a block of rows at a time. Small blocks keep the activations in cache but pay a fixed cost per matmul
call; large ones hold more memory (about 22 kB per row with the shipped flow). This times log p and its
patch gradient for N_p patches of a Set12 image at several block sizes, in alternating rounds on one
thread, and writes a markdown table and JSON with the median seconds, the ratio to the fastest and the
memory held.

Run: python bench/patchnr_block_rows.py --threads 1 --out bench/results/patchnr_block_rows
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from patchreg import extract_patches_at
from patchreg.data import load_set12, to_tensor
from patchreg.io import atomic_write_json, atomic_write_text
from patchreg.pretrained import resolve_checkpoint
from patchreg.priors import PatchFlow
from patchreg.priors._patch_images import random_positions
from patchreg.priors.flow_lowp import BLOCK_ROWS, Bfloat16FlowLogProb, bf16_matmul_is_fast


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flow", default="pretrained:flow")
    ap.add_argument("--n-patches", type=int, default=40_000)
    ap.add_argument("--blocks", default="1024,2048,4096,8192,16384,40000",
                    help="comma-separated block sizes (rows)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--image", type=int, default=0, help="Set12 index")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output stem: writes OUT.md and OUT.json")
    args = ap.parse_args(argv)
    blocks = [int(b) for b in args.blocks.split(",") if b]
    for name, value, low in (("--n-patches", args.n_patches, 1), ("--rounds", args.rounds, 1),
                             ("--threads", args.threads, 1)):
        if value < low:
            ap.error(f"{name} must be >= {low}, got {value}")
    if not blocks or min(blocks) < 1:
        ap.error(f"--blocks must list integers >= 1, got {args.blocks!r}")
    args.block_list = blocks
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    flow = PatchFlow.load(resolve_checkpoint(args.flow)).float()
    image = to_tensor(load_set12()[args.image], torch.float32)
    gen = torch.Generator().manual_seed(args.seed)
    positions = random_positions(gen, 1, args.n_patches, image.shape[-2], image.shape[-1], flow.patch_size)
    patches = extract_patches_at(image, positions, flow.patch_size).reshape(args.n_patches, -1)
    models = {b: Bfloat16FlowLogProb(flow, block_rows=b) for b in args.block_list}

    def one(model):
        x = patches.clone().requires_grad_(True)
        model.log_prob(x).sum().backward()
        return x.grad

    for model in models.values():  # warm-up: buffers allocated, oneDNN primitives created
        one(model)
    times = {b: [] for b in models}
    for r in range(args.rounds):
        order = list(models) if r % 2 == 0 else list(reversed(models))
        for b in order:
            start = time.perf_counter()
            one(models[b])
            times[b].append(time.perf_counter() - start)
    med = {b: statistics.median(v) for b, v in times.items()}
    best = min(med.values())
    rows = [dict(block_rows=b, seconds=med[b], slower_than_fastest=med[b] / best,
                 memory_mb=models[b].memory_bytes() / 2**20, rounds=times[b]) for b in models]
    meta = dict(command="python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
                machine=f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
                native_bf16=bf16_matmul_is_fast("cpu"), n_patches=args.n_patches, image=args.image,
                default_block_rows=BLOCK_ROWS)
    lines = ["# PatchNR bfloat16: time per gradient evaluation against the block size", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}; native bfloat16 matmuls: "
             f"{meta['native_bf16']}; N_p = {args.n_patches} patches of Set12 image {args.image + 1:02d}.png; "
             f"median of {args.rounds} alternating rounds. Default block: {BLOCK_ROWS} rows.", "",
             "| block rows | s per log p + gradient | vs fastest | buffers held (MB) |", "|---|---|---|---|"]
    lines += [f"| {r['block_rows']} | {r['seconds']:.3f} | {r['slower_than_fastest']:.2f}x | {r['memory_mb']:.0f} |"
              for r in rows]
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    atomic_write_json(out.with_suffix(".json"), dict(meta=meta, rows=rows))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
