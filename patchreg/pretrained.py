"""Ready-made checkpoints shipped inside the package, loadable by name: `pretrained:NAME`.

`resolve_checkpoint("pretrained:gmm")` gives the path of the shipped file; any other string is
returned as a path, so a command-line `--checkpoint` takes either. The files live in
patchreg/pretrained_weights/ (installed as package data); a package built without them raises
FileNotFoundError naming the missing weights.

The names, their files and the one command that retrains each (on the train400 images,
6 x 6 gray patches):

- pretrained:gmm    gmm_p6.safetensors    EPLL's Gaussian mixture (`--prior epll`), 200 components:
    patchreg train gmm --images train400:train --patch-size 6 --components 200 --patches-per-iter 2000000 --iters 40 --seed 0 --out gmm_p6.safetensors
    (refitted 2026-12-05 with the mended initialisation: 200 distinct components; the file it replaces,
    whose initialisation left 154 components as exact twins, is bench/results/gmm_k200_p6_twins_it40.safetensors)
- pretrained:flow   flow_p6.safetensors   PatchNR's normalizing flow (`--prior patchnr`):
    patchreg train flow --images train400:train --patch-size 6 --steps 250000 --seed 0 --out flow_p6.safetensors
    (the shipped file stopped early, at the step its header records: see bench/RESULTS.md)
- pretrained:charts charts_p6.safetensors the patch chart mixture (`--prior charts`), 32 FIF charts of dimension 8:
    patchreg train charts --data train400:train --patch-size 6 --family fif --charts 32 --latent-dim 8 --steps 2000 --batch-size 1024 --train-sigma 0.1 --seed 0 --out charts_p6.safetensors

Copy a retrained file into patchreg/pretrained_weights/ under the name above to ship it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PREFIX", "PRETRAINED", "RETRAIN_COMMANDS", "WEIGHTS_DIR", "available", "resolve_checkpoint"]

PREFIX = "pretrained:"
WEIGHTS_DIR = Path(__file__).resolve().parent / "pretrained_weights"
# name -> file in WEIGHTS_DIR
PRETRAINED = {
    "gmm": "gmm_p6.safetensors",
    "flow": "flow_p6.safetensors",
    "charts": "charts_p6.safetensors",
}
RETRAIN_COMMANDS = {
    "gmm": "patchreg train gmm --images train400:train --patch-size 6 --components 200 "
           "--patches-per-iter 2000000 --iters 40 --seed 0 --out gmm_p6.safetensors",
    "flow": "patchreg train flow --images train400:train --patch-size 6 --steps 250000 --seed 0 --out flow_p6.safetensors",
    "charts": "patchreg train charts --data train400:train --patch-size 6 --family fif --charts 32 "
              "--latent-dim 8 --steps 2000 --batch-size 1024 --train-sigma 0.1 --seed 0 --out charts_p6.safetensors",
}


def _known() -> str:
    return ", ".join(PREFIX + name for name in PRETRAINED)


def resolve_checkpoint(spec) -> Path:
    """The checkpoint file that `spec` names: "pretrained:NAME" -> the shipped file, else Path(spec).

    Raises ValueError for an unknown pretrained name (the message lists the known ones) and
    FileNotFoundError when a known name's file is not installed. A plain path is returned as
    is, without checking that it exists.
    """
    if isinstance(spec, os.PathLike):
        return Path(spec)
    if not isinstance(spec, str):
        raise TypeError(f"checkpoint must be a path or {PREFIX}NAME, got {type(spec).__name__}")
    if not spec:
        raise ValueError(f"checkpoint must be a path or {PREFIX}NAME, got an empty string")
    if not spec.startswith(PREFIX):
        return Path(spec)
    name = spec[len(PREFIX):]
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained checkpoint {spec!r}; known: {_known()}")
    path = WEIGHTS_DIR / PRETRAINED[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"{spec}: {path} is missing; this patchreg was installed without its pretrained weights. "
            f"Retrain it with `{RETRAIN_COMMANDS[name]}` and pass the file as a path "
            f"(or copy it to {WEIGHTS_DIR})"
        )
    return path


def available() -> dict[str, Path]:
    """{name: path} of the pretrained checkpoints installed with this package (files that exist)."""
    return {name: WEIGHTS_DIR / file for name, file in PRETRAINED.items() if (WEIGHTS_DIR / file).is_file()}
