"""The ``mhc`` command: ``mhc train``, ``mhc compare``, ``mhc report``, ``mhc bench``.

Each subcommand lives with its code and registers itself here through a
``register(subparsers)`` function that adds its parser and sets ``func``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from ._extras import MissingExtraError

# module that provides register(subparsers) -> its subcommands, in the order of `mhc --help`
_SUBCOMMAND_MODULES = {"torch_mhc.train.cli": ("train", "compare", "report"),
                       "torch_mhc.bench": ("bench",)}


def _unavailable(sub, names, error: MissingExtraError) -> None:
    """Subcommands whose module cannot be imported (an extra is missing): each one prints
    the one-line reason and exits 2."""
    def run(args: argparse.Namespace) -> int:
        print(f"mhc {args.command}: error: {error}", file=sys.stderr)
        return 2
    for name in names:
        p = sub.add_parser(name, help=f"unavailable: pip install 'torch-mhc[{error.extra}]'",
                           add_help=False,
                           prefix_chars="\0")  # every argument lands in `rest`
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="mhc",
        description="torch-mhc: train, compare and benchmark Manifold-Constrained "
                    "Hyper-Connections (mHC) against HC and plain residual models.",
        epilog="Start with: mhc compare --preset tiny --out runs/tiny  (CPU, a few minutes)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, commands in _SUBCOMMAND_MODULES.items():
        try:
            module = importlib.import_module(name)
        except MissingExtraError as e:
            _unavailable(sub, commands, e)
        else:
            module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``mhc`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
