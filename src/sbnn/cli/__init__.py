"""The ``sbnn`` console command: one entry point, one subcommand per module of this folder.

All argument parsing lives here. A subcommand is a module ``sbnn.cli.NAME`` with
``add_parser(subparsers)``, which adds its parser and sets ``func=run`` (``run(args) -> int``).
The module imports only argparse helpers at its top; ``run`` imports the domain module it calls
(``sbnn.pipeline.train``, ``sbnn.deploy.bench``, ...) when it runs, so ``sbnn --help`` and every
``sbnn COMMAND --help`` load neither torch nor the native core. Options shared by several
commands come from :mod:`sbnn.cli.common`. To add a command, write its module and append its
import path to :data:`SUBCOMMANDS`; a module that fails to import is skipped with a note in
``sbnn --help`` instead of breaking the other subcommands.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["SUBCOMMANDS", "HelpFormatter", "build_parser", "main"]

SUBCOMMANDS: list[str] = [
    "sbnn.cli.train",
    "sbnn.cli.evaluate",
    "sbnn.cli.plot",
    "sbnn.cli.convert",
    "sbnn.cli.sweep",
    "sbnn.cli.export",
    "sbnn.cli.bench",
    "sbnn.cli.summary",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default; a text with line breaks (the ``--set`` key
    list of ``sbnn train --help``) is printed as written, other texts are wrapped."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + ln for ln in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action):
        text = action.help or ""
        if not _has_default(action):
            return text
        return super()._get_help_string(action)


def _has_default(a: argparse.Action) -> bool:
    """A default worth showing: not None/SUPPRESS, not a flag's False, not an empty list."""
    d = a.default
    return not (d is None or d is argparse.SUPPRESS or isinstance(d, bool)
                or (isinstance(d, (list, tuple)) and not d))


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Options without a help text still show their default (argparse prints nothing for them)."""
    for a in parser._actions:
        if a.help is None and a.option_strings and _has_default(a):
            a.help = "default: %(default)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbnn", description="Sparse binary neural networks: train, evaluate, plot, convert, "
                                   "sweep, export, bench, summary.")
    try:
        from sbnn import __version__
    except ImportError:  # pragma: no cover
        __version__ = "?"
    parser.add_argument("--version", action="version", version=f"sbnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add = sub.add_parser

    def add_parser(*a, **k):
        k.setdefault("formatter_class", HelpFormatter)
        return add(*a, **k)

    sub.add_parser = add_parser
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
    for p in sub.choices.values():
        _show_defaults(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    errors = _user_errors()
    try:
        return int(args.func(args) or 0)
    except errors as e:
        print(f"sbnn {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM during training: one line, exit 130
        print(f"sbnn {args.command}: {_one_line(e) if str(e) else 'interrupted'}",
              file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.strerror}: '{e.filename}'"
    return " ".join(ln.strip() for ln in text.splitlines() if ln.strip())


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user's input causes (bad config, data, checkpoint, .sbnn file, path): one line on
    stderr and exit code 2 instead of a traceback."""
    from sbnn.pipeline.config import ConfigError
    from sbnn.pipeline.data import DatasetNotFoundError
    from sbnn.pipeline.runs import CheckpointError, RunExistsError
    from sbnn.verbs.convert import ConversionError
    from sbnn_runtime.ops import SBNNFormatError

    return (ConfigError, DatasetNotFoundError, CheckpointError, RunExistsError, SBNNFormatError,
            ConversionError, OSError)


if __name__ == "__main__":
    sys.exit(main())
