"""Loading the compiled kernels: the prebuilt library, else a cached JIT build, else none.

The prebuilt `patchreg._C` is used only when it was built against the torch that runs it
(recorded in `_build_info.json` at build time), because a library built against another
torch fails with undefined symbols or, worse, registers ops with a mismatched ABI. Otherwise
the same sources are compiled on first import with `torch.utils.cpp_extension.load` (cached
by torch in TORCH_EXTENSIONS_DIR). If that fails too, one warning is issued and the library
runs on the pure-PyTorch reference path.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import warnings
from pathlib import Path

import torch

from . import _toolchain

_PKG_DIR = Path(__file__).resolve().parent
_state: dict = {"loaded": None, "error": None, "how": None}
_on_load: list = []


def on_load(register) -> None:
    """Run `register()` once the library is loaded (fake/autograd registrations need the ops)."""
    _on_load.append(register)
    if _state["loaded"]:
        register()


def source_dir() -> Path | None:
    """Folder holding the C++/CUDA sources: shipped in the package, or the repo's csrc/."""
    for candidate in (_PKG_DIR / "_csrc", _PKG_DIR.parent / "csrc"):
        if (candidate / "sources.txt").is_file():
            return candidate
    return None


def read_sources(folder: Path) -> tuple[list[Path], list[Path]]:
    """The single list of sources (csrc/sources.txt) that setup.py and CMake also read."""
    cpp, cuda = [], []
    for line in (folder / "sources.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            (cuda if line.endswith(".cu") else cpp).append(folder / line)
    return cpp, cuda


def _build_info() -> dict | None:
    path = _PKG_DIR / "_build_info.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def prebuilt_matches(info: dict | None) -> bool:
    """A prebuilt library is usable only if it was built against this very torch."""
    return info is not None and info.get("torch_version") == torch.__version__


def _load_prebuilt() -> bool:
    if os.environ.get("PATCHREG_FORCE_JIT") == "1":  # testing / forcing a rebuild
        return False
    info = _build_info()
    if not prebuilt_matches(info):
        if info is not None:
            _state["error"] = f"prebuilt library is for torch {info.get('torch_version')}, this is {torch.__version__}"
        return False
    try:
        importlib.import_module("patchreg._C")
    except ImportError as exc:  # e.g. undefined symbols
        _state["error"] = f"prebuilt library failed to import: {exc}"
        return False
    _state["how"] = "prebuilt"
    return True


def _load_jit() -> bool:
    if os.environ.get("PATCHREG_NO_JIT") == "1":
        _state["error"] = _state["error"] or "no prebuilt library and PATCHREG_NO_JIT=1"
        return False
    folder = source_dir()
    if folder is None:
        _state["error"] = "no prebuilt library and no C++ sources to compile"
        return False
    with_cuda, _ = _toolchain.want_cuda(torch.version.cuda)
    cuda_home = _toolchain.find_cuda_home()
    if with_cuda and cuda_home and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = cuda_home
    from torch.utils import cpp_extension

    if with_cuda:
        cpp_extension.CUDA_HOME = os.environ.get("CUDA_HOME", cpp_extension.CUDA_HOME)
        archs = _toolchain.cuda_arch_list(torch.cuda.is_available())
        if archs:
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", archs)
    cpp, cuda = read_sources(folder)
    sources = [str(s) for s in cpp + (cuda if with_cuda else [])]
    cflags = ["-O3", "-fopenmp"]
    if with_cuda:
        cflags += ["-DPATCHREG_WITH_CUDA", _toolchain.archs_define(os.environ.get("TORCH_CUDA_ARCH_LIST", ""))]
    print(
        f"patchreg: compiling kernels for torch {torch.__version__} "
        f"({'CPU + CUDA' if with_cuda else 'CPU'}); this happens once and is cached",
        file=sys.stderr,
    )
    try:
        cpp_extension.load(
            name="patchreg_jit_" + torch.__version__.replace(".", "_").replace("+", "_"),
            sources=sources,
            extra_cflags=cflags,
            extra_ldflags=["-fopenmp"],
            extra_cuda_cflags=["-O3", "-DPATCHREG_WITH_CUDA"] if with_cuda else None,
            extra_include_paths=_jit_cuda_includes() if with_cuda else None,
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=False,
        )
    except Exception as exc:  # compiler missing, build error, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _state["error"] = f"JIT compilation failed: {first[:240]}{'...' if len(first) > 240 else ''}"
        return False
    _state["how"] = "jit"
    return True


def _jit_cuda_includes() -> list[str]:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    shim = cache / "patchreg" / f"cuda_header_shim_{torch.version.cuda}"
    return _toolchain.cuda_header_shim(os.environ.get("CUDA_HOME"), shim)


def load() -> bool:
    """Load the kernels once; True when torch.ops.patchreg is usable."""
    if _state["loaded"] is None:
        ok = _load_prebuilt() or _load_jit()
        _state["loaded"] = ok
        if ok:
            for register in _on_load:
                register()
        if not ok:
            warnings.warn(
                "patchreg: compiled kernels unavailable, using the pure-PyTorch reference path "
                f"({_state['error']})",
                RuntimeWarning,
                stacklevel=3,
            )
    return _state["loaded"]


def load_error() -> str | None:
    return _state["error"]


def how_loaded() -> str | None:
    """"prebuilt", "jit" or None."""
    return _state["how"]


def build_info() -> dict:
    """What the loaded library was compiled with (from the library itself)."""
    if not load():
        return {}
    return json.loads(torch.ops.patchreg.build_info())
