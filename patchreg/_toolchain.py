"""Compiler settings shared by setup.py and the JIT build (no package-relative imports: setup.py
loads this file directly).

Whether to build CUDA is decided from the environment overrides, torch.version.cuda and the
toolkit on disk, never from torch.cuda.is_available() (false on GPU-less build machines).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

DEFAULT_ARCHS = "8.0;9.0"


def find_cuda_home() -> str | None:
    """CUDA_HOME/CUDA_PATH, else the toolkit that holds nvcc (following links), else /usr/local/cuda.

    torch derives CUDA_HOME from `which nvcc` without following links; with /usr/local/bin/nvcc
    that gives /usr/local, which has no lib64/libcudart, so resolve the link first.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = Path(nvcc).resolve().parent.parent
        if (home / "include" / "cuda_runtime.h").is_file():
            return str(home)
    if Path("/usr/local/cuda/bin/nvcc").is_file():
        return "/usr/local/cuda"
    return None


def nvidia_include_dirs() -> list[str]:
    """Include folders of the nvidia-* wheels (cusparse.h, cublas_v2.h for ATen's CUDA headers)."""
    dirs: list[str] = []
    for entry in sys.path:
        base = Path(entry) / "nvidia"
        if base.is_dir():
            dirs += [str(p) for p in sorted(base.glob("*/include")) if p.is_dir()]
    return list(dict.fromkeys(dirs))


def cuda_header_shim(cuda_home: str | None, shim_dir) -> list[str]:
    """One include folder with links to the wheel headers the toolkit lacks (cusparse.h, ...).

    The wheels hold a whole CUDA include tree of torch's CUDA version; put first on the path it
    would shadow the toolkit's own headers, and nvcc refuses headers of another minor version
    ("CUDA compiler and CUDA toolkit headers are incompatible"). Linking only the missing ones
    keeps the toolkit's headers in charge.
    """
    dirs = nvidia_include_dirs()
    if cuda_home is None or not dirs:
        return dirs
    toolkit = Path(cuda_home) / "include"
    shim = Path(shim_dir)
    shim.mkdir(parents=True, exist_ok=True)
    for folder in dirs:
        for entry in Path(folder).iterdir():
            link = shim / entry.name
            if not (toolkit / entry.name).exists() and not link.exists() and not link.is_symlink():
                link.symlink_to(entry.resolve())
    return [str(shim)]


def want_cuda(torch_cuda_version: str | None) -> tuple[bool, str]:
    """(build CUDA?, why) from PATCHREG_NO_CUDA / PATCHREG_FORCE_CUDA, torch and the toolkit."""
    if os.environ.get("PATCHREG_NO_CUDA") == "1":
        return False, "PATCHREG_NO_CUDA=1"
    if os.environ.get("PATCHREG_FORCE_CUDA") == "1":
        return True, "PATCHREG_FORCE_CUDA=1"
    if torch_cuda_version is None:
        return False, "torch is a CPU-only build"
    if find_cuda_home() is None:
        return False, "no CUDA toolkit (nvcc) found"
    return True, f"torch built with CUDA {torch_cuda_version} and a CUDA toolkit was found"


def cuda_arch_list(gpu_visible: bool) -> str:
    """TORCH_CUDA_ARCH_LIST if set; with no GPU visible, 8.0 and 9.0 (A100, H100/H200)."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if archs:
        return archs
    if gpu_visible:
        return ""  # torch compiles for the visible GPUs
    return DEFAULT_ARCHS


def archs_define(archs: str) -> str:
    """The arch list as a -D flag the C++ side stringifies (no quotes, no spaces, no ';')."""
    token = ",".join(a for a in archs.replace(";", " ").replace(",", " ").split() if a) or "native"
    return f"-DPATCHREG_CUDA_ARCHS={token}"
