"""Training steps per second of a chart mixture with and without the fused chart op (issue 15).

A mixture-phase step evaluates every chart's exact log-density on every point of the batch (the
responsibilities) and then the training losses. With the extension backend the responsibilities come
from the fused kernel (`ChartMixture._fused_chart_log_probs`, one call for all K charts); "generic" is
the same step with the fused path switched off (the per-chart PyTorch `assignment_score`). The two are
timed interleaved in one process on the same model, batches and random streams, so that the ratio is
measured side by side; the overlap phase never uses the kernel (its scaled prior is not in the op).

    OMP_NUM_THREADS=1 python bench/charts_train_step_fused.py --steps 20 --out bench/results/charts_train_step_fused
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patchreg.backend import use_extension  # noqa: E402
from patchreg.charts import build_mixture  # noqa: E402
from patchreg.charts.mixture import ChartMixture  # noqa: E402
from patchreg.charts.training import TrainConfig, mixture_loss  # noqa: E402

# name -> (K, n, d, width, blocks, batch): the torus toy's defaults, and the image-patch model (6x6 mean-free)
CASES = {
    "torus (K 6, n 3, d 2, width 64, batch 128)": (6, 3, 2, 64, 2, 128),
    "patches 6x6 (K 32, n 35, d 8, width 64, batch 512)": (32, 35, 8, 64, 2, 512),
}


def one_step(model, optimizer, x, config, generator) -> float:
    """Seconds of one mixture-phase optimisation step (loss, backward, Adam)."""
    start = time.perf_counter()
    loss, _ = mixture_loss(model, x, config, "mixture", None, generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def time_case(K, n, d, width, blocks, batch, steps, seed) -> dict:
    torch.manual_seed(seed)
    model = build_mixture("fif", K, n, d, width=width, n_blocks=blocks)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, foreach=True)
    config = TrainConfig(batch_size=batch).check()
    data = torch.randn(batch * (steps + 1), n)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # as in mixture_loss (detached responsibilities)
        fused_probe = model._fused_chart_log_probs(data[:4], config.train_sigma, 1.0)
    if fused_probe is None:
        raise SystemExit("the fused chart op does not apply here (extension backend and FIF MLP charts needed)")
    times = {"fused": [], "generic": []}
    for i in range(steps + 1):  # step 0 warms both paths up and is not counted
        x = data[i * batch : (i + 1) * batch]
        order = ("fused", "generic") if i % 2 == 0 else ("generic", "fused")
        for mode in order:
            if mode == "fused":
                t = one_step(model, optimizer, x, config, generator)
            else:
                with mock.patch.object(ChartMixture, "_fused_chart_log_probs", return_value=None):
                    t = one_step(model, optimizer, x, config, generator)
            if i > 0:
                times[mode].append(t)
    fused, generic = statistics.median(times["fused"]), statistics.median(times["generic"])
    return dict(K=K, n=n, d=d, width=width, blocks=blocks, batch=batch, steps=steps,
                fused_s=fused, generic_s=generic, speedup=generic / fused,
                fused_steps_per_s=1 / fused, generic_steps_per_s=1 / generic)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per mode and case (after one warm-up)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/charts_train_step_fused")
    args = ap.parse_args(argv)
    if args.steps < 1:
        raise SystemExit(f"--steps must be >= 1, got {args.steps}")
    if not use_extension():
        raise SystemExit("needs the extension backend (PATCHREG_BACKEND unset or 'extension', extension built)")
    rows = []
    for name, case in CASES.items():
        row = dict(case=name, **time_case(*case, args.steps, args.seed))
        rows.append(row)
        print(f"{name}: fused {row['fused_s'] * 1e3:.1f} ms, generic {row['generic_s'] * 1e3:.1f} ms, "
              f"{row['speedup']:.2f}x", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    command = "python bench/charts_train_step_fused.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Chart-mixture training step: fused responsibilities vs the per-chart path", "",
             f"Command: `OMP_NUM_THREADS=1 {command}`", "",
             f"Machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
             "mixture-phase steps of a FIF mixture (ResidualMLP charts), the two modes interleaved step by step "
             "on the same model and batches; median seconds per step over the timed steps.", "",
             "| case | fused ms/step | generic ms/step | steps/s fused | steps/s generic | speed-up |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['fused_s'] * 1e3:.1f} | {r['generic_s'] * 1e3:.1f} | "
                     f"{r['fused_steps_per_s']:.1f} | {r['generic_steps_per_s']:.1f} | {r['speedup']:.2f}x |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
