"""`patchreg info`: what was compiled and what runs."""

from .. import info


def register(commands) -> None:
    parser = commands.add_parser("info", help="version, torch, compiled backends, threads")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=lambda args: info.main(["--json"] if args.json else []))
