"""Chart-mixture experiments on toy manifolds: VAE mixture vs FIF mixture, K = 1 vs the K the manifold needs.

For each manifold, family and K: train (seeded), then measure on 2000 generated samples the mean and
95th-percentile exact distance to the true manifold, coverage (fraction of a dense ground-truth
sample within eps of a generated point), sliced W2 to held-out data, held-out NLL (nats/point);
write bench/results/charts.md (+ charts_toy.json) and one PNG per manifold with samples
coloured by chart. Runs are 1-thread processes, `--workers` at a time.

  PATCHREG_BACKEND=reference .venv/bin/python bench/charts_experiments.py --seed 0

`--task digits` runs the image experiment on scikit-learn's 8x8 digits instead: mixtures of VAE
(coupling MLP) and FIF charts (residual MLP and conv ResNet), K = 10, scored by a Frechet
distance on the features of a small seeded digit classifier (trained once, saved to
bench/results/digits_classifier.safetensors), precision/recall (k-NN manifolds, Kynkaanniemi
et al. 2019) and class coverage of the samples; writes charts_digits.md and sample grids.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MACHINE = "2-core CPU dev machine, no GPU (shared with other jobs while running)"


def run_one(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from patchreg.charts import TrainConfig, build_mixture, train_mixture
    from patchreg.charts.datasets import load_dataset
    from patchreg.charts.metrics import evaluate_mixture

    data = load_dataset(f"toy:{job['manifold']}", job["n_train"], 2000, job["seed"])
    torch.manual_seed(job["seed"])
    m = data.manifold
    model = build_mixture(job["family"], job["K"], m.ambient_dim, m.intrinsic_dim, width=job["width"], n_blocks=2,
                          sigma=job["train_sigma"], coupling_blocks=5)
    q = job["steps"] // 4
    config = TrainConfig(pretrain_steps=q, mixture_steps=job["steps"] - 2 * q, overlap_steps=q, batch_size=128,
                         lr=job["lr"], train_sigma=job["train_sigma"], seed=job["seed"])
    started = time.time()
    train_mixture(model, data.train.float(), config, progress=False)
    seconds = time.time() - started
    metrics = evaluate_mixture(model.double(), data, n=2000, eps=job["eps"], seed=job["seed"])
    samples, labels = model.sample(2000, torch.Generator().manual_seed(job["seed"] + 1))
    return {**job, **metrics, "train_seconds": seconds, "sigma": float(model.sigma),
            "samples": samples.numpy().tolist(), "labels": labels.numpy().tolist()}


def plot(manifold: str, runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    dim = len(runs[0]["samples"][0])
    fig = plt.figure(figsize=(4 * len(runs), 4))
    for i, run in enumerate(runs):
        x, lab = np.asarray(run["samples"]), np.asarray(run["labels"])
        if dim == 2:
            ax = fig.add_subplot(1, len(runs), i + 1)
            ax.scatter(x[:, 0], x[:, 1], c=lab, cmap="tab10", s=3, vmin=0, vmax=9)
            ax.set_aspect("equal")
        else:
            ax = fig.add_subplot(1, len(runs), i + 1, projection="3d")
            ax.scatter(x[:, 0], x[:, 1], x[:, 2], c=lab, cmap="tab10", s=2, vmin=0, vmax=9)
        ax.set_title(f"{run['family']} K={run['K']}\nmean dist {run['dist_mean']:.3f}", fontsize=9)
    fig.suptitle(f"{manifold}: samples coloured by chart" + (" (first 3 of 4 coordinates)" if dim == 4 else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_markdown(runs: list[dict], args, command: str, wall: float) -> Path:
    lines = [
        "# Chart mixtures on toy manifolds",
        "",
        f"Command: `{command}`  ",
        f"Seed: {args.seed}; machine: {MACHINE}; Python {platform.python_version()}; total wall time {wall / 60:.1f} min.  ",
        f"Each run: {args.steps} steps of batch 128 (1/4 pretrain on k-means clusters, 1/2 mixture, 1/4 overlap), "
        f"Adam lr {args.lr}, train sigma {args.train_sigma}, {args.n_train} training points, width {args.width}. "
        "Metrics on 2000 generated samples: exact distance to the true manifold (mean, 95th percentile), coverage "
        f"(fraction of 8000 ground-truth points within eps = {args.eps} of a sample), sliced W2 to 2000 held-out points, "
        "held-out NLL (nats per point; the density's sigma is its maximum-likelihood value after training).",
        "",
        "| manifold | family | K | dist mean | dist p95 | coverage | sliced W2 | held-out NLL | sigma | chart usage | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['manifold']} | {r['family']} | {r['K']} | {r['dist_mean']:.4f} | {r['dist_p95']:.4f} | "
            f"{r['coverage']:.3f} | {r['sliced_w2']:.4f} | {r['heldout_nll']:.3f} | {r['sigma']:.4f} | "
            f"{r['chart_usage']} | {r['train_seconds']:.0f} |"
        )
    lines += ["", "Figures: " + ", ".join(f"`charts_{m}{args.suffix}.png`" for m in dict.fromkeys(r["manifold"] for r in runs)), ""]
    path = RESULTS / f"charts{args.suffix}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- digits ------------------------------------------------------------------------------------
def digit_classifier(seed: int):
    """A small MLP digit classifier (64 -> 128 -> 64 -> 10), trained once with `seed` and cached on disk."""
    import torch
    from torch import nn

    from patchreg.charts.datasets import load_digits_split
    from patchreg.io import load_checkpoint, save_checkpoint

    net = nn.Sequential(nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 64), nn.SiLU(), nn.Linear(64, 10)).double()
    path = RESULTS / "digits_classifier.safetensors"
    if path.is_file():
        tensors, header = load_checkpoint(path, "digits_classifier")
        if header.get("seed") == seed:
            net.load_state_dict(tensors)
            return net, header["test_accuracy"]
    xtr, ytr, xte, yte = load_digits_split(seed)
    xtr, ytr = torch.from_numpy(xtr), torch.from_numpy(ytr)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(300):  # full batch, 300 epochs: tiny data
        loss = nn.functional.cross_entropy(net(xtr), ytr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = float((net(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
    save_checkpoint(path, "digits_classifier", dict(net.state_dict()), {"seed": seed, "test_accuracy": acc})
    return net, acc


def frechet_distance(f1, f2) -> float:
    import numpy as np
    from scipy import linalg

    m1, m2 = f1.mean(0), f2.mean(0)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    root = linalg.sqrtm(c1 @ c2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * root))


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al.: precision = fraction of fakes inside the real k-NN balls, recall the converse."""
    import torch

    real, fake = torch.as_tensor(real), torch.as_tensor(fake)

    def inside(ref, query):
        radius = torch.cdist(ref, ref).kthvalue(k + 1, dim=1).values
        return float((torch.cdist(query, ref) <= radius[None]).any(1).double().mean())

    return inside(real, fake), inside(fake, real)


