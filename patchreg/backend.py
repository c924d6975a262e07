"""Backend switch: run every op through the compiled extension or the pure-PyTorch reference.

The default is "extension" when the compiled library could be loaded, else "reference".
The environment variable PATCHREG_BACKEND=reference|extension sets the starting value;
`set_backend` and the `use_backend` context manager change it at run time.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from . import _extension

BACKENDS = ("extension", "reference")

_state = {"backend": None}


def _initial_backend() -> str:
    requested = os.environ.get("PATCHREG_BACKEND", "").strip().lower()
    if requested and requested not in BACKENDS:
        raise ValueError(f"PATCHREG_BACKEND must be one of {BACKENDS}, got {requested!r}")
    if requested == "reference":
        return "reference"
    if _extension.load():
        return "extension"
    if requested == "extension":
        raise RuntimeError(
            "PATCHREG_BACKEND=extension but the compiled extension could not be loaded: "
            f"{_extension.load_error()}"
        )
    return "reference"


def get_backend() -> str:
    """The backend ops use now: "extension" or "reference"."""
    if _state["backend"] is None:
        _state["backend"] = _initial_backend()
    return _state["backend"]


def set_backend(name: str) -> None:
    """Make every patchreg op use `name` ("extension" or "reference")."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "extension" and not _extension.load():
        raise RuntimeError(f"the compiled extension is not available: {_extension.load_error()}")
    _state["backend"] = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: `with use_backend("reference"): ...` runs the block on that backend."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        _state["backend"] = previous


def use_extension() -> bool:
    """True when ops should call the compiled kernels."""
    return get_backend() == "extension"


def extension_available() -> bool:
    return _extension.load()
