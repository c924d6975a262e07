"""Scaling of patchreg training over torch.distributed processes: 1 vs N ranks, side by side.

Workloads (each rank one thread; the global work is fixed, so ideal scaling halves the time on 2 ranks):
  gmm   EM of a K-component GMM on 6x6 patches of train400: --gmm-patches patches per iteration in all,
        split over the ranks (float64 statistics all-reduced); time per EM iteration.
  flow  PatchNR flow (5 GLOW blocks, 512 hidden) under DDP; --flow-batch patches per step in all;
        time per optimisation step.
  reconstruct
        `patchreg reconstruct --images DIR` over the first --recon-images validation images of train400
        (180x180, denoising at sigma 25/255, --recon-prior with its pretrained weights, HQS), at every
        --recon-batch size; the files are sharded over the ranks. Time per image = wall time of the whole
        command (start-up, model loading and writing included) / images.
Every (workload, processes) run is a fresh `torchrun --standalone` launch; runs are interleaved
(1, N, 1, N, ...) over --rounds so machine noise hits both alike; the table gives medians.
The timings exclude start-up (imports, rendezvous, data loading, the first warm-up iteration/steps).

    nice -n 19 python bench/distributed_scaling.py [--procs 1 2] [--rounds 3] [--out bench/results/distributed_scaling.md]
GPU node (NCCL, one process per GPU):
    python bench/distributed_scaling.py --device cuda --procs 1 2 4 8 --gmm-patches 4000000 --flow-batch 4096 \\
        --out bench/results/distributed_scaling_cuda.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------------ worker (under torchrun)
def _timed(world, fn, repeats: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds summed over ranks) of `repeats` calls of fn, between barriers."""
    import torch

    from patchreg import distributed

    distributed.barrier()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    distributed.barrier()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    total_cpu = distributed.all_reduce_sum(torch.tensor([cpu], dtype=torch.float64))
    return wall, float(total_cpu[0])


def _gmm_worker(args, world, device):
    import torch

    from patchreg.data import PatchSampler, load_images
    from patchreg.distributed import rank_seed, split_count
    from patchreg import distributed
    from patchreg.priors.gmm import GMM, _PatchStream

    images = load_images("train400:train")
    sampler = PatchSampler(images, 6, 8192, seed=rank_seed(0, world.rank), device=device)
    per_rank = split_count(args.gmm_patches, world)
    patches = sampler.sample(per_rank).to(torch.float64 if device.type == "cpu" else torch.float32)
    model = GMM(args.gmm_components, 6).to(device)
    model.fit(patches, n_iter=1, tol=0, progress=False)  # initialisation + one warm-up iteration
    stream = _PatchStream(patches, model.dim, 8192, None)

    def iteration():  # what GMM.fit does per EM iteration, without the checkpoint
        stats = model._e_step(stream, False)  # all-reduces the statistics
        model._m_step(stats, 1e-6)
        distributed.broadcast_tensors(model._parameter_tensors())

    return _timed(world, iteration, args.gmm_iters), f"EM iteration ({args.gmm_patches} patches, K={args.gmm_components})"


def _flow_worker(args, world, device):
    import torch

    from patchreg.data import PatchSampler, load_images
    from patchreg.distributed import rank_seed
    from patchreg.priors.flow import PatchFlow
    from patchreg.priors.flow_training import _MeanNLL

    local = args.flow_batch // world.world_size
    sampler = PatchSampler(load_images("train400:train"), 6, local, seed=rank_seed(0, world.rank), device=device)
    flow = PatchFlow(patch_size=6, seed=0).to(device)
    loss_of = _MeanNLL(flow)
    if world.distributed:
        loss_of = torch.nn.parallel.DistributedDataParallel(loss_of, forward_sync_buffers=False)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4, fused=True)

    def step():
        loss = loss_of(sampler.sample(local))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up
        step()
    return _timed(world, step, args.flow_steps), f"Adam step (global batch {args.flow_batch})"


def worker(args) -> None:
    import torch

    from patchreg import distributed

    torch.set_num_threads(1)
    with distributed.session(args.device) as world:
        device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
        run = {"gmm": _gmm_worker, "flow": _flow_worker}[args.worker]
        (wall, cpu), unit = run(args, world, device)
        repeats = args.gmm_iters if args.worker == "gmm" else args.flow_steps
        if world.is_main:
            Path(args.result).write_text(json.dumps({"wall": wall / repeats, "cpu": cpu / repeats, "unit": unit,
                                                     "procs": world.world_size}))


# ------------------------------------------------------------------------------------ folder reconstruction
def _recon_folder(args, scratch: Path) -> Path:
    """scratch/images: links to the first --recon-images validation images of train400."""
    from patchreg.data.natural import natural_dir, split_names

    folder = scratch / "images"
    if not folder.is_dir():
        folder.mkdir()
        for name in split_names("validation")[: args.recon_images]:
            (folder / name).symlink_to(natural_dir() / "train400" / name)
    return folder


def launch_reconstruct(args, procs: int, batch: int, scratch: Path) -> dict:
    images = _recon_folder(args, scratch)
    out = scratch / f"recon_{procs}_{batch}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               "-m", "patchreg", "reconstruct", "--task", "denoise", "--prior", args.recon_prior,
               "--images", str(images), "--output-dir", str(out), "--batch-size", str(batch), "--threads", "1",
               "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"reconstruct on {procs} processes failed:\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    n = len(summary["rows"])
    return {"wall": wall / n, "cpu": float("nan"), "solve": summary["seconds"] / n, "psnr": summary["mean_psnr"],
            "unit": f"image ({n} images 180x180, {args.recon_prior} HQS denoising, batch {batch})",
            "procs": procs, "batch": batch}