def digits_scores(model, data, classifier, sample_seed: int, fd_draws: int = 1) -> dict:
    """FD, precision/recall, class coverage and held-out NLL of a finalized float64 mixture on the digits test split;
    with fd_draws > 1 also the FD of that many sample draws (seeds sample_seed ...), the FD's own sampling noise."""
    import numpy as np
    import torch

    from patchreg.charts.metrics import heldout_nll

    features = lambda x: classifier[:4](x).detach().numpy()
    draws = []
    with torch.no_grad():
        f_real = features(data.test)
        for i in range(fd_draws):
            samples, _ = model.sample(len(data.test), torch.Generator().manual_seed(sample_seed + i))
            if i == 0:
                first, f_fake = samples, features(samples)
                predicted = classifier(samples).argmax(1).numpy()
            draws.append(frechet_distance(f_real, features(samples)))
    counts = np.bincount(predicted, minlength=10)
    precision, recall = precision_recall(f_real, f_fake)
    scores = {"frechet": draws[0], "precision": precision, "recall": recall,
              "classes_covered": int((counts >= 0.02 * len(first)).sum()), "class_histogram": counts.tolist(),
              "heldout_nll": heldout_nll(model, data.test, batch=64)}
    if fd_draws > 1:
        scores["frechet_draws"] = draws
    return scores, first


