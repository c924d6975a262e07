"""PatchFlow: the normalizing flow on p x p patches of PatchNR (Altekrueger et al., 2023).

A `CouplingFlow` (GLOW affine couplings with soft-clamped log-scales, each followed by a fixed
random permutation or a learned LU-parametrised linear map) maps a patch x in R^d, d = C p^2,
to z = T(x) with a standard normal latent, so

    log p(x) = -1/2 ||T(x)||^2 - d/2 log(2 pi) + log|det dT/dx|.

Training is maximum likelihood with Adam on patches streamed from images (`fit`), with a
progress bar, a NaN guard and atomic, resumable checkpoints (`patchreg.io`, kind "flow").
Defaults are the paper's: 6x6 patches, 5 blocks, 512 hidden units, clamp 1.6, lr 1e-4, batch 32.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .. import io
from .._checks import check_int
from .coupling import MIXINGS, CouplingFlow
from .flow_training import train_flow

__all__ = ["PatchFlow"]

CHECKPOINT_KIND = "flow"
_MODEL_PREFIX = "model."


class PatchFlow(nn.Module):
    """Density of p x p patches (C channels) by a GLOW coupling flow.

    patch_size, channels: patches are vectors of d = channels * patch_size^2 entries in the
    element order of `patchreg.extract_patches` / `extract_patches_at`.
    n_blocks, hidden, clamp, mixing ("permutation" | "lu"): see `patchreg.priors.coupling`.
    seed: initialises the weights without touching the global torch RNG. Subnet output layers
    start at zero, so an untrained flow is the identity map (a standard normal density).
    """

    def __init__(
        self,
        patch_size: int = 6,
        n_blocks: int = 5,
        hidden: int = 512,
        clamp: float = 1.6,
        mixing: str = "permutation",
        channels: int = 1,
        seed: int = 0,
    ):
        super().__init__()
        self.patch_size = check_int("patch_size", patch_size, 1)
        self.channels = check_int("channels", channels, 1)
        self.dim = self.channels * self.patch_size**2
        if self.dim < 2:
            raise ValueError(f"a patch needs at least 2 entries to split, got channels*patch_size^2={self.dim}")
        if mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {MIXINGS}, got {mixing!r}")
        self.config = {
            "patch_size": self.patch_size,
            "channels": self.channels,
            "n_blocks": check_int("n_blocks", n_blocks, 1),
            "hidden": check_int("hidden", hidden, 1),
            "clamp": float(clamp),
            "mixing": mixing,
            "seed": check_int("seed", seed, 0),
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = CouplingFlow(self.dim, n_blocks, hidden, clamp, mixing)
        self.validation_history: list[tuple[int, float]] = []  # filled by fit(validation=...)

    # --- density --------------------------------------------------------------------------------

    def _check_patches(self, patches) -> torch.Tensor:
        if not isinstance(patches, torch.Tensor):
            raise TypeError(f"patches must be a torch.Tensor, got {type(patches).__name__}")
        if patches.dim() != 2 or patches.shape[1] != self.dim:
            raise ValueError(
                f"patches must have shape (N, {self.dim}) for {self.channels}-channel "
                f"{self.patch_size}x{self.patch_size} patches, got {tuple(patches.shape)}"
            )
        if not patches.is_floating_point():
            raise TypeError(f"patches.dtype must be floating point, got {patches.dtype}")
        return patches.to(self._dtype())

    def _dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def forward(self, patches: torch.Tensor):
        """Latent z = T(x) (N, d) and log|det dT/dx| (N,). Patches are cast to the flow's dtype."""
        return self.net(self._check_patches(patches))

    def log_prob(self, patches: torch.Tensor) -> torch.Tensor:
        """Exact log-density (N,) of patches (N, d), in nats."""
        z, logdet = self(patches)
        return -0.5 * (z * z).sum(1) - 0.5 * self.dim * math.log(2 * math.pi) + logdet

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """n patches (n, d) drawn as T^-1(temperature * z), z ~ N(0, I) from `generator` (CPU)."""
        check_int("n", n, 0)
        z = torch.randn(n, self.dim, generator=generator, dtype=self._dtype())
        z = z.to(next(self.net.parameters()).device)
        x, _ = self.net.inverse(temperature * z)
        return x

    # --- training ---------------------------------------------------------------------------------

    def fit(
        self,
        sampler,
        steps: int,
        lr: float = 1e-4,
        batch_size: int = 32,
        checkpoint: str | Path | None = None,
        checkpoint_every: int = 1000,
        resume: bool = False,
        progress: bool = True,
        log_every: int = 100,
        validation: torch.Tensor | None = None,
        val_every: int = 5000,
        patience: int | None = None,
        max_steps: int | None = None,
    ) -> list[tuple[int, float]]:
        """Maximum-likelihood training: Adam on the mean NLL of `sampler.sample(batch_size)`.

        sampler: any object with `sample(n) -> (n, d) tensor` (e.g. `patchreg.data.PatchSampler`);
        resuming also needs `reset()` to rewind it to its seed. steps: the total step count to
        reach (a resumed run continues from the checkpoint's step up to `steps`).
        checkpoint: file written atomically every `checkpoint_every` steps and at the end, with
        the weights, Adam's moments and the step. resume=True restarts from that file when it
        exists: the sampler is rewound and replayed to the saved step, so the continuation equals
        the uninterrupted run. Stops with FloatingPointError on a non-finite loss.
        validation: held-out patches (M, d); their mean NLL is measured on the starting weights, every
        `val_every` steps and at the end, into self.validation_history [(step, NLL)] (kept in the checkpoint). patience: with
        validation, `steps` becomes a minimum and training goes on until the best validation NLL is
        `patience` steps old, at most to `max_steps` (required): "at least `steps`, or until the
        validation NLL has not improved for `patience` steps, whichever is later".
        Returns [(step, mean NLL per patch over the last log_every steps)].
        """
        return train_flow(
            self, sampler, steps, lr=lr, batch_size=batch_size, checkpoint=checkpoint,
            checkpoint_every=checkpoint_every, resume=resume, progress=progress, log_every=log_every,
            validation=validation, val_every=val_every, patience=patience, max_steps=max_steps,
        )

    # --- files -----------------------------------------------------------------------------------

    def model_tensors(self) -> dict[str, torch.Tensor]:
        return {_MODEL_PREFIX + k: v for k, v in self.state_dict().items()}

    def save(self, path, extra_tensors: dict | None = None, extra_config: dict | None = None) -> Path:
        """Atomic safetensors checkpoint (kind "flow") with the architecture in its JSON header."""
        tensors = {**self.model_tensors(), **(extra_tensors or {})}
        return io.save_checkpoint(path, CHECKPOINT_KIND, tensors, {**self.config, **(extra_config or {})})

    @classmethod
    def load(cls, path, patch_size: int | None = None, map_location="cpu") -> "PatchFlow":
        """Rebuild a flow from `save`/`fit` output. patch_size, if given, must match the file's."""
        tensors, header = io.load_checkpoint(path, CHECKPOINT_KIND)
        try:
            config = {k: header[k] for k in ("patch_size", "channels", "n_blocks", "hidden", "clamp", "mixing", "seed")}
        except KeyError as exc:
            raise ValueError(f"{path} is a flow checkpoint without the architecture key {exc}") from None
        if patch_size is not None and patch_size != config["patch_size"]:
            raise ValueError(
                f"{path} holds a flow for {config['patch_size']}x{config['patch_size']} patches, "
                f"but patch_size={patch_size} was requested"
            )
        flow = cls(**config)
        state = {k[len(_MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_MODEL_PREFIX)}
        floats = [v.dtype for v in state.values() if v.is_floating_point()]
        flow.to(floats[0] if floats else torch.float32)  # float64 files stay float64
        try:
            flow.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{path}: weights do not fit the architecture in its header ({exc})") from None
        return flow.to(map_location)
