"""`python -m patchreg.info`: version, torch, compiled backends (CPU, CUDA and archs), threads."""

from __future__ import annotations

import json
import sys

import torch

from . import _extension
from ._version import __version__
from .backend import get_backend


def _amx_charts() -> bool:
    """Whether the chart kernel's precision="bfloat16" (AMX) loops run here."""
    from .ops.charts import charts_bf16_supported

    return charts_bf16_supported()


def collect() -> dict:
    loaded = _extension.load()
    built = _extension.build_info() if loaded else {}
    return {
        "patchreg": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "extension_loaded": loaded,
        "extension_source": _extension.how_loaded(),
        "extension_error": None if loaded else _extension.load_error(),
        "compiled_backends": (["CPU"] + (["CUDA"] if built.get("cuda") else [])) if loaded else [],
        "cuda_archs": built.get("cuda_archs", ""),
        "openmp": built.get("openmp"),
        "avx2": built.get("avx2"),
        "avx512": built.get("avx512"),
        "amx_bf16_charts": _amx_charts() if loaded else False,
        "threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "backend": get_backend(),
    }


def main(argv: list[str] | None = None) -> int:
    info = collect()
    if argv and "--json" in argv:
        print(json.dumps(info, indent=2))
        return 0
    print(f"patchreg {info['patchreg']}")
    print(f"torch {info['torch']} (CUDA {info['torch_cuda'] or 'none'})")
    if info["extension_loaded"]:
        backends = ", ".join(info["compiled_backends"])
        archs = f" (archs {info['cuda_archs']})" if info["cuda_archs"] else ""
        print(f"compiled kernels: {backends}{archs} [{info['extension_source']}]")
    else:
        print(f"compiled kernels: none ({info['extension_error']})")
    print(f"OpenMP: {info['openmp']}, threads: {info['threads']}, AVX2/FMA GMM loops: {info['avx2']}, "
          f"AVX-512 chart loops: {info['avx512']}, AMX bfloat16 chart loops: {info['amx_bf16_charts']}")
    print(f"CUDA device: {info['cuda_device'] or 'none visible'}")
    print(f"backend in use: {info['backend']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