def digits_curve_callback(job: dict, data, config, classifier, curve: list):
    """train_mixture callback: every job["eval_every"] steps, digits_scores of a finalized copy of the model (alpha
    and sigma set as at the end of training, from the same points), appended to `curve` and, with
    job["curve_path"], to that JSONL (flushed: a stopped run keeps its curve). With job["fd_draws"] > 1 each point also
    has the mean FD of that many sample draws ("frechet_mean"): one draw's FD scatters by about 1 at 449 samples.
    Evaluation time is not training time."""
    import copy

    import torch

    from patchreg.charts.metrics import heldout_nll
    from patchreg.charts.training import finalize, finalize_points

    points = finalize_points(data.train.float(), config, torch.float32)

    def callback(step, model, record):
        if step % job["eval_every"] and step != config.total_steps:
            return
        model_copy = copy.deepcopy(model)
        finalize(model_copy, points.to(model_copy.log_alpha.dtype), config.train_sigma)
        scores, _ = digits_scores(model_copy.double(), data, classifier, job["seed"] + 1, job.get("fd_draws", 1))
        point = {"step": step, "phase": record["phase"], "loss": record["loss"], "train_seconds": record["seconds"],
                 **{k: v for k, v in scores.items() if k != "class_histogram"}}
        # the same NLL on as many training images: a gap that grows with the steps is overfitting
        point["train_nll"] = heldout_nll(model_copy, data.train[: len(data.test)], batch=64)
        point["frechet_mean"] = float(sum(scores.get("frechet_draws", [scores["frechet"]])) / job.get("fd_draws", 1))
        curve.append(point)
        if job.get("curve_path"):
            tag = {k: job[k] for k in ("family", "architecture", "seed", "steps")}
            with open(job["curve_path"], "a") as fh:
                fh.write(json.dumps({**tag, **point}) + "\n")

    return callback


def run_digits(job: dict) -> dict:
    """Train one digits mixture (job: family, architecture, K, d, seed, data_seed, steps, width, lr, train_sigma;
    optional eval_every (> 0: the metrics against steps, key "curve"), curve_path, fd_draws) and score it."""
    import torch

    torch.set_num_threads(1)
    from patchreg.charts import TrainConfig, build_mixture, train_mixture
    from patchreg.charts.datasets import load_dataset

    data = load_dataset("digits", seed=job["data_seed"])
    torch.manual_seed(job["seed"])
    model = build_mixture(job["family"], job["K"], 64, job["d"], job["architecture"], width=job["width"], n_blocks=2,
                          sigma=job["train_sigma"])
    q = job["steps"] // 4
    config = TrainConfig(pretrain_steps=q, mixture_steps=job["steps"] - 2 * q, overlap_steps=q, batch_size=128,
                         lr=job["lr"], train_sigma=job["train_sigma"], seed=job["seed"], seed_points=len(data.train),
                         log_every=min(50, job.get("eval_every") or 50))
    classifier, _ = digit_classifier(job["data_seed"])
    curve = []
    callback = digits_curve_callback(job, data, config, classifier, curve) if job.get("eval_every") else None
    started = time.time()
    history = train_mixture(model, data.train.float(), config, progress=False, callback=callback)
    seconds = history[-1]["seconds"] if callback else time.time() - started  # without the evaluations' time
    scores, samples = digits_scores(model.double(), data, classifier, job["seed"] + 1, job.get("fd_draws", 1))
    result = {**job, **scores, "train_seconds": seconds, "grid": samples[:100].numpy().tolist()}
    if callback:
        result["curve"] = curve
    return result


