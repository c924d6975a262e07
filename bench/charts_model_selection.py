"""Model selection of the chart-mixture patch prior (issue 10): held-out NLL on the validation split of train400.

Trains a grid of chart mixtures on 6x6 patches of train400:train at ONE equal budget (--steps x --batch-size
patches, the CLI's image defaults otherwise: lr 1e-3 constant, phases 1/4 pretrain, 1/2 mixture, 1/4 overlap,
--train-sigma, seed), one cell after the other, and scores every cell on the same held-out validation patches
as bench/patch_nll_table.py (its functions; --n patches, --seed), next to the GMM (K = 200), the PatchNR flow
and the shipped model. Each cell is one (family, architecture, K, d): FAMILY:ARCH:K:D, e.g. fif:mlp:32:8.

Resumable: a cell whose checkpoint is complete (a CKPT.done.json next to it) is not trained again; a
partial checkpoint (written every --checkpoint-every steps) is resumed. --eval-only scores what exists.

Cells that the fused chart kernel does not cover (family vae, architecture conv) are trained and scored with
the library's generic per-chart PyTorch path (Chart.log_prob: the same density formula, exact Jacobians); they
get contrast scales (EM, as the MLP cells) but no selector, so no 'top 2' column. The conv ResNet works on
images, and the charts model the 35 mean-free coordinates: here its encoder reads the coordinates as the
6x6 mean-free patch (c B^T) and its decoder's 6x6 output is mapped back (x B), B the orthonormal mean-free
basis (both linear, so the Jacobians are exact). These conv checkpoints are read back by this script only.

    OMP_NUM_THREADS=1 nice -n 5 python bench/charts_model_selection.py \
        --ckpt-dir /work/runs/grid10 --steps 300 --batch-size 512
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from patch_nll_table import DCDensity, gmm_mean_free_log_prob, resolve  # noqa: E402

from patchreg.charts import build_mixture  # noqa: E402
from patchreg.charts.architectures import ConvResNetDecoder, ConvResNetEncoder  # noqa: E402
from patchreg.charts.training import TrainConfig, train_mixture  # noqa: E402
from patchreg.priors import PatchCharts, mean_free_basis  # noqa: E402
from patchreg.priors.chart_prior import chart_patch_log_prob  # noqa: E402

DEFAULT_CELLS = "fif:mlp:16:8,fif:mlp:32:4,fif:mlp:32:8,fif:mlp:32:16,fif:mlp:64:8,vae:mlp:32:8,fif:mlp:8:8,fif:conv:8:8"
PATCH = 6


# -- cells -----------------------------------------------------------------------------------------------------
def parse_cells(text: str) -> list[dict]:
    """'fif:mlp:32:8,vae:mlp:32:8' -> [{family, architecture, K, d, name}, ...] (checked, duplicates refused)."""
    cells, seen = [], set()
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.split(":")
        if len(parts) != 4:
            raise ValueError(f"a cell is FAMILY:ARCH:K:D, got {item!r}")
        family, arch, k, d = parts
        if family not in ("fif", "vae"):
            raise ValueError(f"family must be fif or vae, got {family!r} in {item!r}")
        if arch not in ("mlp", "conv"):
            raise ValueError(f"architecture must be mlp or conv, got {arch!r} in {item!r}")
        if family == "vae" and arch != "mlp":
            raise ValueError(f"the vae family has coupling-network charts only (mlp), got {item!r}")
        k, d = int(k), int(d)
        if k < 1 or not 1 <= d < PATCH * PATCH - 1:
            raise ValueError(f"need K >= 1 and 1 <= d < {PATCH * PATCH - 1}, got {item!r}")
        name = f"{family}-{arch}-K{k}-d{d}"
        if name in seen:
            raise ValueError(f"cell {item!r} given twice")
        seen.add(name)
        cells.append(dict(family=family, architecture=arch, K=k, d=d, name=name))
    if not cells:
        raise ValueError("no cells given")
    return cells


# -- the conv ResNet on mean-free coordinates ------------------------------------------------------------------
class _MeanFreeConvEncoder(torch.nn.Module):
    """coords (B, 35) -> the mean-free 6x6 patch c B^T -> conv ResNet encoder -> (B, d); exact forward mode."""

    def __init__(self, latent_dim, channels, n_blocks):
        super().__init__()
        self.net = ConvResNetEncoder(latent_dim, PATCH, channels, n_blocks)
        self.register_buffer("B", mean_free_basis(PATCH * PATCH).float())

    def forward(self, y):
        return self.net(y @ self.B.T)

    def linearize(self, y):
        z, push = self.net.linearize(y @ self.B.T)
        return z, lambda t: push(self.B @ t)

    def jvp(self, y, t):
        z, push = self.linearize(y)
        return z, push(t)


class _MeanFreeConvDecoder(torch.nn.Module):
    """(B, d) -> conv ResNet decoder's 6x6 patch x -> its mean-free coordinates x B (B, 35); exact forward mode."""

    def __init__(self, latent_dim, channels, n_blocks):
        super().__init__()
        self.net = ConvResNetDecoder(latent_dim, PATCH, channels, n_blocks)
        self.register_buffer("B", mean_free_basis(PATCH * PATCH).float())

    def forward(self, z):
        return self.net(z) @ self.B

    def linearize(self, z):
        x, push = self.net.linearize(z)
        return x @ self.B, lambda t: self.B.T @ push(t)

    def jvp(self, z, t):
        x, push = self.linearize(z)
        return x, push(t)


