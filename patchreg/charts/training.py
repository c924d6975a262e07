"""Training a chart mixture: seeding, pre-training, mixture phase, overlap phase.

Phases (steps counted over one stream of random mini-batches, so a run is resumable at any step):
  1. pretrain: each chart learns the points of its k-means cluster (hard assignment);
  2. mixture:  loss = mean_i sum_k w_ik L_ik, w_ik = softmax_k(log alpha_k + S_ik);
  3. overlap:  as 2, but the responsibilities use the prior at 1.5 z: points near a chart's
               border score low there and are handed to a neighbour, which must extend over
               them, while the chart itself keeps its loss at scale 1 (its data keep filling its
               latent ball, so its image stays as large) -> neighbouring charts overlap.
               Alberti et al. add U(1.5 z) - U(z) to the chart energy, i.e. to the loss as well; we
               measured (circle, K=2, FIF) that this compresses each chart's data into |z| < 0.67
               and leaves the decoder untrained on the rest of the prior's support, so samples drawn
               there leave the manifold (0.3-1.2 off at |z| = 1), and a later phase at scale 1 did
               not re-expand them within 50 steps. Hence the scale is applied to the
               responsibilities only (overlap_in_loss=True restores their loss; on the VAE
               charts it left the samples 6-17x farther from the sphere and the annulus,
               bench/results/charts_vae_sigma_ablation.md). On point data the default is now overlap_scale 1 (no
               hand-off: the phase is a plain mixture phase), which fitted every toy manifold
               at least as well (TOY_DEFAULTS); the VAE family (FAMILY_SETTINGS) and image
               patches keep 1.5.
L_ik is the chart family's loss (VAE: negative ELBO; FIF: FIF loss); S_ik its assignment
score (VAE: -L without encoder noise, as Alberti et al.; FIF: the exact chart log-density,
because the FIF loss's value is meaningless). alpha follows the mean responsibilities.

Responsibilities are detached by default (detach_responsibilities=True), for two reasons:
with w detached, sum_k w_ik grad(-log p_ik) = grad(-log sum_k alpha_k p_ik) exactly (Fisher's
identity), so the update is the gradient of the mixture likelihood whenever L is a (surrogate
for the) per-chart NLL; and for FIF the scores come from the exact log-density, whose gradient
would need the exact log-det gradient the Hutchinson surrogate exists to avoid. Alberti et al.'s
code does not detach (their w also pushes charts apart); set False to reproduce that.

At the end alpha is set to the mean responsibilities on a data sample and the density's sigma
to its maximum-likelihood value sigma^2 = mean_i sum_k w_ik ||x_i - D_k(E_k(x_i))||^2 / (n - d).

Under torch.distributed (torchrun, N > 1 ranks) the mixture trains with DistributedDataParallel:
batch_size is the global batch, each rank draws batch_size / N points with its own random stream
(seed `patchreg.distributed.rank_seed(seed, rank)`), DDP averages the gradients and the mean
responsibilities that move alpha are averaged over the ranks, so a step is the single-process step on
the N local batches together (with each rank's noise draws). Rank 0's seeding is broadcast; rank 0
alone writes checkpoints, which then also hold every rank's random stream ("rng/data.rank{r}").
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import _checks, distributed
from .checkpoint import load_mixture_state, save_mixture
from .seeding import kmeans, nearest_center, seed_charts, seed_members

PHASES = ("pretrain", "mixture", "overlap")
LR_SCHEDULES = ("constant", "cosine")
RESPONSIBILITY_SIGMAS = ("shared", "per_chart")
# per_chart responsibilities: a chart's running sigma is updated only from batches where it holds at least this
# many points' worth of responsibility, and never falls below this fraction of train_sigma (a chart that holds a
# few near-duplicate points would otherwise shrink its sigma towards 0 and take them for ever, as a GMM component
# collapsing on one point)
SIGMA_UPDATE_MIN_MASS = 1.0
SIGMA_FLOOR_FRACTION = 0.05


class TrainingDiverged(FloatingPointError):
    """A non-finite loss or gradient stopped training."""


@dataclass
class TrainConfig:
    pretrain_steps: int = 300
    mixture_steps: int = 1000
    overlap_steps: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    grad_clip: float = 2.0
    train_sigma: float = 0.05
    overlap_scale: float = 1.5
    # Alberti et al.'s code scales the prior in the charts' loss too (U(z) + U(scale z) - U(z)), which draws each
    # chart's data inward so that its latent support reaches past them; False: the responsibilities only
    overlap_in_loss: bool = False
    detach_responsibilities: bool = True
    alpha_momentum: float = 0.95
    # mixture/overlap phases with detached responsibilities: chart k's loss is evaluated only on the points
    # whose responsibility w_ik exceeds this (0 = every point); the dropped terms weigh < floor each
    responsibility_floor: float = 0.0
    # learning rate after pre-training: "constant", or "cosine" (decays from lr to lr * lr_final over the
    # mixture and overlap phases); set from the step index, so a resumed run follows the same schedule
    lr_schedule: str = "constant"
    lr_final: float = 0.01
    seed: int = 0
    seed_points: int = 5000
    # local seeding: each chart's frame and pre-training points are this fraction of its k-means cluster,
    # the points nearest its centre (1 = the whole cluster); see seeding.seed_charts
    seed_fraction: float = 1.0
    checkpoint_every: int = 0
    log_every: int = 50
    # reviving dead charts in the mixture phase: every revive_every steps (0 = never), each chart whose weight
    # alpha_k fell below revive_below / K is re-seeded on a cluster of the worst-explained points (see
    # revive_dead_charts). The mixture's responsibilities concentrate the data on a few charts and the others
    # never train again (bench/results/charts_usage.md); measured on 6x6 patches (K 32, d 8), revived charts died
    # again within 100 steps and the model ended as without revival (bench/RESULTS.md), hence off by default.
    revive_every: int = 0
    revive_below: float = 0.1
    revive_points: int = 8192
    # Adam steps a revived chart trains alone on its cluster before rejoining the mixture (as pre-training
    # does): a fresh near-affine chart explains even its own cluster worse than the trained charts, so without
    # this head start it gets no responsibility and dies again
    revive_pretrain_steps: int = 50
    # the off-manifold sigma in the responsibilities of the mixture and overlap phases: "shared" (train_sigma for
    # every chart, as the loss) or "per_chart" (each chart's own running maximum-likelihood sigma, the value
    # finalize() gives the trained model: sigma_k^2 = sum_i w_ik |x_i - D_k(E_k(x_i))|^2 / ((n - d) sum_i w_ik),
    # an average over the batches with alpha_momentum; needs a model with sigma_per_chart). The loss keeps
    # train_sigma. A remedy tried for the patch models' dead charts: with one sigma for all, a chart that reconstructs
    # every patch about as well as the others takes them all (bench/RESULTS.md, issue 10).
    responsibility_sigma: str = "shared"

    @property
    def total_steps(self) -> int:
        return self.pretrain_steps + self.mixture_steps + self.overlap_steps

    def phase(self, step: int) -> str:
        ends = (self.pretrain_steps, self.mixture_steps, self.overlap_steps)
        for name, end in zip(PHASES, torch.tensor(ends).cumsum(0).tolist()):
            if step < end:
                return name
        return PHASES[-1]

    def learning_rate(self, step: int) -> float:
        """The learning rate of step `step` (0-based)."""
        if self.lr_schedule == "constant" or step < self.pretrain_steps:
            return self.lr
        span = max(1, self.mixture_steps + self.overlap_steps)
        t = min(1.0, (step - self.pretrain_steps) / span)
        return self.lr * (self.lr_final + (1 - self.lr_final) * 0.5 * (1 + math.cos(math.pi * t)))

    def check(self) -> "TrainConfig":
        """Raise a ValueError naming the field and its bound for an invalid setting (before any work)."""
        for name in ("pretrain_steps", "mixture_steps", "overlap_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.total_steps < 1:
            raise ValueError("the phases must have at least 1 step in total")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.train_sigma > 0:
            raise ValueError(f"train_sigma must be > 0, got {self.train_sigma}")
        if not self.overlap_scale >= 1:
            raise ValueError(f"overlap_scale must be >= 1 (1: the overlap phase hands no point on), got {self.overlap_scale}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0 < self.seed_fraction <= 1:
            raise ValueError(f"seed_fraction must be in (0, 1], got {self.seed_fraction}")
        if not 0 < self.lr_final <= 1:
            raise ValueError(f"lr_final must be in (0, 1], got {self.lr_final}")
        if self.revive_every < 0:
            raise ValueError(f"revive_every must be >= 0 (0: never), got {self.revive_every}")
        if not 0 < self.revive_below < 1:
            raise ValueError(f"revive_below must be in (0, 1) (a fraction of the uniform weight 1/K), got {self.revive_below}")
        if self.revive_points < 2:
            raise ValueError(f"revive_points must be >= 2, got {self.revive_points}")
        if self.revive_pretrain_steps < 0:
            raise ValueError(f"revive_pretrain_steps must be >= 0, got {self.revive_pretrain_steps}")
        if self.responsibility_sigma not in RESPONSIBILITY_SIGMAS:
            raise ValueError(f"responsibility_sigma must be one of {RESPONSIBILITY_SIGMAS}, got {self.responsibility_sigma!r}")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Defaults of `patchreg train charts` on point data (toy manifolds), from the ablations of issue 15
# (bench/results/charts_convergence.md, torus FIF, one seed): local seeding (seed_fraction 0.3) took the
# mean distance / diameter at 3000 steps from 0.0061 to 0.0018 and the coverage to its floor; the longer
# run (3000 steps instead of 500) and the cosine schedule did the rest. A train sigma of 0.01 with
# whole-cluster seeding was worse (0.016).
# overlap_scale 1 (2026-12-06; before: 1.5): the last phase keeps the mixture's own responsibilities instead of
# handing each chart's border points to a neighbour (bench/results/charts_overlap1_ablation.md, FIF, seeds 0-2, and
# held-out seeds where listed there). The hand-off left the manifold's edges and three-chart junctions underfilled:
# on the swiss roll (K 12) all 22-24 uncovered reference points of 20000 lay at its edges, coverage 0.9988-0.9990;
# without it 0.9998-1.0 and the distance halved. Without it the held-out NLL is lower in every seed of every toy but
# the sphere (two circles by 0.005-0.09 nats, torus 0.07-0.18, annulus 0.19-0.35, Klein bottle 0.22-0.25, swiss roll
# 0.6-0.8; the sphere's K 2 charts lose 0.01-0.06), coverage is at least as high, and issue 15's goal is met on
# seeds 0-2 of every toy but the Klein bottle's coverage (2 of 3; with the hand-off 1 of 3). The sphere's sliced W2
# is a tie over seeds 0-5 (within 1.5x of its floor in 6 of 6 without, one at 1.4999x, and 5 of 6 with it).
# steps 3000: 6000 (bench/results/charts_steps6000_ablation.md, FIF, every toy, seeds 0-2) lowers the distance in 17
# of 18 (toy, seed) pairs but meets issue 15's goal in 14 of 18 (3000: 18 of 18; sliced W2 and coverage get worse),
# and the held-out metrics still improve up to the end of any schedule tried (charts_convergence_defaults.md); 12000
# (charts_steps12000_ablation.md, 14 FIF cells) meets it in 12 of 14, the Klein bottle's coverage falling with each doubling in
# 2 of 3 seeds while its density on the surface does not improve (charts_klein_intrinsic_density.md, charts_schedule_length.md).
# Convergence (2026-12-08, bench/results/charts_schedule_length.md, "Where each metric stops improving", and
# charts_convergence_defaults.md): the held-out NLL splits into its part on the manifold and its normal part
# (patchreg.charts.metrics.heldout_nll_parts). At 3000 steps FIF's coverage, sliced W2 and NLL on the manifold no longer
# improve with 2x or 4x the steps (the manifold's density has converged); what longer schedules still improve is the
# manifold's precision, the distance and the NLL's normal part: on the sphere until 24000 steps (8x), on two circles past
# 24000, on the annulus, swiss roll and Klein bottle past 12000. With Gaussian noise 0.02 on the points (a floor for both) FIF's precision
# levels off at 3000 steps on two circles and 12000 on the sphere. A lower final rate (lr_final 0.001, 0.0001) did not
# move the sphere's distance at 3000 steps; batch 512 took it 27% lower at 4x the time per step, less than 6000 steps
# at batch 128 do.
TOY_DEFAULTS = dict(steps=3000, pretrain_fraction=0.1, overlap_fraction=0.2, batch_size=128, lr=1e-3,
                    lr_schedule="cosine", lr_final=0.01, train_sigma=0.05, width=64, blocks=2, seed_fraction=0.3,
                    overlap_scale=1.0, overlap_in_loss=False)


# Per-toy exceptions to TOY_DEFAULTS (the toy manifold's name -> settings, "charts" the number of charts K in
# place of the manifold's suggested K), applied by toy_defaults(name), `patchreg train charts --data toy:NAME`
# and bench/charts_toy_seeds.py. The torus (issue 15, bench/results/charts_torus_ablation.md, FIF, 3 seeds):
# with K 6 and lr 1e-3 it ended at 0.0032 (0.0018-0.0060) of the diameter, coverage 0.993; K 12 alone took the
# distance to 0.0012-0.0013 in every seed (coverage still 0.998), lr 2e-3 alone helped 2 seeds of 3 and hurt
# one; both together met issue 15's goal (distance <= 0.0014, coverage at its floor, sliced W2 <= 1.5x its
# floor) in every seed. The Klein bottle (ours, 2026-12-06, bench/results/charts_klein_overlap1_ablation.md and
# charts_klein_batch256_ablation.md) takes the torus's settings and batch 256: with K 6 it stayed at 0.0055-0.0060 of
# the diameter, coverage 0.990-0.993; K 12 and lr 2e-3 gave 0.0010-0.0011 but coverage at its goal in 4 of seeds 0-5
# (0.9982 and 0.9983 in two); batch 256 on top: coverage at its goal in 6 of 6 (seed 2 exactly at floor - 0.001),
# distance 0.0009, held-out NLL lower by 0.26-0.44 nats in every seed. The annulus
# (2026-12-06, bench/results/charts_annulus_k4_ablation.md, FIF, 3 seeds): with its suggested K 2 the charts'
# latent border band (the prior's density falls over |z| in 0.8-1) lies along the annulus's edges, which the model
# underfills (inner-edge mass 0.033 vs 0.057 of the true), so sliced W2 stayed 1.5-1.8x its floor; K 4 narrows that
# band in the ambient space: distance 0.00046-0.00056 of the diameter (K 2: 0.0027-0.0042). The swiss roll, also a
# surface with an edge, likewise takes more charts than its suggested 4 (K 8: distance 0.0015 against 0.0043 with
# K 4, charts_swiss_roll_k8_ablation.md; K 12 without the hand-off: 0.0007-0.0008 and coverage 0.9998-1.0 in 6 of 6
# seeds, charts_swiss_roll_overlap1_ablation.md). Other toys: TOY_DEFAULTS.
TOY_SETTINGS: dict[str, dict] = {"torus": dict(charts=12, lr=2e-3), "klein_bottle": dict(charts=12, lr=2e-3, batch_size=256),
                                 "annulus": dict(charts=4), "swiss_roll": dict(charts=12)}


# Per-family exceptions, applied between TOY_DEFAULTS and TOY_SETTINGS. The VAE mixture keeps the hand-off of
# Alberti et al.'s overlap phase: without it (seed 0, 2026-12-06, bench/results/charts_overlap1_ablation.md) its
# distance grew on two circles from 0.0007-0.0013 to 0.0036 of the diameter and on the sphere from 0.0067 to 0.0115.
# Its train sigma (the decoder noise of the ELBO's reconstruction term) is 0.01, as Alberti et al.'s sig_hd on the
# sphere, two circles and ring (their torus 0.05 on a torus 2.9x the size of ours): with 0.05 the VAE charts'
# samples lay 0.015 (torus), 0.0095 (annulus) and 0.03 (swiss roll) of the diameter off the manifold and 12,000
# steps instead of 3,000 barely moved that (torus 0.0125, annulus 0.0095); 0.01 gave 0.0026 / 0.0014 / 0.0011 in
# 3,000 steps (means of seeds 0-2) and 0.02 sat between (seed 0: torus 0.0063, annulus 0.0069);
# bench/results/charts_vae_sigma_ablation.md.
# The price is on the sphere (K 2): the encoder noise's Jacobian penalty, |J|^2 / 2 at sigma = 0.01, keeps its two
# charts from stretching over the equator, which both then place at |z| = 1.0-1.1, the rim of the prior; coverage
# 0.96-0.99 there (0.998-1.0 with 0.05). More charts and longer training did not mend it; Alberti et al.'s overlap
# loss did, but put the samples 5.6x farther from the sphere. Hence FAMILY_TOY_SETTINGS below.
# steps 6000 (2026-12-07; before: 3000, the toys' default): the VAE mixture gains from the longer schedule on nearly
# every metric, FIF does not (bench/results/charts_schedule_length.md, seeds 0-2 of all six toys, the 6,000-step cells
# of charts_steps6000_ablation.md): distance to the manifold lower in 15 of 18 (toy, seed) pairs (x0.42-0.96 per toy,
# the seed means of the per-seed factors; the annulus x1.13, from seed 0's 0.0032), sliced W2 lower in 13, held-out NLL
# lower in 14 (toy means 0.27-0.61 nats lower on five toys, 0.05 higher on two circles), issue 15's goal met in 9 of 18 against 5; the coverage's shortfall grows on the swiss
# roll (0.0011 below its floor against 0.0003). FIF stays at 3000: 6000 steps met the goal in 14 of 18 (3000: 18).
FAMILY_SETTINGS: dict[str, dict] = {"vae": dict(train_sigma=0.01, overlap_scale=1.5, steps=6000)}


# One family on one toy, applied last. The VAE on the sphere trains at sigma 0.02 (2026-12-06, seeds 0-2,
# bench/results/charts_vae_sigma_ablation.md): at the family's 0.01 coverage was 0.984 / 0.993 / 0.960 (the junction
# holes above), at 0.02 1.0 / 1.0 / 0.9996 with the distance 0.0012-0.0019 of the diameter (0.01: 0.0010-0.0033).
FAMILY_TOY_SETTINGS: dict[tuple[str, str], dict] = {("vae", "sphere"): dict(train_sigma=0.02)}


def toy_defaults(manifold: str | None = None, family: str | None = None) -> dict:
    """TOY_DEFAULTS with the family's (FAMILY_SETTINGS), the toy manifold's (TOY_SETTINGS) and then the family's on
    that toy (FAMILY_TOY_SETTINGS) over them; None or another name: TOY_DEFAULTS."""
    return {**TOY_DEFAULTS, **FAMILY_SETTINGS.get(family, {}), **TOY_SETTINGS.get(manifold, {}),
            **FAMILY_TOY_SETTINGS.get((family, manifold), {})}


def toy_train_config(steps: int | None = None, manifold: str | None = None, family: str | None = None,
                     **overrides) -> TrainConfig:
    """The TrainConfig of `patchreg train charts` on point data: toy_defaults(manifold, family)'s phases
    (pre-training, mixture, overlap as fractions of `steps`), learning rate and schedule; `overrides` set any field."""
    defaults = toy_defaults(manifold, family)
    steps = defaults["steps"] if steps is None else steps
    if steps < 3:
        raise ValueError(f"steps must be >= 3 (pre-training, mixture and overlap phases), got {steps}")
    pre = max(1, int(round(defaults["pretrain_fraction"] * steps)))
    over = max(1, int(round(defaults["overlap_fraction"] * steps)))
    base = dict(pretrain_steps=pre, mixture_steps=steps - pre - over, overlap_steps=over,
                **{k: defaults[k] for k in ("batch_size", "lr", "lr_schedule", "lr_final", "train_sigma", "seed_fraction",
                                          "overlap_scale", "overlap_in_loss")})
    base.update(overrides)
    return TrainConfig(**base).check()


class BatchStream:
    """Random mini-batches (with replacement) of a data tensor, or draws from a sampler(n, generator)."""

    def __init__(self, data, batch_size: int, generator: torch.Generator):
        self.data, self.batch_size, self.generator = data, batch_size, generator

    def draw(self, n: int | None = None) -> torch.Tensor:
        n = n or self.batch_size
        if callable(self.data):
            return self.data(n, self.generator)
        idx = torch.randint(len(self.data), (n,), generator=self.generator)
        return self.data[idx]


def check_training_data(data: torch.Tensor, ambient_dim: int) -> torch.Tensor:
    _checks.check_tensor("data", data, ndim=2)
    if data.shape[1] != ambient_dim:
        raise ValueError(f"data must have shape (N, {ambient_dim}) for this model, got {tuple(data.shape)}")
    if not torch.isfinite(data).all():
        bad = (~torch.isfinite(data)).any(1).nonzero()[:5, 0].tolist()
        raise ValueError(f"data contains NaN or infinite values (rows {bad} ...); clean it before training")
    return data


def mixture_loss(model, x, config: TrainConfig, phase: str, centers, generator):
    """(loss, responsibilities (B, K)) of one mini-batch in `phase`."""
    sigma = config.train_sigma
    score_sigma = model.sigma.detach() if config.responsibility_sigma == "per_chart" else sigma
    scale = config.overlap_scale if phase == "overlap" else 1.0
    loss_scale = scale if config.overlap_in_loss else 1.0
    if phase == "pretrain":
        # hard assignment: each chart's loss is needed on its own cluster's points only (the others have
        # weight 0); an empty selection still gives zero gradients, as the weight-0 terms did
        labels = seed_members(x, centers)  # -1: outside every seeding patch (local seeding), no chart's loss
        total = sum(c.training_loss(x, model.prior, sigma, 1.0, generator, rows=(labels == k).nonzero()[:, 0]).sum()
                    for k, c in enumerate(model.charts))
        return total / len(x), torch.nn.functional.one_hot(labels.clamp_min(0), model.n_charts).to(x.dtype) * (labels >= 0)[:, None]
    sparse = config.detach_responsibilities and config.responsibility_floor > 0
    losses = None if sparse else torch.stack([c.training_loss(x, model.prior, sigma, loss_scale, generator)
                                              for c in model.charts], dim=-1)
    with torch.set_grad_enabled(not config.detach_responsibilities and torch.is_grad_enabled()):
        # Detached and unscaled: the fused per-chart kernel computes every chart at once.
        fused = model._fused_chart_log_probs(x, score_sigma, scale) if config.detach_responsibilities else None
        scores = fused if fused is not None else torch.stack(
            [c.assignment_score(x, model.prior, model._chart_sigma(score_sigma, k), scale)
             for k, c in enumerate(model.charts)], -1
        )
    w = torch.softmax(model.log_alpha + scores, dim=-1)
    if config.detach_responsibilities:
        w = w.detach()
    if sparse:  # each chart's loss on its responsible points only (same random draws, see training_loss)
        total = x.new_zeros(())
        for k, c in enumerate(model.charts):
            rows = (w[:, k] > config.responsibility_floor).nonzero()[:, 0]
            if rows.numel():
                total = total + (w[rows, k] * c.training_loss(x, model.prior, sigma, loss_scale, generator, rows=rows)).sum()
        return total / len(x), w
    return (w * losses).sum(-1).mean(), w.detach()


def _nonfinite_message(step, phase, what):
    return (
        f"training diverged: non-finite {what} at step {step} ({phase} phase). Lower --lr or raise "
        f"--train-sigma, check the data scale; the last checkpoint (if any) is untouched and resumable."
    )


def finalize(model, points: torch.Tensor, start_sigma: float, n_rounds: int = 3, batch: int = 512) -> None:
    """Set alpha to the mean responsibilities and sigma to its maximum-likelihood value on `points`
    (alternating, starting from `start_sigma`). Evaluated `batch` points at a time (the same values;
    the exact Jacobians of large batches are slower per point, measured 1.3x at 1348 points).
    With model.sigma_per_chart each chart gets its own ML sigma_k^2 = sum_i w_ik r_ik / ((n - d) sum_i w_ik)."""
    codim = model.ambient_dim - model.latent_dim
    chunks = points.split(batch)
    with torch.no_grad():
        model.log_sigma.fill_(math.log(start_sigma))
        for _ in range(n_rounds):
            w = torch.cat([model.responsibilities(chunk) for chunk in chunks])
            model.log_alpha.copy_(torch.log(w.mean(0).clamp_min(1e-12)))
            resid = torch.cat([torch.stack([((chunk - c.decode(c.encode(chunk))) ** 2).sum(-1) for c in model.charts], -1)
                               for chunk in chunks])
            if getattr(model, "sigma_per_chart", False):
                mass = w.sum(0)
                sigma2 = (w * resid).sum(0) / (codim * mass.clamp_min(1e-12))
                # a chart that explains no point has no ML sigma (0/0): give it the mixture's, not a spike
                pooled = (w * resid).sum() / (codim * mass.sum())
                sigma2 = torch.where(mass > 1e-6 * len(points), sigma2, pooled)
            else:
                sigma2 = (w * resid).sum(-1).mean() / codim
            model.log_sigma.copy_(0.5 * torch.log(sigma2.clamp_min(1e-8)))


def revive_dead_charts(model, points: torch.Tensor, optimizer, below: float, generator: torch.Generator,
                       sigma: float, pretrain_steps: int = 0, lr: float = 1e-3) -> list[int]:
    """Re-seed every chart whose weight is below `below` / K; returns their indices.

    The dead charts are placed, as at the start of training, on k-means clusters (one per dead chart) of the
    tenth of `points` that the mixture explains worst (lowest log p at the training noise level `sigma`, which
    finalize() does not change, so a resumed run revives the same way): frame by PCA of the cluster, network
    re-initialised, its Adam state cleared, then `pretrain_steps` Adam steps (rate `lr`) of its own training loss
    on its cluster alone, weight 1/K (the weights renormalised). The new charts then take the responsibility for
    data the live charts fit badly instead of staying empty."""
    alpha = model.log_alpha.detach().exp()
    dead = (alpha < below / model.n_charts).nonzero()[:, 0].tolist()
    if not dead:
        return []
    with torch.no_grad():
        log_p = torch.cat([torch.logsumexp(model.log_alpha + model.chart_log_probs(chunk, sigma=sigma), dim=-1)
                           for chunk in points.split(1024)])
        worst = points[log_p.argsort()[: max(len(dead) * 2, len(points) // 10)]]
        centers = kmeans(worst, len(dead), generator)
        labels = nearest_center(worst, centers)
        for j, k in enumerate(dead):
            members = worst[labels == j]
            chart = model.charts[k]
            init_seed = int(torch.randint(2**62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):  # the initialisation from `generator`: resumable, and the
                torch.manual_seed(init_seed)         # global random stream is left as it was
                _reset_parameters(chart)
            members = members if len(members) >= 2 else worst
            chart.set_frame(members, model.config.get("align", "pca"))
            for param in chart.parameters():
                optimizer.state.pop(param, None)
            _pretrain_alone(chart, model.prior, members, sigma, pretrain_steps, lr, generator)
        alpha[dead] = 1.0 / model.n_charts
        model.log_alpha.copy_(torch.log(alpha / alpha.sum()))
    return dead


class _MixtureLoss(torch.nn.Module):
    """mixture_loss as a module's forward, the call DistributedDataParallel synchronises."""

    def __init__(self, model, config: TrainConfig, generator: torch.Generator):
        super().__init__()
        self.model, self.config, self.generator = model, config, generator

    def forward(self, x, phase: str, centers):
        return mixture_loss(self.model, x, self.config, phase, centers, self.generator)


