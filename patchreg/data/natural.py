"""The natural gray photographs of the project: train400 (BSD crops) with its fixed split, and Set12.

Split of train400 (fixed by file name, never to be changed: every prior is trained on "train" and
every hyper-parameter tuned on "validation"):
- "validation": the 40 files whose number is a multiple of 10 (test_010.png, test_020.png, ...,
  test_400.png);
- "train": the other 360 files.
Set12 (`load_set12`) is the test set: 01.png .. 12.png, seven 256x256 and five 512x512 images.

The data live outside the package (they are not ours to ship): the folder is
$PATCHREG_NATURAL_DIR if set, else ../shared/data/natural beside the repository. Missing data
raise FileNotFoundError naming both places.
"""

from __future__ import annotations

import os
from pathlib import Path

from .images import load_image

__all__ = ["NATURAL_SPLITS", "natural_dir", "split_names", "load_train400", "load_set12", "SET12_NAMES"]

NATURAL_SPLITS = ("train", "validation")
_N_TRAIN400 = 400
SET12_NAMES = ("cameraman", "house", "peppers", "starfish", "monarch", "airplane", "parrot", "lena",
               "barbara", "boat", "man", "couple")


def natural_dir() -> Path:
    """The folder holding train400/ and set12/ (see the module docstring)."""
    env = os.environ.get("PATCHREG_NATURAL_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "natural")
    for folder in candidates:
        if (folder / "train400").is_dir():
            return folder
    raise FileNotFoundError(
        "the natural images (train400/, set12/) were not found: set PATCHREG_NATURAL_DIR to the folder "
        f"holding them (looked in {[str(c) for c in candidates]})"
    )


def split_names(split: str) -> list[str]:
    """File names of a train400 split ("train": 360 files, "validation": 40), sorted."""
    if split not in NATURAL_SPLITS:
        raise ValueError(f"split must be one of {NATURAL_SPLITS}, got {split!r}")
    numbers = range(1, _N_TRAIN400 + 1)
    keep = (lambda i: i % 10 == 0) if split == "validation" else (lambda i: i % 10 != 0)
    return [f"test_{i:03d}.png" for i in numbers if keep(i)]


def load_train400(split: str, with_names: bool = False, root=None):
    """The images of a train400 split as float64 gray (H, W) arrays in [0, 1] (8-bit / 255)."""
    names = split_names(split)
    folder = Path(root) if root is not None else natural_dir() / "train400"
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"train400 split {split!r}: {len(missing)} files missing in {folder}, e.g. {missing[:3]}")
    images = [load_image(folder / n) for n in names]
    return (images, names) if with_names else images


def load_set12(with_names: bool = False, root=None):
    """The 12 Set12 test images (float64 gray in [0, 1]); names are the files' (01.png ...)."""
    folder = Path(root) if root is not None else natural_dir() / "set12"
    files = [folder / f"{i:02d}.png" for i in range(1, 13)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"set12: files {missing} missing in {folder}")
    images = [load_image(f) for f in files]
    return (images, [f.name for f in files]) if with_names else images
