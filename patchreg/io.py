"""Safe files: atomic writes, and checkpoints as safetensors + a JSON header (no pickle).

A checkpoint holds tensors and a JSON config with at least {"kind": ..., "format": 1}.
Loading checks the kind, so a GMM file handed to a flow loader is a clear error.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
_META_KEY = "patchreg"


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save_checkpoint(path, kind: str, tensors: dict[str, torch.Tensor], config: dict | None = None) -> Path:
    """Atomically write `tensors` (CPU-copied, contiguous) and `config` (JSON) to a .safetensors file."""
    from safetensors.torch import save

    header = {"kind": kind, "format": FORMAT_VERSION, **(config or {})}
    data = save(
        {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
        metadata={_META_KEY: json.dumps(header, default=_jsonable)},
    )
    return atomic_write_bytes(path, data)


def load_checkpoint(path, kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint; `kind` (if given) must match the stored kind. Returns (tensors, config)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    raw = path.read_bytes()
    try:
        tensors = load(raw)
        meta = _read_metadata(raw)
        header = json.loads(meta[_META_KEY])
    except (SafetensorError, KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{path} is corrupted or not a patchreg checkpoint ({exc})") from None
    if not isinstance(header, dict) or "kind" not in header:
        raise ValueError(f"{path} is not a patchreg checkpoint (no 'kind' in its header)")
    if kind is not None and header["kind"] != kind:
        raise ValueError(f"{path} holds a {header['kind']!r} checkpoint, expected {kind!r}")
    return tensors, header


def _read_metadata(raw: bytes) -> dict:
    """The __metadata__ block of a safetensors byte string."""
    n = int.from_bytes(raw[:8], "little")
    if n <= 0 or n > len(raw) - 8:
        raise ValueError("bad safetensors header length")
    return json.loads(raw[8 : 8 + n].decode("utf-8")).get("__metadata__") or {}