def wrap_for_training(model, config: TrainConfig, generator: torch.Generator, world=None):
    """The loss module of `training_step`: plain for one process, DDP-wrapped (rank 0's weights) for several."""
    world = world or distributed.current_world()
    loss_of = _MixtureLoss(model, config, generator)
    if not world.distributed:
        return loss_of
    # Charts without responsible points in a batch take no part in its graph; log_alpha is a buffer
    # that every rank updates identically (averaged responsibilities), so buffers sync only at start.
    return torch.nn.parallel.DistributedDataParallel(loss_of, find_unused_parameters=True,
                                                     forward_sync_buffers=False)


def training_step(loss_of, model, optimizer, x, config: TrainConfig, phase: str, centers, step: int, world=None):
    """One optimisation step on the (local) batch x; returns (loss averaged over the ranks, responsibilities)."""
    world = world or distributed.current_world()
    loss, w = loss_of(x, phase, centers)
    value = distributed.all_reduce_sum(loss.detach().clone()) / world.world_size if world.distributed else loss
    if not torch.isfinite(value):  # the global loss: every rank stops together
        raise TrainingDiverged(_nonfinite_message(step, phase, "loss"))
    if phase != "pretrain" and config.responsibility_sigma == "per_chart":
        residual_stats = _responsibility_residuals(model, x, w, config.responsibility_floor)  # the scores' parameters
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    if not torch.isfinite(grad_norm):
        raise TrainingDiverged(_nonfinite_message(step, phase, "gradient"))
    optimizer.step()
    if phase != "pretrain":
        with torch.no_grad():
            mean_w = w.mean(0)
            if world.distributed:
                mean_w = distributed.all_reduce_sum(mean_w.clone()) / world.world_size
            m = config.alpha_momentum
            alpha = m * model.log_alpha.exp() + (1 - m) * mean_w
            model.log_alpha.copy_(torch.log(alpha.clamp_min(1e-6) / alpha.sum()))
            if config.responsibility_sigma == "per_chart":
                _update_chart_sigmas(model, residual_stats, config, world)
    return value, w


