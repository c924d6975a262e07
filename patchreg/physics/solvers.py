"""Batched conjugate gradients for the symmetric positive definite systems of splitting methods."""

from __future__ import annotations

from typing import Callable

import torch

from .._checks import check_int, check_tensor


def _batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a_i, b_i> per batch item, shaped to broadcast against a."""
    dots = (a * b).reshape(a.shape[0], -1).sum(dim=1)
    return dots.reshape(-1, *([1] * (a.dim() - 1)))


def conjugate_gradient(apply_fn: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                       x0: torch.Tensor | None = None, max_iter: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Solve M x = b for every batch item independently by conjugate gradients.

    apply_fn(x) applies a symmetric positive definite M that acts on each batch item (dim 0)
    separately, e.g. x -> A*(A x) + beta x. Each item stops updating once its residual norm
    is at most tol * ||b_i|| (items with b_i = 0 return x0_i unchanged if it already solves
    them, else iterate like the others); the loop ends when all items have converged or
    after max_iter iterations. Runs under torch.no_grad.
    """
    check_tensor("b", b)
    if b.dim() < 1 or b.shape[0] == 0:
        raise ValueError(f"b needs a non-empty batch dimension, got shape {tuple(b.shape)}")
    check_int("max_iter", max_iter, 0)
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    with torch.no_grad():
        x = torch.zeros_like(b) if x0 is None else x0.detach().clone()
        if x.shape != b.shape:
            raise ValueError(f"x0 has shape {tuple(x.shape)} but b has shape {tuple(b.shape)}")
        r = b - apply_fn(x)
        p = r.clone()
        rr = _batch_dot(r, r)
        threshold = (tol * b.reshape(b.shape[0], -1).norm(dim=1)) ** 2
        threshold = threshold.reshape(rr.shape)
        for _ in range(max_iter):
            active = rr > threshold
            if not bool(active.any()):
                break
            Mp = apply_fn(p)
            pMp = _batch_dot(p, Mp)
            alpha = torch.where(active & (pMp > 0), rr / torch.where(pMp > 0, pMp, 1), 0)
            x = x + alpha * p
            r = r - alpha * Mp
            rr_new = _batch_dot(r, r)
            beta = torch.where(active, rr_new / torch.where(rr > 0, rr, 1), 0)
            p = torch.where(active, r + beta * p, p)
            rr = torch.where(active, rr_new, rr)
    return x
