"""PatchNR regularizer: negative log-likelihood of random image patches under a PatchFlow.

    R(x) = mean_{i=1..N_p} -log p(P_i x)          (reduction="mean", the default, as the paper)
         = sum_{i=1..N_p} -log p(P_i x)          (reduction="sum")

with N_p patch positions drawn uniformly (with replacement) among all valid top-left corners,
re-drawn on every call from a seeded generator, so successive iterations of a reconstruction see
different patches. With "mean", lam does not depend on N_p; with "sum", divide a lam tuned for
"mean" by N_p. The paper's lam (700 for CT, 0.15 for x4 SR) goes with its data terms (plain
||Ax - y||^2 for SR); against `GaussianNoise.nll` = ||Ax - y||^2 / (2 sigma^2) multiply it by
1 / (2 sigma^2). lam does grow with the image: the data term sums over pixels, R is a mean.

precision="bfloat16" (opt-in) runs the flow's dense layers in bfloat16 (`patchreg.priors.flow_lowp`):
3-5x faster matmuls on CPUs with AVX-512-BF16 / AMX, at a small cost in log-density accuracy; the
image, the patches, the affine updates, the log-determinants and the Gaussian term stay float32.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.checkpoint import checkpoint as _recompute

from .._checks import check_int
from ..ops import extract_patches_at
from ._patch_images import check_patch_image, random_positions
from .flow import PatchFlow
from .flow_lowp import Bfloat16FlowLogProb

__all__ = ["PatchNR"]

REDUCTIONS = ("mean", "sum")
PRECISIONS = ("float32", "bfloat16")


@contextlib.contextmanager
def frozen_weights(module: torch.nn.Module):
    """Run `module` without recording its weights in the autograd graph (flags restored afterwards):
    a regularizer needs d/dx only, and the weight gradients would cost a third of the backward pass."""
    flags = [(w, w.requires_grad) for w in module.parameters()]
    for w, _ in flags:
        w.requires_grad_(False)
    try:
        yield module
    finally:
        for w, flag in flags:
            w.requires_grad_(flag)


class PatchNR:
    """R(x) per image for reconstruction: `nll(x)` -> (B,), differentiable in x.

    flow: a trained PatchFlow (its weights are frozen during `nll`: R is differentiated in x only,
    never in the weights, whatever their requires_grad). n_patches: N_p per image. seed: the position stream;
    `reset()` rewinds it. chunk_size: if set, the flow runs on chunks of that many patches
    under activation recomputation, so memory stays bounded for large N_p (one extra forward); the
    bfloat16 path is bounded already (see precision) and ignores chunk_size.
    precision: "float32" (default) runs the flow as it is, in its own dtype (float32 for the shipped
    flow; a float64 flow stays float64): exactly the behaviour without this argument. "bfloat16" runs
    the couplings' dense layers (matmuls and ReLUs, forward and backward) in bfloat16 on a snapshot of
    the weights cast once here (later changes to flow's weights are not seen; make a new PatchNR), and
    keeps the patches, affine updates, log-determinant sums and the Gaussian log-density in float32;
    it computes each patch's gradient with its log-density, in blocks of rows, and keeps the activation
    buffers of one block between calls (about 180 MB with the shipped flow, whatever N_p;
    `release_memory()` frees them). Worth it only where bfloat16 matmuls are native (AVX-512-BF16 /
    AMX CPUs, CUDA); elsewhere a RuntimeWarning says so.
    """

    def __init__(
        self,
        flow: PatchFlow,
        n_patches: int = 40_000,
        reduction: str = "mean",
        seed: int = 0,
        chunk_size: int | None = None,
        precision: str = "float32",
    ):
        if not isinstance(flow, PatchFlow):
            raise TypeError(f"flow must be a PatchFlow, got {type(flow).__name__}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.flow = flow
        self.n_patches = check_int("n_patches", n_patches, 1)
        self.reduction = reduction
        self.seed = check_int("seed", seed, 0)
        self.chunk_size = None if chunk_size is None else check_int("chunk_size", chunk_size, 1)
        if not isinstance(precision, str) or precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self._low = Bfloat16FlowLogProb(flow) if precision == "bfloat16" else None
        self.patch_size = flow.patch_size
        self.channels = flow.channels
        self._generator = torch.Generator()
        self.reset()

    def reset(self) -> None:
        """Rewind the patch-position stream to `seed`."""
        self._generator.manual_seed(self.seed)

    def _check_image(self, x) -> None:
        check_patch_image(x, self.patch_size, self.channels, "flow")

    def draw_positions(self, batch: int, height: int, width: int) -> torch.Tensor:
        """(batch, n_patches, 2) int64 top-left corners, uniform over the valid ones (CPU)."""
        return random_positions(self._generator, batch, self.n_patches, height, width, self.patch_size)

    def release_memory(self) -> None:
        """precision="bfloat16": free the activation buffers kept between calls (no-op for float32)."""
        if self._low is not None:
            self._low.release()

    def _log_prob(self, patches: torch.Tensor) -> torch.Tensor:
        if self._low is not None:
            return self._low.log_prob(patches)
        with frozen_weights(self.flow):  # also when the checkpoint recomputes it in the backward pass
            return self.flow.log_prob(patches)

    def _patch_nll(self, patches: torch.Tensor) -> torch.Tensor:
        # The bfloat16 path holds one block's activations whatever N_p: recomputation would only cost time.
        if self._low is not None or self.chunk_size is None or patches.shape[0] <= self.chunk_size:
            return -self._log_prob(patches)
        chunks = patches.split(self.chunk_size)
        return torch.cat([_recompute(self._log_prob, c, use_reentrant=False) for c in chunks]).neg()

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """R(x) for each image of x (B, C, H, W): shape (B,), in x's dtype. New patches every call."""
        self._check_image(x)
        B, _, H, W = x.shape
        positions = self.draw_positions(B, H, W).to(x.device)
        patches = extract_patches_at(x, positions, self.patch_size)  # (B, N_p, d)
        per_patch = self._patch_nll(patches.reshape(B * self.n_patches, -1)).reshape(B, self.n_patches)
        per_image = per_patch.mean(1) if self.reduction == "mean" else per_patch.sum(1)
        return per_image.to(x.dtype)

    __call__ = nll
