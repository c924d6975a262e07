"""The `patchreg` command line.

Every module in this package may define `register(subparsers)` to add a top-level command
and/or `register_train(train_subparsers)` to add a `patchreg train KIND`; they are found
automatically, so areas (gmm, flow, charts, topology, ...) each own their own module.
Each parser sets `func=callable(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__

    parser = argparse.ArgumentParser(prog="patchreg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"patchreg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = commands.add_parser("train", help="train a patch prior or a chart mixture")
    train_kinds = train.add_subparsers(dest="kind", metavar="KIND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(commands)
        if hasattr(module, "register_train"):
            module.register_train(train_kinds)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"patchreg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
