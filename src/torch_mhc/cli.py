"""The ``mhc`` command: ``mhc train``, ``mhc compare``, ``mhc report``, ``mhc bench``.

Each subcommand lives with its code and registers itself here through a
``register(subparsers)`` function that adds its parser and sets ``func``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# module that provides register(subparsers), in the order shown by `mhc --help`
_SUBCOMMAND_MODULES = ("torch_mhc.train.cli", "torch_mhc.bench")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="mhc",
        description="torch-mhc: train, compare and benchmark Manifold-Constrained "
                    "Hyper-Connections (mHC) against HC and plain residual models.",
        epilog="Start with: mhc compare --preset tiny --out runs/tiny  (CPU, a few minutes)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
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