def digits_main(args, command: str) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from patchreg.charts.datasets import load_dataset

    _, accuracy = digit_classifier(args.seed)
    archs = [tuple(item.split(":")) for item in args.digits_models.split(",")]
    # Training seeds seed .. seed + seeds - 1; the data split and the feature classifier stay those of
    # --seed, so the spread is that of training alone and the FDs of all runs are comparable.
    seeds = list(range(args.seed, args.seed + args.seeds))
    jobs = [dict(family=f, architecture=a, K=args.digits_charts, d=args.digits_latent, seed=s, data_seed=args.seed,
                 steps=args.steps, width=args.width if a == "mlp" else 16, lr=args.lr, train_sigma=args.train_sigma)
            for s in seeds for f, a in archs]
    started = time.time()
    with ProcessPoolExecutor(args.workers) as pool:
        # the conv runs are the longest: submitted first, so the MLP runs share the other worker
        order = sorted(range(len(jobs)), key=lambda i: jobs[i]["architecture"] != "conv")
        futures = {i: pool.submit(run_digits, jobs[i]) for i in order}
        runs = [futures[i].result() for i in range(len(jobs))]
    (RESULTS / "charts_digits.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "grid"} for r in runs], indent=1) + "\n")
    # reference: the same metrics for held-out real digits vs the training split (the best a model can do)
    data = load_dataset("digits", seed=args.seed)
    import torch

    classifier, _ = digit_classifier(args.seed)
    with torch.no_grad():
        f_test, f_train = classifier[:4](data.test).numpy(), classifier[:4](data.train[: len(data.test)]).numpy()
    ref_fd = frechet_distance(f_test, f_train)
    ref_p, ref_r = precision_recall(f_test, f_train)
    first = [r for r in runs if r["seed"] == seeds[0]]
    fig, axes = plt.subplots(1, len(first), figsize=(4 * len(first), 4.3))
    for ax, run in zip(np.atleast_1d(axes), first):
        grid = np.asarray(run["grid"]).reshape(10, 10, 8, 8).transpose(0, 2, 1, 3).reshape(80, 80)
        ax.imshow(np.clip(grid, 0, 1), cmap="gray")
        ax.set_title(f"{run['family']} / {run['architecture']}  FD {run['frechet']:.2f}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(RESULTS / "charts_digits.png", dpi=90)
    lines = [
        "# Chart mixtures on 8x8 digits (scikit-learn)", "",
        f"Command: `{command}`  ",
        f"Training seeds: {seeds} (data split and feature classifier: seed {args.seed}); machine: {MACHINE}; "
        f"total wall time {(time.time() - started) / 60:.1f} min.  ",
        f"K = {args.digits_charts} charts, latent d = {args.digits_latent}, {args.steps} steps of batch 128, lr {args.lr}, "
        f"train sigma {args.train_sigma}; 1348 training / 449 test images. Feature classifier: MLP 64-128-64-10, "
        f"test accuracy {accuracy:.3f}; features = its 64-D penultimate layer. FD = Frechet distance of 449 samples "
        "to the 449 test images; precision/recall: k = 3 nearest-neighbour balls in feature space; "
        "classes covered: classes receiving >= 2% of the samples (classifier's label).", "",
        f"Reference (training images vs test images): FD {ref_fd:.3f}, precision {ref_p:.3f}, recall {ref_r:.3f}.", "",
    ]
    if len(seeds) > 1:
        lines += ["## Over the training seeds (mean, and min-max)", "",
                  "| family | architecture | FD | precision | recall | held-out NLL | best FD in seeds |",
                  "|---|---|---|---|---|---|---|"]
        best = {s: min((r for r in runs if r["seed"] == s), key=lambda r: r["frechet"]) for s in seeds}
        for f, a in archs:
            rs = [r for r in runs if (r["family"], r["architecture"]) == (f, a)]

            def cell(key, digits):
                v = np.array([r[key] for r in rs])
                return f"{v.mean():.{digits}f} ({v.min():.{digits}f}-{v.max():.{digits}f})"

            wins = sum(1 for s in seeds if (best[s]["family"], best[s]["architecture"]) == (f, a))
            lines.append(f"| {f} | {a} | {cell('frechet', 2)} | {cell('precision', 2)} | {cell('recall', 2)} | "
                         f"{cell('heldout_nll', 1)} | {wins} of {len(seeds)} |")
        lines += ["", "## Every run", ""]
    lines += [
        "| family | architecture | seed | FD | precision | recall | classes covered | class histogram | held-out NLL | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(f"| {r['family']} | {r['architecture']} | {r['seed']} | {r['frechet']:.3f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['classes_covered']} | {r['class_histogram']} | {r['heldout_nll']:.1f} | "
                     f"{r['train_seconds']:.0f} |")
    lines += ["", f"Sample grid: `charts_digits.png` (first 100 samples of each model, seed {seeds[0]}).", ""]
    (RESULTS / "charts_digits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--suffix", default="", help="toy: appended to the result file names (charts{suffix}.md, ...)")
    p.add_argument("--seeds", type=int, default=1, help="digits: training seeds seed .. seed + seeds - 1")
    p.add_argument("--manifolds", default="circle,two_circles,sphere,torus,swiss_roll,klein_bottle")
    p.add_argument("--families", default="vae,fif")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--train-sigma", type=float, default=0.05)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--task", choices=("toy", "digits"), default="toy")
    p.add_argument("--digits-charts", type=int, default=10)
    p.add_argument("--digits-latent", type=int, default=6)
    p.add_argument("--digits-models", default="vae:mlp,fif:mlp,fif:conv", help="family:architecture list")
    args = p.parse_args(argv)
    backend = os.environ.get("PATCHREG_BACKEND")
    command = (f"PATCHREG_BACKEND={backend} " if backend else "") + " ".join(
        [".venv/bin/python", "bench/charts_experiments.py", *(sys.argv[1:] if argv is None else argv)])
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.task == "digits":
        return digits_main(args, command)

    from patchreg.data.toy_manifolds import get_manifold

    jobs = []
    for name in args.manifolds.split(","):
        needed = get_manifold(name).suggested_charts
        for family in args.families.split(","):
            for k in (1, needed):
                jobs.append(dict(manifold=name, family=family, K=k, seed=args.seed, steps=args.steps, n_train=args.n_train,
                                 width=args.width, lr=args.lr, train_sigma=args.train_sigma, eps=args.eps))
    jobs.sort(key=lambda j: -j["K"])  # longest first: better packing on the workers
    started = time.time()
    partial = RESULTS / f"charts_toy_partial{args.suffix}.jsonl"  # one line per finished run, so an interrupted sweep keeps its runs
    partial.write_text("")
    runs = []
    with ProcessPoolExecutor(args.workers) as pool:
        for run in as_completed([pool.submit(run_one, job) for job in jobs]):
            runs.append(run.result())
            slim_run = {k: v for k, v in runs[-1].items() if k not in ("samples", "labels")}
            with partial.open("a") as fh:
                fh.write(json.dumps(slim_run) + "\n")
    order = {name: i for i, name in enumerate(args.manifolds.split(","))}
    runs.sort(key=lambda r: (order[r["manifold"]], r["family"], r["K"]))
    for name in order:
        plot(name, [r for r in runs if r["manifold"] == name], RESULTS / f"charts_{name}{args.suffix}.png")
    slim = [{k: v for k, v in r.items() if k not in ("samples", "labels")} for r in runs]
    (RESULTS / f"charts_toy{args.suffix}.json").write_text(json.dumps(slim, indent=1) + "\n")
    print(write_markdown(runs, args, command, time.time() - started).read_text())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