@torch.no_grad()
def _responsibility_residuals(model, x, w, floor: float) -> torch.Tensor:
    """(2, K): sum_i w_ik |x_i - D_k(E_k(x_i))|^2 and sum_i w_ik over the batch, each chart on the points whose
    responsibility exceeds `floor` (the rest weigh less than floor each)."""
    stats = x.new_zeros(2, model.n_charts)
    for k, chart in enumerate(model.charts):
        rows = (w[:, k] > floor).nonzero()[:, 0]
        if rows.numel():
            xr = x[rows]
            stats[0, k] = (w[rows, k] * ((xr - chart.decode(chart.encode(xr))) ** 2).sum(-1)).sum()
            stats[1, k] = w[rows, k].sum()
    return stats


@torch.no_grad()
def _update_chart_sigmas(model, stats: torch.Tensor, config: TrainConfig, world) -> None:
    """Move each chart's running sigma^2 towards its batch's maximum-likelihood value (per_chart responsibilities)."""
    if world.distributed:  # the global batch's sums: every rank updates identically
        stats = distributed.all_reduce_sum(stats.clone())
    codim = model.ambient_dim - model.latent_dim
    seen = stats[1] >= SIGMA_UPDATE_MIN_MASS
    batch_var = stats[0] / (codim * stats[1].clamp_min(1e-30))
    m = config.alpha_momentum
    var = torch.where(seen, m * model.sigma**2 + (1 - m) * batch_var, model.sigma**2)
    floor = (SIGMA_FLOOR_FRACTION * config.train_sigma) ** 2
    model.log_sigma.copy_(0.5 * torch.log(var.clamp_min(floor)))


