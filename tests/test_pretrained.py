"""patchreg.pretrained: checkpoints shipped with the package, loadable as "pretrained:NAME"."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import patchreg
import patchreg.pretrained as pretrained
from patchreg.pretrained import PRETRAINED, RETRAIN_COMMANDS, available, resolve_checkpoint

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def weights(tmp_path, monkeypatch):
    """An empty weights folder in place of the package's."""
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", folder)
    return folder


def test_names_map_to_the_documented_files():
    assert PRETRAINED == {"gmm": "gmm_p6.safetensors", "flow": "flow_p6.safetensors",
                          "charts": "charts_p6.safetensors"}
    assert pretrained.WEIGHTS_DIR == Path(patchreg.__file__).resolve().parent / "pretrained_weights"


@pytest.mark.parametrize("spec", ["model.safetensors", "some/dir/gmm.safetensors", "/abs/flow.safetensors",
                                  "gmm", "pretrained_gmm"])
def test_other_strings_are_paths_returned_as_is(spec, weights):
    assert resolve_checkpoint(spec) == Path(spec)
    assert resolve_checkpoint(Path(spec)) == Path(spec)


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_installed_names_resolve_to_the_shipped_file(name, weights):
    (weights / PRETRAINED[name]).write_bytes(b"weights")
    assert resolve_checkpoint(f"pretrained:{name}") == weights / PRETRAINED[name]


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_a_missing_shipped_file_says_which_name_and_how_to_retrain(name, weights):
    with pytest.raises(FileNotFoundError) as info:
        resolve_checkpoint(f"pretrained:{name}")
    message = str(info.value)
    assert f"pretrained:{name}" in message and PRETRAINED[name] in message
    assert "installed without its pretrained weights" in message
    assert RETRAIN_COMMANDS[name] in message


@pytest.mark.parametrize("spec", ["pretrained:", "pretrained:GMM", "pretrained:epll", "pretrained:gmm_p6"])
def test_unknown_names_list_the_known_ones(spec, weights):
    with pytest.raises(ValueError) as info:
        resolve_checkpoint(spec)
    message = str(info.value)
    assert repr(spec) in message
    for name in PRETRAINED:
        assert f"pretrained:{name}" in message


def test_bad_specs_are_rejected():
    with pytest.raises(ValueError, match="empty"):
        resolve_checkpoint("")
    with pytest.raises(TypeError, match="int"):
        resolve_checkpoint(3)


def test_available_lists_only_installed_files(weights):
    assert available() == {}
    (weights / PRETRAINED["flow"]).write_bytes(b"weights")
    assert available() == {"flow": weights / PRETRAINED["flow"]}


def test_docstring_gives_one_retrain_command_per_name():
    doc = " ".join(pretrained.__doc__.split())
    for name, command in RETRAIN_COMMANDS.items():
        assert f"pretrained:{name}" in doc
        assert command in doc, command
        assert command.endswith(f"--out {PRETRAINED[name]}")


@pytest.mark.parametrize("name", sorted(RETRAIN_COMMANDS))
def test_retrain_commands_parse_with_the_real_command_line(name):
    from patchreg.cli import build_parser

    argv = shlex.split(RETRAIN_COMMANDS[name])
    assert argv[:3] == ["patchreg", "train", name]
    args = build_parser().parse_args(argv[1:])  # argparse exits (SystemExit) on an unknown option
    assert args.out == PRETRAINED[name]


def test_the_weights_folder_is_shipped_as_package_data():
    folder = ROOT / "patchreg" / "pretrained_weights"
    assert (folder / "README.md").is_file()
    for file in PRETRAINED.values():
        assert file in (folder / "README.md").read_text()
    setup = (ROOT / "setup.py").read_text()
    package_data = re.search(r"package_data=\{(.*?)\}", setup, re.S)
    assert package_data is not None
    assert '"pretrained_weights/*.safetensors"' in package_data.group(1)