def build_cell_mixture(cell: dict, width: int, blocks: int, conv_channels: int, conv_blocks: int, sigma: float):
    n = PATCH * PATCH - 1
    if cell["architecture"] == "mlp":
        return build_mixture(cell["family"], cell["K"], n, cell["d"], "mlp", width, blocks, sigma,
                             sigma_per_chart=True).float()
    mix = build_mixture("fif", cell["K"], n, cell["d"], "mlp", 1, 1, sigma, align="center", sigma_per_chart=True)
    for chart in mix.charts:
        chart.encoder = _MeanFreeConvEncoder(cell["d"], conv_channels, conv_blocks)
        chart.decoder = _MeanFreeConvDecoder(cell["d"], conv_channels, conv_blocks)
    mix.config.update(architecture="conv", width=conv_channels, n_blocks=conv_blocks, conv_input="mean_free_6x6")
    return mix.float()


def load_cell(path) -> PatchCharts:
    """A cell's checkpoint as PatchCharts (the conv cells rebuilt here; the others by PatchCharts.load)."""
    from patchreg import io
    from patchreg.charts.checkpoint import KIND

    tensors, header = io.load_checkpoint(path, KIND)
    cfg = header["model"]
    if cfg.get("conv_input") != "mean_free_6x6":
        return PatchCharts.load(path)
    cell = dict(family=cfg["family"], architecture="conv", K=cfg["n_charts"], d=cfg["latent_dim"])
    mix = build_cell_mixture(cell, 1, 1, cfg["width"], cfg["n_blocks"], cfg["sigma"])
    mix.load_state_dict({k[len("model/"):]: v.float() for k, v in tensors.items() if k.startswith("model/")})
    model = PatchCharts(mix, PATCH, 1, tensors["patch/basis"].double())
    if "patch/scales" in tensors:
        model.scales = tensors["patch/scales"].float()
        model.scale_log_alpha = tensors["patch/scale_log_alpha"].float()
    return model.float()


def fused(model: PatchCharts) -> bool:
    """Whether the fused chart kernel covers the model (else the generic per-chart path scores it)."""
    from patchreg.priors.chart_prior import is_fusable

    return is_fusable(model)


def done_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.stem + ".done.json")