def _pretrain_alone(chart, prior, points: torch.Tensor, sigma: float, steps: int, lr: float,
                    generator: torch.Generator) -> None:
    """`steps` Adam steps of the chart's own training loss on `points` (a private optimiser)."""
    if steps == 0:
        return
    optimizer = torch.optim.Adam(chart.parameters(), lr=lr, foreach=True)
    with torch.enable_grad():
        for _ in range(steps):
            loss = chart.training_loss(points, prior, sigma, 1.0, generator).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def _reset_parameters(module: torch.nn.Module) -> None:
    """Re-initialise every submodule as its constructor does: the outermost `reset_parameters` found on each
    branch is called (a ResidualMLP's own, which keeps its small residual branches, not its Linears')."""
    for child in module.children():
        if hasattr(child, "reset_parameters"):
            child.reset_parameters()
        else:
            _reset_parameters(child)


def _revive(model, data, optimizer, config: TrainConfig, step: int, world) -> list[int]:
    """revive_dead_charts on rank 0's points (a stream of its own, seeded by the step: resumable, and the
    training stream is not shifted), its result broadcast to every rank."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    points = BatchStream(data, config.revive_points, generator).draw().to(model.log_alpha.dtype)
    revived = revive_dead_charts(model, points, optimizer, config.revive_below, generator, config.train_sigma,
                                 config.revive_pretrain_steps, config.lr)
    if world.distributed:
        revived = distributed.broadcast_object(revived)
        for k in revived:
            for param in model.charts[k].parameters():
                optimizer.state.pop(param, None)
        distributed.broadcast_tensors([*model.parameters(), *model.buffers()])
    return revived


def _rank_generator_tensors(generator, world) -> dict:
    """Every rank's random-stream state, gathered for rank 0's checkpoint (empty for one process)."""
    if not world.distributed:
        return {}
    states = distributed.gather_rows(generator.get_state()[None])
    return {f"rng/data.rank{r}": states[r] for r in range(1, world.world_size)}


def _restore_rank_generator(checkpoint_path, generator, seed: int, step: int, world) -> None:
    """Rank r > 0 continues its own stream if the checkpoint holds it, else a fresh one (seed, rank, step)."""
    if world.rank == 0:
        return
    from ..io import load_checkpoint

    tensors = load_checkpoint(checkpoint_path, "charts")[0]
    state = tensors.get(f"rng/data.rank{world.rank}")
    if state is not None:
        generator.set_state(state)
    else:  # trained on fewer ranks: not rank 0's stream again
        generator.manual_seed(distributed.rank_seed(seed + step, world.rank))


def train_mixture(model, data, config: TrainConfig | None = None, checkpoint_path=None, resume: bool = False,
                  progress: bool = True, extra_tensors: dict | None = None, extra_header: dict | None = None,
                  callback=None) -> list[dict]:
    """Train `model` on `data` (tensor (N, n) or sampler(n, generator)); returns the logged history.

    extra_tensors / extra_header go into every checkpoint (see save_mixture).
    `callback(step, model, record)`, if given, is called at every logged step (after the record is
    appended to the history; it may add keys to `record`, e.g. held-out metrics of a finalized copy of
    the model). It must not change the model nor draw from the training stream.
    With `checkpoint_path`, the state (model, optimizer, random streams, step, history) is written
    atomically every `checkpoint_every` steps and at the end; `resume=True` continues from it.
    """
    config = (config or TrainConfig()).check()
    if config.responsibility_sigma == "per_chart" and not model.sigma_per_chart:
        raise ValueError("responsibility_sigma='per_chart' needs a model with one sigma per chart "
                         "(build_mixture(..., sigma_per_chart=True))")
    world = distributed.current_world()
    progress = progress and world.is_main
    dtype = model.log_alpha.dtype
    if not callable(data):
        data = check_training_data(data, model.ambient_dim).to(dtype)
    if config.batch_size % world.world_size:
        raise ValueError(f"batch_size={config.batch_size} must be a multiple of the number of processes "
                         f"({world.world_size}): each rank draws batch_size / processes points")
    generator = torch.Generator().manual_seed(distributed.rank_seed(config.seed, world.rank))
    stream = BatchStream(data, config.batch_size // world.world_size, generator)
    # foreach: one multi-tensor update instead of a Python loop over the K charts' 24 tensors each: bit for bit the
    # loop's result (fused=True is not), 2.6x less optimizer time at K 12, 4-7% of a toy step (2026-12-06, 1 thread)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, foreach=True)
    step, history, centers = 0, [], None
    if distributed.broadcast_object(bool(resume and checkpoint_path is not None and Path(checkpoint_path).is_file())):
        state = load_mixture_state(checkpoint_path, model, optimizer, generator)
        step, history, centers = state["step"], state["history"], state["centers"]
        if state["log_alpha_running"] is not None:  # undo finalize(): training continues from the running weights
            model.log_alpha.copy_(state["log_alpha_running"])
        if world.distributed:
            _restore_rank_generator(checkpoint_path, generator, config.seed, step, world)
    else:
        seed_sample = stream.draw(config.seed_points)
        check_training_data(seed_sample, model.ambient_dim)
        centers = seed_charts(model, seed_sample, generator, model.config.get("align", "pca"), config.seed_fraction)
        if world.distributed:  # rank 0's seeding for all (DDP broadcasts the weights, not the centres)
            distributed.broadcast_tensors([centers, *model.buffers()])

    def save(log_alpha_running=None):
        if checkpoint_path is not None:
            ranks = _rank_generator_tensors(generator, world)  # a collective: every rank takes part
            if world.is_main:
                save_mixture(checkpoint_path, model, optimizer=optimizer, generator=generator, centers=centers,
                             step=step, history=history, train_config=asdict(config),
                             log_alpha_running=log_alpha_running, extra_tensors={**(extra_tensors or {}), **ranks},
                             extra_header=extra_header)

    loss_of = wrap_for_training(model, config, generator, world)
    bar = tqdm(total=config.total_steps, initial=step, disable=not progress, desc="charts", dynamic_ncols=True)
    started = time.time()
    revived = []  # charts re-seeded since the last logged record
    while step < config.total_steps:
        phase = config.phase(step)
        x = stream.draw().to(dtype)
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate(step)
        loss, w = training_step(loss_of, model, optimizer, x, config, phase, centers, step, world)
        step += 1
        if config.revive_every and phase == "mixture" and step % config.revive_every == 0:
            revived += _revive(model, data, optimizer, config, step, world)  # logged with the next record
        if step % config.log_every == 0 or step == config.total_steps:
            history.append(dict(step=step, phase=phase, loss=loss.item(), seconds=time.time() - started))
            if revived:
                history[-1]["revived"], revived = revived, []
            bar.set_postfix(phase=phase, loss=f"{loss.item():.3g}")
            if callback is not None and world.is_main:
                paused = time.time()
                callback(step, model, history[-1])
                started += time.time() - paused  # "seconds" counts training only
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.total_steps:
            save()
        bar.update(1)
    bar.close()
    running = model.log_alpha.clone()
    finalize(model, finalize_points(data, config, dtype), config.train_sigma)
    save(running)
    return history


FINALIZE_POINTS = 8192  # training points finalize() sets alpha and sigma on (a seeded subset beyond)


def finalize_points(data, config: TrainConfig, dtype) -> torch.Tensor:
    """The points of finalize(): a data tensor's own points (a seeded subset without replacement beyond
    FINALIZE_POINTS), so that alpha is the training data's split between the charts; before 2026-12-06 it was a
    resample with replacement of 4096 points, whose split scatters by about 0.8% (on two circles the model then
    put 48.6% of its mass on a circle holding 49.9% of the data). A sampler draws min(seed_points, 4096) as before.
    A generator of its own, so that finalizing does not shift the training stream (exact resume)."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    if callable(data):
        return BatchStream(data, config.batch_size, generator).draw(min(config.seed_points, 4096)).to(dtype)
    if len(data) > FINALIZE_POINTS:
        data = data[torch.randperm(len(data), generator=generator)[:FINALIZE_POINTS]]
    return data.to(dtype)
