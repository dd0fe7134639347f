"""The ``sbnn`` console command: one entry point, one subcommand per module.

A subcommand is a module with ``add_parser(subparsers)``, which adds its parser and sets
``func=handler`` (``handler(args) -> int``). To add one (convert, export, bench, sweep...), write
the module and append its import path to :data:`SUBCOMMANDS`; a module that fails to import is
skipped with a note in ``sbnn --help`` instead of breaking the other subcommands.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

SUBCOMMANDS: list[str] = [
    "sbnn.pipeline.train",
    "sbnn.pipeline.evaluate",
    "sbnn.pipeline.plot",
    "sbnn.pipeline.convert_run",
    "sbnn.pipeline.sweep",
    "sbnn.deploy.export",
    "sbnn.deploy.bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbnn", description="Sparse binary neural networks: train, evaluate, plot, convert, "
                                   "sweep, export, bench.")
    try:
        from sbnn import __version__
    except ImportError:  # pragma: no cover
        __version__ = "?"
    parser.add_argument("--version", action="version", version=f"sbnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    broken = []
    for mod_name in SUBCOMMANDS:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            broken.append(f"{mod_name} ({e})")
            continue
        mod.add_parser(sub)
    if broken:
        parser.epilog = "unavailable subcommands: " + "; ".join(broken)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from sbnn.pipeline.config import ConfigError
    from sbnn.pipeline.data import DatasetNotFoundError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, DatasetNotFoundError, FileNotFoundError) as e:
        print(f"sbnn {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
