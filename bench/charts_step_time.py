"""Seconds per training step of the digits chart mixture (the configuration of
`charts_experiments.py --task digits`: K = 10 charts, d = 6, batch 128, one thread), per phase,
plus the evaluation that follows training (finalize, held-out NLL, sampling).

  PATCHREG_BACKEND=reference .venv/bin/python bench/charts_step_time.py --model fif:conv --steps 3
  ... --profile     # also print torch.profiler's table of one mixture-phase step

Steps of the "pretrain" phase train each chart on its k-means cluster (FIF loss only); steps of the
"mixture" phase also evaluate the exact chart log-densities (responsibilities) for all K charts.
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fif:conv", help="family:architecture")
    p.add_argument("--steps", type=int, default=3, help="timed steps per phase (after one warm-up step)")
    p.add_argument("--width", type=int, default=None, help="default: 16 (conv channels) or 32 (mlp), as the digits run")
    p.add_argument("--eval", action="store_true", help="also time finalize + held-out NLL + 449 samples")
    p.add_argument("--nll-batch", type=int, default=64, help="points per batch of the held-out NLL (charts_experiments: 64)")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--surrogate", choices=("auto", "jvp", "vjp"), default=None,
                   help="FIF charts: how the Hutchinson term is differentiated (default: the library's)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    import patchreg
    from patchreg.charts import TrainConfig, build_mixture
    from patchreg.charts.datasets import load_dataset
    from patchreg.charts.metrics import heldout_nll
    from patchreg.charts.seeding import seed_charts
    from patchreg.charts.training import BatchStream, finalize, mixture_loss

    family, arch = args.model.split(":")
    width = args.width or (16 if arch == "conv" else 32)
    data = load_dataset("digits", seed=args.seed)
    torch.manual_seed(args.seed)
    model = build_mixture(family, 10, 64, 6, arch, width=width, n_blocks=2, sigma=0.05)
    if args.surrogate:
        for chart in model.charts:
            chart.surrogate_mode = args.surrogate
    config = TrainConfig(batch_size=128, lr=2e-3, train_sigma=0.05, seed=args.seed, seed_points=len(data.train))
    generator = torch.Generator().manual_seed(args.seed)
    train = data.train.float()
    stream = BatchStream(train, 128, generator)
    centers = seed_charts(model, stream.draw(len(train)), generator, model.config["align"])
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, foreach=True)
    print(f"patchreg from {os.path.dirname(patchreg.__file__)}; model {args.model}, width {width}, torch {torch.__version__}")

    def step(phase):
        x = stream.draw()
        loss, _ = mixture_loss(model, x, config, phase, centers, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        return loss.item()

    for phase in ("pretrain", "mixture"):
        step(phase)  # warm-up
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            step(phase)
        print(f"{phase:8s} step: {(time.perf_counter() - started) / args.steps:.3f} s wall, "
              f"{(time.process_time() - cpu) / args.steps:.3f} s CPU (mean of {args.steps})")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step("mixture")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    if args.eval:
        started = time.perf_counter()
        finalize(model, train, config.train_sigma)
        t_final = time.perf_counter() - started
        model = model.double()
        started = time.perf_counter()
        nll = heldout_nll(model, data.test, batch=args.nll_batch)
        t_nll = time.perf_counter() - started
        started = time.perf_counter()
        model.sample(len(data.test), torch.Generator().manual_seed(1))
        t_sample = time.perf_counter() - started
        print(f"finalize {t_final:.2f} s, held-out NLL {t_nll:.2f} s (value {nll:.1f}), sample {t_sample:.2f} s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
