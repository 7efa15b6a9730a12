"""`python -m smallmind ...` / `smallmind ...`: the command line.

Every failure the user can cause ends as one line on stderr and a non-zero exit."""
from __future__ import annotations

import argparse
import sys

from smallmind import __version__
from smallmind.errors import SmallMindError


def cmd_info(args: argparse.Namespace) -> int:
    from smallmind import kernels

    print(f"smallmind {__version__}")
    print(f"isa: {kernels.current_isa()}")
    print(f"available isas: {', '.join(kernels.available_isas())}")
    print(f"threads: {kernels.get_threads()} (usable cores: {kernels.usable_cores()})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smallmind", description="Small quantized LLMs on the CPU.")
    parser.add_argument("--version", action="version", version=f"smallmind {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print version, instruction sets and threads")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SmallMindError as e:
        print(f"smallmind: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
