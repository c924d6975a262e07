"""How the compiled library is found: prebuilt, JIT on a torch mismatch, reference fallback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import patchreg
from patchreg import _extension, _toolchain

ROOT = Path(__file__).resolve().parents[1]


def test_prebuilt_used_only_for_the_same_torch():
    assert _extension.prebuilt_matches({"torch_version": torch.__version__})
    assert not _extension.prebuilt_matches({"torch_version": "1.0.0"})
    assert not _extension.prebuilt_matches(None)


def test_no_compiler_falls_back_to_reference_with_one_warning(tmp_path):
    """Prebuilt library ignored (as after a build against another torch) and no compiler: the
    library still imports, runs on the reference path and says so once."""
    script = (
        "import warnings, torch\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import patchreg\n"
        "    b = patchreg.get_backend()\n"
        "    y = patchreg.extract_patches(torch.rand(1, 1, 6, 6), 3)\n"
        "    patchreg.get_backend()\n"
        "msgs = [str(x.message) for x in w if 'patchreg' in str(x.message)]\n"
        "print(b, len(msgs), tuple(y.shape)); print(msgs[0] if msgs else '')\n"
    )
    env = {**os.environ, "PATCHREG_FORCE_JIT": "1", "CXX": str(tmp_path / "no-such-compiler"),
           "TORCH_EXTENSIONS_DIR": str(tmp_path), "PATCHREG_NO_CUDA": "1"}
    env.pop("PATCHREG_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    first, message = out.stdout.strip().splitlines()[-2:]
    assert first == "reference 1 (1, 16, 9)"
    assert "using the pure-PyTorch reference path" in message


def test_info_reports_backends():
    out = subprocess.run([sys.executable, "-m", "patchreg.info", "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["torch"] == torch.__version__
    if patchreg.extension_available():
        assert "CPU" in info["compiled_backends"]
        assert info["openmp"] is True


def test_cuda_decision_ignores_gpu_visibility(monkeypatch):
    monkeypatch.delenv("PATCHREG_NO_CUDA", raising=False)
    monkeypatch.delenv("PATCHREG_FORCE_CUDA", raising=False)
    assert _toolchain.want_cuda(None) == (False, "torch is a CPU-only build")
    monkeypatch.setenv("PATCHREG_NO_CUDA", "1")
    assert _toolchain.want_cuda("13.0")[0] is False
    monkeypatch.delenv("PATCHREG_NO_CUDA")
    monkeypatch.setenv("PATCHREG_FORCE_CUDA", "1")
    assert _toolchain.want_cuda(None)[0] is True


def test_arch_list_default_without_gpu(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    assert _toolchain.cuda_arch_list(gpu_visible=False) == "8.0;9.0"
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0a")
    assert _toolchain.cuda_arch_list(gpu_visible=False) == "9.0a"
    assert _toolchain.archs_define("8.0;9.0") == "-DPATCHREG_CUDA_ARCHS=8.0,9.0"


@pytest.mark.skipif(not Path("/usr/local/cuda/bin/nvcc").exists(), reason="no CUDA toolkit here")
def test_cuda_home_resolves_to_the_toolkit(monkeypatch):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    home = Path(_toolchain.find_cuda_home())
    assert (home / "include" / "cuda_runtime.h").is_file()