# ------------------------------------------------------------------------------------ driver
def launch(args, workload: str, procs: int, scratch: Path) -> dict:
    result = scratch / f"{workload}_{procs}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               str(Path(__file__).resolve()), "--worker", workload, "--result", str(result),
               "--device", args.device,
               "--gmm-patches", str(args.gmm_patches), "--gmm-components", str(args.gmm_components),
               "--gmm-iters", str(args.gmm_iters), "--flow-batch", str(args.flow_batch),
               "--flow-steps", str(args.flow_steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0 or not result.is_file():
        raise RuntimeError(f"{workload} on {procs} processes failed:\n{done.stderr[-3000:]}")
    return json.loads(result.read_text())


def _load() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def driver(args) -> None:
    import torch

    rows = []
    load_start = _load()
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for workload in args.workloads:
            if workload == "reconstruct":
                rows += _reconstruct_rows(args, scratch)
                continue
            runs = {p: [] for p in args.procs}
            for round_ in range(args.rounds):
                for procs in args.procs:
                    runs[procs].append(launch(args, workload, procs, scratch))
                    print(f"{workload} round {round_ + 1} procs {procs}: {runs[procs][-1]['wall']:.3f} s", flush=True)
            base = statistics.median(r["wall"] for r in runs[args.procs[0]])
            for procs in args.procs:
                wall = statistics.median(r["wall"] for r in runs[procs])
                cpu = statistics.median(r["cpu"] for r in runs[procs])
                rows.append((workload, runs[procs][0]["unit"], procs, wall, min(r["wall"] for r in runs[procs]),
                             max(r["wall"] for r in runs[procs]), cpu, base / wall, base / wall / procs * args.procs[0]))
    recon = [row for row in rows if row[0] == "reconstruct"]
    rows = [row for row in rows if row[0] != "reconstruct"]
    lines = [
        "# Scaling over torch.distributed processes (patchreg.distributed)", "",
        f"Command: `python bench/distributed_scaling.py {' '.join(sys.argv[1:])}`".rstrip(), "",
        f"Machine: {platform.machine()} {args.device.upper()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"backend {'NCCL' if args.device == 'cuda' else 'gloo'}, 1 thread per process, {args.rounds} interleaved rounds "
        f"(medians; min-max in brackets). Load average (1/5/15 min) {load_start} at the start, {_load()} at the end; "
        f"{time.time() - started:.0f} s in all.", "",
        "| workload | unit | processes | wall s / unit | (min-max) | CPU s / unit, all ranks | speed-up | efficiency |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for workload, unit, procs, wall, lo, hi, cpu, speedup, eff in rows:
        lines.append(f"| {workload} | {unit} | {procs} | {wall:.3f} | ({lo:.3f}-{hi:.3f}) | {cpu:.3f} | "
                     f"{speedup:.2f}x | {eff:.0%} |")
    lines += ["", "speed-up = median wall time of the first row of the workload / this row's; efficiency = "
              "speed-up / (processes / first row's processes). The global work per unit is the same for every "
              "process count."]
    if recon:
        lines += ["", "## Folder reconstruction (`patchreg reconstruct --images DIR`)", "",
                  "| unit | processes | batch | wall s / image, whole command | (min-max) | solve s / image, "
                  "per process | mean PSNR (dB) | speed-up |", "|---|---:|---:|---:|---|---:|---:|---:|"]
        for _, unit, procs, batch, wall, lo, hi, solve, psnr, speedup in recon:
            lines.append(f"| {unit} | {procs} | {batch} | {wall:.3f} | ({lo:.3f}-{hi:.3f}) | {solve:.3f} | "
                         f"{psnr:.2f} | {speedup:.2f}x |")
        lines += ["", "wall: the whole command (torchrun start-up, imports, model loading, writing) divided by the "
                  "images; solve: the solver's time per image inside one process (a batch's time / its images); "
                  "speed-up against the first row (1 process, the first batch size)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + (args.note or ""))


def _reconstruct_rows(args, scratch: Path) -> list[tuple]:
    configs = [(procs, batch) for procs in args.procs for batch in args.recon_batch]
    runs = {config: [] for config in configs}
    for round_ in range(args.rounds):
        for procs, batch in configs:
            runs[(procs, batch)].append(launch_reconstruct(args, procs, batch, scratch))
            print(f"reconstruct round {round_ + 1} procs {procs} batch {batch}: "
                  f"{runs[(procs, batch)][-1]['wall']:.3f} s / image", flush=True)
    base = statistics.median(r["wall"] for r in runs[configs[0]])
    rows = []
    for config in configs:
        done = runs[config]
        wall = statistics.median(r["wall"] for r in done)
        rows.append(("reconstruct", (done[0]["unit"],) + config + (wall, min(r["wall"] for r in done),
                     max(r["wall"] for r in done), statistics.median(r["solve"] for r in done), done[0]["psnr"],
                     base / wall)))
    return [(name,) + values for name, values in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=("gmm", "flow"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--workloads", nargs="+", choices=("gmm", "flow", "reconstruct"),
                        default=["gmm", "flow", "reconstruct"])
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--gmm-patches", type=int, default=100_000)
    parser.add_argument("--gmm-components", type=int, default=50)
    parser.add_argument("--gmm-iters", type=int, default=3)
    parser.add_argument("--flow-batch", type=int, default=256)
    parser.add_argument("--flow-steps", type=int, default=20)
    parser.add_argument("--recon-images", type=int, default=16)
    parser.add_argument("--recon-prior", choices=("epll", "charts"), default="epll")
    parser.add_argument("--recon-batch", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", default=None)
    parser.add_argument("--note", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