def train_cell(cell: dict, ckpt: Path, args, images) -> dict:
    """Train one cell (resuming a partial checkpoint), then alpha/sigma (finalize), contrast scales (EM) and, for
    the fused cells, the selector: as patchreg.priors.patch_charts.train_patch_charts with the CLI's image defaults."""
    from patchreg import io
    from patchreg.charts.checkpoint import KIND
    from patchreg.data import PatchSampler
    from patchreg.priors.patch_charts import DEFAULT_SCALES

    q = args.steps // 4
    config = TrainConfig(pretrain_steps=q, mixture_steps=args.steps - 2 * q, overlap_steps=q, batch_size=args.batch_size,
                         lr=1e-3, lr_schedule="constant", train_sigma=args.train_sigma, seed=args.seed, seed_fraction=1.0,
                         checkpoint_every=args.checkpoint_every, seed_points=max(5000, 50 * cell["K"]),
                         responsibility_floor=1e-3)
    torch.manual_seed(args.seed)
    mixture = build_cell_mixture(cell, args.width, args.blocks, args.conv_channels, args.conv_blocks, args.train_sigma)
    model = PatchCharts(mixture, PATCH)
    sampler = PatchSampler(images, PATCH, 1024, seed=args.seed, dtype=torch.float32)
    basis32 = mean_free_basis(PATCH * PATCH).float()

    def draw(n, generator):
        return sampler.sample(n, generator) @ basis32

    extra = dict(extra_tensors={"patch/basis": model.basis}, extra_header={"patch": model.patch_header()})
    resume = ckpt.is_file()
    start = time.perf_counter()
    history = train_mixture(mixture, draw, config, ckpt, resume=resume, progress=False, **extra)
    train_s = time.perf_counter() - start
    model.fit_scales(draw(args.scale_points, torch.Generator().manual_seed(config.seed + 3)), DEFAULT_SCALES)
    if fused(model):
        model.fit_selector(draw(50_000, torch.Generator().manual_seed(config.seed + 2)))
    model.history = history
    tensors, header = io.load_checkpoint(ckpt, KIND)
    tensors.update(model.extra_tensors())
    io.save_checkpoint(ckpt, KIND, tensors, {k: v for k, v in header.items() if k not in ("kind", "format")})
    info = dict(cell=cell, steps=args.steps, batch_size=args.batch_size, train_sigma=args.train_sigma, seed=args.seed,
                resumed=resume, seconds_this_run=round(time.perf_counter() - start, 1), train_seconds_this_run=round(train_s, 1),
                train_seconds_logged=round(history[-1]["seconds"], 1) if history else None,
                final_loss=history[-1]["loss"] if history else None,
                parameters=sum(p.numel() for p in mixture.parameters()))
    done_path(ckpt).write_text(json.dumps(info, indent=1))
    return info


# -- evaluation ------------------------------------------------------------------------------------------------
@torch.no_grad()
def generic_log_probs(model: PatchCharts, coords: torch.Tensor, batch: int = 2048):
    """(log p with the contrast scales (N,), log p of the trained charts alone at scale 1 (N,)) by the generic
    per-chart path (Chart.log_prob), for charts the fused kernel does not cover. float64 sums of float32 terms."""
    mix = model.mixture
    n = model.dim - 1
    pairs = model.pairs()
    scales = model.scales.double()
    weights = model.scale_log_alpha.double()
    used = sorted(set(pairs[:, 1].tolist()))
    with_scales, bare = [], []
    alpha = mix.log_alpha.detach().double()
    for chunk in coords.split(batch):
        terms = []
        cols1 = None
        for j in used:
            s = float(scales[j])
            cols = torch.nan_to_num(mix.chart_log_probs((chunk / s).float()).double(), nan=-math.inf)
            if abs(s - 1.0) < 1e-12:
                cols1 = cols
            ks = pairs[pairs[:, 1] == j, 0]
            terms.append(cols[:, ks] + weights[ks, j] - n * math.log(s))
        with_scales.append(torch.logsumexp(torch.cat(terms, 1), 1))
        if cols1 is None:
            cols1 = torch.nan_to_num(mix.chart_log_probs(chunk.float()).double(), nan=-math.inf)
        bare.append(torch.logsumexp(cols1 + alpha, 1))
    return torch.cat(with_scales), torch.cat(bare)


