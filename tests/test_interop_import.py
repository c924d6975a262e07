"""patchreg.interop.deepinv without DeepInverse: a clear ImportError; patchreg itself never imports deepinv."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


def test_import_without_deepinv_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepinv", None)  # an absent package
    monkeypatch.setitem(sys.modules, "deepinv.optim", None)
    monkeypatch.delitem(sys.modules, "patchreg.interop.deepinv", raising=False)
    with pytest.raises(ImportError, match="pip install deepinv"):
        importlib.import_module("patchreg.interop.deepinv")
    monkeypatch.delitem(sys.modules, "patchreg.interop.deepinv", raising=False)


def test_patchreg_does_not_import_deepinv():
    code = "import sys, patchreg, patchreg.interop, patchreg.cli; patchreg.cli.build_parser(); print('deepinv' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
