"""Builds patchreg._C (C++ CPU kernels, plus CUDA kernels when torch and the toolkit allow).

Install with `pip install --no-build-isolation .` (or `-e .`) so the kernels are compiled against
the torch that will run them. Overrides: PATCHREG_NO_CUDA=1, PATCHREG_FORCE_CUDA=1,
TORCH_CUDA_ARCH_LIST (default "8.0;9.0" when no GPU is visible).
"""

import importlib.util
import json
import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def _load_toolchain():
    spec = importlib.util.spec_from_file_location("_toolchain", ROOT / "patchreg" / "_toolchain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


toolchain = _load_toolchain()
# Must be set before torch.utils.cpp_extension is imported (it reads CUDA_HOME at import).
if toolchain.find_cuda_home() and not os.environ.get("CUDA_HOME"):
    os.environ["CUDA_HOME"] = toolchain.find_cuda_home()

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def read_sources():
    names = []
    for line in (CSRC / "sources.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def make_extension():
    with_cuda, why = toolchain.want_cuda(torch.version.cuda)
    print(f"patchreg: building CUDA kernels: {with_cuda} ({why})")
    names = read_sources()
    sources = [f"csrc/{n}" for n in names if with_cuda or not n.endswith(".cu")]
    cxx = ["-O3", "-fopenmp", "-DPATCHREG_PYTHON_MODULE"]
    info = {"torch_version": torch.__version__, "cuda": with_cuda, "cuda_archs": ""}
    if not with_cuda:
        ext = CppExtension("patchreg._C", sources, extra_compile_args={"cxx": cxx},
                           extra_link_args=["-fopenmp"])
        return ext, info
    archs = toolchain.cuda_arch_list(torch.cuda.is_available())
    if archs:
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    info["cuda_archs"] = archs or "visible GPUs"
    # The arch list is only stringified in registration.cpp (nvcc would split it at commas).
    cxx += ["-DPATCHREG_WITH_CUDA", toolchain.archs_define(archs)]
    ext = CUDAExtension(
        "patchreg._C",
        sources,
        include_dirs=toolchain.cuda_header_shim(os.environ.get("CUDA_HOME"), ROOT / "build" / "cuda_header_shim"),
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo", "-DPATCHREG_WITH_CUDA"]},
        extra_link_args=["-fopenmp"],
    )
    return ext, info


class BuildPyWithSources(build_py):
    """Ships csrc/ inside the package (patchreg/_csrc) so a wheel can JIT-compile on a torch mismatch."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "patchreg" / "_csrc"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(CSRC, target, ignore=shutil.ignore_patterns("*.o", "build*"))


ext, build_info = make_extension()
(ROOT / "patchreg" / "_build_info.json").write_text(json.dumps(build_info, indent=2) + "\n")

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True), "build_py": BuildPyWithSources},
    # pretrained_weights/: the checkpoints behind `pretrained:NAME` (patchreg/pretrained.py).
    package_data={
        "patchreg": ["_build_info.json", "pretrained_weights/*.safetensors", "pretrained_weights/README.md"],
    },
)