@torch.no_grad()
def fused_log_probs(model: PatchCharts, coords: torch.Tensor, top=None):
    return torch.cat([chart_patch_log_prob(model, c.float(), top, compute_grad=False)[0].double()
                      for c in coords.split(4096)])


def bare_copy(model: PatchCharts) -> PatchCharts:
    """The same trained charts without the contrast scales: scale 1 with the charts' own weights (patch_nll_table)."""
    # a new PatchCharts on the same mixture (a shallow copy would share, and change, the model's buffers);
    # its constructor sets scales (1,) and scale_log_alpha = the charts' log alpha (below 1e-10: -inf)
    return PatchCharts(model.mixture, model.patch_size, model.channels, model.basis.double()).to(model.scales.dtype)


def score(model: PatchCharts, coords: torch.Tensor) -> dict:
    """NLL per patch (mean-free units) of a chart model: with and without contrast scales, exact, and top 2."""
    start = time.perf_counter()
    if fused(model):
        lp = fused_log_probs(model, coords)
        lp_bare = fused_log_probs(bare_copy(model), coords)
        lp_top = fused_log_probs(model, coords, 2) if model.has_selector else None
    else:
        lp, lp_bare = generic_log_probs(model, coords)
        lp_top = None
    return dict(lp=lp, lp_bare=lp_bare, lp_top=lp_top, seconds=time.perf_counter() - start)


