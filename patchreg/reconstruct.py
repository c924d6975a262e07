"""Variational reconstruction: minimise d(A x, y) + lam * R(x) over the image x by Adam or L-BFGS.

d is the noise model's negative log-likelihood `noise.nll(Ax, y)` (see patchreg.physics.noise;
0.5 ||Ax - y||^2 when no noise model is known) and R is the prior's `nll(x)`. Both return one
value per image; the objective is their sum over the batch, so every image is reconstructed
as if alone (with Adam exactly; L-BFGS shares one line search across the batch).
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from ._checks import check_tensor
from .metrics import psnr
from .physics._base import check_image
from .physics.noise import squared_error

__all__ = ["reconstruct"]

SOLVERS = ("adam", "lbfgs")
DEFAULT_LR = {"adam": 0.01, "lbfgs": 1.0}


def _prior_energy(prior):
    """The per-image regularizer R(x) -> (B,) of a prior object, callable or None."""
    if prior is None:
        return lambda x: x.new_zeros(x.shape[0])
    if hasattr(prior, "nll"):
        return prior.nll
    if callable(prior):
        return prior
    raise TypeError(f"prior must expose nll(x) or be callable, got {type(prior).__name__}")


def _data_fidelity(noise, physics):
    """noise.nll, else the physics' own noise model's nll, else 0.5 ||Ax - y||^2."""
    if noise is None:
        noise = getattr(physics, "noise_model", None)
        if noise is not None and not hasattr(noise, "nll"):
            noise = None  # e.g. a DeepInverse noise model: no likelihood to use
    if noise is None:
        return squared_error
    if not hasattr(noise, "nll"):
        raise TypeError(f"noise must expose nll(Ax, y), got {type(noise).__name__}")
    return noise.nll


def _check_settings(y, lam, solver, steps, lr, clamp) -> tuple[float, float]:
    """Validate the scalar arguments of reconstruct; returns (lam, lr) with lr defaulted."""
    check_tensor("y", y)
    if y.dim() < 1 or y.shape[0] == 0:
        raise ValueError(f"y needs a non-empty batch dimension, got shape {tuple(y.shape)}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise TypeError(f"lam must be a real number, got {type(lam).__name__}")
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    lr = DEFAULT_LR[solver] if lr is None else lr
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if clamp is not None and not (len(clamp) == 2 and clamp[0] < clamp[1]):
        raise ValueError(f"clamp must be a pair (lo, hi) with lo < hi, got {clamp!r}")
    return float(lam), float(lr)


def _start_image(y, physics, x0):
    if x0 is None:
        guess = getattr(physics, "initial_guess", None)
        x0 = guess(y) if guess is not None else physics.A_adjoint(y)
    check_image("x0", x0)
    with torch.no_grad():
        predicted = physics.A(x0)
    if tuple(predicted.shape) != tuple(y.shape):
        raise ValueError(
            f"y has shape {tuple(y.shape)} but the physics maps the start image {tuple(x0.shape)} "
            f"to {tuple(predicted.shape)}"
        )
    return x0.detach().clone()


def _check_prior_channels(prior, x) -> None:
    channels = getattr(prior, "channels", None)
    if isinstance(channels, int) and channels != x.shape[1]:
        raise ValueError(f"the image has {x.shape[1]} channels but the prior models {channels}")


def _per_image(name: str, value: torch.Tensor, batch: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must return a tensor, got {type(value).__name__}")
    if value.dim() == 0 or tuple(value.shape) == (batch,):
        return value
    raise ValueError(f"{name} must return one value per image, shape ({batch},) or (), got {tuple(value.shape)}")


def reconstruct(y: torch.Tensor, physics, prior, lam: float, noise=None, x0: torch.Tensor | None = None,
                solver: str = "adam", steps: int = 300, lr: float | None = None,
                clamp: tuple[float, float] | None = None, reference: torch.Tensor | None = None,
                lbfgs_history: int = 10, progress: bool = True):
    """Minimise sum over images of d(A x, y) + lam * R(x); returns (x, history).

    y: measurements, batch first (B, ...). physics: any object with A and A_adjoint (its
    `initial_guess(y)` gives the default start image: A* y, FBP for Tomography, bicubic for
    SuperResolution; without it A* y). prior: an object with `nll(x)` -> (B,) (or a scalar),
    a callable doing the same, or None for R = 0. lam >= 0. noise: a noise model with
    `nll(Ax, y)`; None takes physics.noise_model, else the plain 0.5 ||Ax - y||^2.
    solver: "adam" (lr default 0.01) or "lbfgs" (strong-Wolfe line search, lr default 1; for
    deterministic priors: a prior that redraws random patches per call breaks its line search).
    steps: iterations (L-BFGS: at most `steps` iterations and 1.25 * steps objective
    evaluations, stopping early on torch's default tolerances).
    clamp: (lo, hi) to project x after every Adam step (L-BFGS: once at the end), None for
    an unconstrained minimiser. reference: clean images; adds history["psnr"] (dB, mean over
    the batch) per iteration.

    history: "loss", "data", "prior" (sums over the batch, one entry per objective evaluation:
    with Adam the value at the start of each iteration, with L-BFGS also line-search trials),
    "psnr" when reference is given, and "seconds".
    """
    lam, lr = _check_settings(y, lam, solver, steps, lr, clamp)
    energy = _prior_energy(prior)
    fidelity = _data_fidelity(noise, physics)
    x = _start_image(y, physics, x0)
    _check_prior_channels(prior, x)
    if reference is not None and reference.shape != x.shape:
        raise ValueError(f"reference has shape {tuple(reference.shape)} but the image has {tuple(x.shape)}")

    x.requires_grad_(True)
    history = {"loss": [], "data": [], "prior": []}
    if reference is not None:
        history["psnr"] = []

    def objective():
        data = _per_image("noise.nll", fidelity(physics.A(x), y), x.shape[0]).sum()
        regular = _per_image("prior.nll", energy(x), x.shape[0]).sum()
        return data + lam * regular, data, regular

    def record(loss, data, regular):
        history["loss"].append(float(loss.detach()))
        history["data"].append(float(data.detach()))
        history["prior"].append(float(regular.detach()))
        if reference is not None:
            history["psnr"].append(float(psnr(x.detach(), reference).mean()))

    start = time.perf_counter()
    with tqdm(total=steps, desc=f"reconstruct ({solver})", disable=not progress, leave=False) as bar:
        if solver == "adam":
            _run_adam(x, objective, record, bar, steps, lr, clamp)
        else:
            _run_lbfgs(x, objective, record, bar, steps, lr, lbfgs_history)
    result = x.detach()
    if clamp is not None:
        result = result.clamp(*clamp)
    history["seconds"] = time.perf_counter() - start
    return result, history


def _run_adam(x, objective, record, bar, steps, lr, clamp) -> None:
    optimizer = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss, data, regular = objective()
        loss.backward()
        record(loss, data, regular)
        optimizer.step()
        if clamp is not None:
            with torch.no_grad():
                x.clamp_(*clamp)
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.4g}", refresh=False)


def _run_lbfgs(x, objective, record, bar, steps, lr, history_size) -> None:
    # All iterations in one step() call: restarting torch's L-BFGS with max_iter=1 per call
    # loses its step length between calls and stalls far from the minimum.
    if steps == 0:
        return
    optimizer = torch.optim.LBFGS([x], lr=lr, max_iter=steps, max_eval=steps * 5 // 4,
                                  history_size=history_size, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss, data, regular = objective()
        loss.backward()
        record(loss, data, regular)
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.4g}", refresh=False)
        return loss

    optimizer.step(closure)