def samples_figure(path, real: torch.Tensor, models: list, n: int = 24, seed: int = 0):
    """Rows: real validation patches (mean removed), then samples of each model (pair (k, s) drawn by
    alpha_{k,s}, z from the latent prior, s D_k(z), no off-manifold noise); gray = 0.5 + mean-free value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("validation patches", real[:n] - real[:n].mean(1, keepdim=True))]
    for label, model in models:
        g = torch.Generator().manual_seed(seed)
        pairs = model.pairs()
        w = model.scale_log_alpha[pairs[:, 0], pairs[:, 1]].double().exp()
        pick = pairs[torch.multinomial(w / w.sum(), n, replacement=True, generator=g)]
        z = model.mixture.prior.sample(n, g, torch.float32)
        with torch.no_grad():
            c = torch.stack([model.mixture.charts[int(k)].decode(z[i : i + 1])[0] * float(model.scales[int(j)])
                             for i, (k, j) in enumerate(pick.tolist())])
        rows.append((label, model.patches_from_coords(c.double())))
    fig, axes = plt.subplots(len(rows), 1, figsize=(n * 0.28 + 1.6, len(rows) * 0.42 + 0.2))
    for ax, (label, patches) in zip(np.atleast_1d(axes), rows):
        tiles = (0.5 + patches.reshape(-1, PATCH, PATCH).numpy()).clip(0, 1)
        pad = np.ones((len(tiles), PATCH, 1))
        strip = np.concatenate([np.concatenate([t, p], 1) for t, p in zip(tiles, pad)], 1)
        ax.imshow(strip, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=6)
    fig.subplots_adjust(left=0.2, right=0.99, top=0.99, bottom=0.01, hspace=0.15)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default=DEFAULT_CELLS, help="comma-separated FAMILY:ARCH:K:D")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--train-sigma", type=float, default=0.1)
    ap.add_argument("--width", type=int, default=64, help="MLP width (fif) / coupling hidden width (vae)")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--conv-channels", type=int, default=16)
    ap.add_argument("--conv-blocks", type=int, default=1)
    ap.add_argument("--scale-points", type=int, default=5000, help="patches of the EM of the contrast-scale weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--ckpt-dir", default="/work/runs/grid10")
    ap.add_argument("--eval-only", action="store_true", help="score the complete cells only; train nothing")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--gmm", default="pretrained:gmm")
    ap.add_argument("--flow", default="pretrained:flow")
    ap.add_argument("--shipped", default="pretrained:charts")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--out", default="bench/results/charts_model_selection.md")
    ap.add_argument("--figure", default="bench/results/charts_model_selection_samples.png")
    args = ap.parse_args(argv)
    cells = parse_cells(args.cells)
    if args.steps < 4 or args.batch_size < 1:
        raise ValueError("need --steps >= 4 and --batch-size >= 1")
    torch.set_num_threads(1)
    ckpt_dir = Path(args.ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tag = f"s{args.steps}-b{args.batch_size}-t{args.train_sigma:g}-seed{args.seed}"
    ckpts = {c["name"]: ckpt_dir / f"{c['name']}-{tag}.safetensors" for c in cells}
    if not args.eval_only:
        from patchreg.data import load_images

        images = load_images("train400", "train")
        for cell in cells:
            ckpt = ckpts[cell["name"]]
            if done_path(ckpt).is_file():
                print(f"[{cell['name']}] complete: {ckpt}", flush=True)
                continue
            print(f"[{cell['name']}] training{' (resuming)' if ckpt.is_file() else ''} -> {ckpt}", flush=True)
            info = train_cell(cell, ckpt, args, images)
            print(f"[{cell['name']}] done in {info['seconds_this_run']} s: {json.dumps(info)}", flush=True)
    if args.train_only:
        return
    evaluate(args, cells, ckpts, tag)


def evaluate(args, cells, ckpts, tag):
    from patchreg.data import PatchSampler, load_train400
    from patchreg.priors import GMM, PatchFlow

    val = PatchSampler(load_train400("validation"), PATCH, 4096, seed=args.seed, dtype=torch.float64).sample(args.n)
    train = PatchSampler(load_train400("train"), PATCH, 4096, seed=args.seed + 1, dtype=torch.float64).sample(100_000)
    basis = mean_free_basis(PATCH * PATCH)
    coords = val @ basis
    dc_lp = DCDensity((train.sum(1) / PATCH).numpy()).log_prob(val.sum(1) / PATCH)
    nll = lambda lp: None if lp is None else float(-lp.mean())  # noqa: E731
    rows, missing, figure_models = [], [], []
    if args.gmm:
        gmm = GMM.load(resolve(args.gmm))
        lp = gmm_mean_free_log_prob(gmm, coords, basis)
        rows.append(dict(model=f"GMM K={gmm.n_components} (EPLL, pretrained)", mean_free=nll(lp), full=nll(lp + dc_lp)))
    if args.flow:
        flow = PatchFlow.load(resolve(args.flow))
        with torch.no_grad():
            lp = torch.cat([flow.log_prob(c.float()).double() for c in val.split(4096)])
        rows.append(dict(model="PatchNR flow (pretrained)", mean_free=None, full=nll(lp)))
    entries = []
    if args.shipped:
        entries.append(("shipped pretrained:charts (fif-mlp-K32-d8, 2000 x 1024)", None, resolve(args.shipped)))
    for cell in cells:
        ckpt = ckpts[cell["name"]]
        if not done_path(ckpt).is_file():
            missing.append(cell["name"])
            continue
        entries.append((cell["name"], cell, ckpt))
    for label, cell, path in entries:
        model = load_cell(path)
        info = json.loads(done_path(Path(path)).read_text()) if cell is not None else {}
        # per-checkpoint cache of the scores (same patches: --n, --seed), so a rerun scores only new cells
        cache = Path(path).with_name(Path(path).stem + f".eval-n{args.n}-seed{args.seed}.json") if cell is not None else None
        if cache is not None and cache.is_file() and cache.stat().st_mtime >= Path(path).stat().st_mtime:
            rows.append(json.loads(cache.read_text()))
        else:
            r = score(model, coords)
            rows.append(dict(model=label, cell=cell, mean_free=nll(r["lp"]), full=nll(r["lp"] + dc_lp),
                             bare=nll(r["lp_bare"]), top2=nll(r["lp_top"]), eval_seconds=round(r["seconds"], 1),
                             train_seconds=info.get("train_seconds_logged"),
                             parameters=sum(p.numel() for p in model.mixture.parameters()),
                             nonfinite=int((~torch.isfinite(r["lp"])).sum())))
            if cache is not None:
                cache.write_text(json.dumps(rows[-1]))
        print(rows[-1], flush=True)
        if cell is None or cell["name"] in ("fif-mlp-K32-d8", "vae-mlp-K32-d8") or label.startswith("fif-mlp-K64") or label.startswith("fif-conv"):
            figure_models.append((label.split(" (")[0], model))
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    command = (f"OMP_NUM_THREADS=1 python bench/charts_model_selection.py --cells {args.cells} --steps {args.steps} "
               f"--batch-size {args.batch_size} --scale-points {args.scale_points} --train-sigma {args.train_sigma:g} --width {args.width} --blocks {args.blocks} "
               f"--conv-channels {args.conv_channels} --conv-blocks {args.conv_blocks} --seed {args.seed} --n {args.n} "
               f"--ckpt-dir {args.ckpt_dir}")
    lines = ["# Model selection of the chart prior: held-out NLL on the validation split (nats per 6x6 patch, lower is better)",
             "", f"Command: `{command}`", "",
             f"Every cell trained at the same budget: {args.steps} steps x {args.batch_size} patches of train400:train "
             f"(phases 1/4 pretrain, 1/2 mixture, 1/4 overlap; lr 1e-3 constant; train sigma {args.train_sigma:g}; seed "
             f"{args.seed}), then alpha/sigma by ML, contrast-scale weights by EM on {args.scale_points} patches, selector (fused MLP cells only). "
             f"Scored on the held-out patches of bench/patch_nll_table.py: {args.n} random patches of the 40 validation "
             f"images (seed {args.seed}). 'mean-free': the 35 coordinates without the patch mean; 'full patch': plus the "
             f"1-D DC density fitted on training patches (DC NLL alone {float(-dc_lp.mean()):.2f}). 'charts only': the "
             "trained charts at scale 1 with their own weights (no contrast scales); 'top 2': the selector's 2 best "
             "(chart, scale) pairs, what ChartPrior uses (fused MLP cells only). MLP width "
             f"{args.width}, {args.blocks} blocks (vae: coupling hidden width {args.width}, 5 blocks); conv: "
             f"{args.conv_channels} channels, {args.conv_blocks} block per resolution.", "",
             "| model | mean-free NLL | full-patch NLL | charts only (no scales) | top 2 | parameters | train s | eval s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {fmt(r['mean_free'])} | {fmt(r['full'])} | {fmt(r.get('bare'))} | {fmt(r.get('top2'))} | "
                     f"{r.get('parameters', '-')} | {r.get('train_seconds') or '-'} | {r.get('eval_seconds', '-')} |")
    if missing:
        lines += ["", f"Not complete (not scored): {', '.join(missing)}."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    reading = ""
    if out.is_file():  # keep the hand-written reading below the generated part
        old = out.read_text()
        marker = "\n## Reading"
        if marker in old:
            reading = old[old.index(marker):]
    out.write_text(text + reading)
    out.with_suffix(".json").write_text(json.dumps(dict(command=command, n=args.n, seed=args.seed, missing=missing,
                                                        rows=rows), indent=1))
    if args.figure and figure_models:
        samples_figure(args.figure, val, figure_models, seed=args.seed)


if __name__ == "__main__":
    main()
