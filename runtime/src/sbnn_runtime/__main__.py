"""``python -m sbnn_runtime COMMAND ...``: the runtime's command line (numpy only, no torch).

    python -m sbnn_runtime summary MODEL.sbnn [--json OUT.json]
    python -m sbnn_runtime c MODEL.sbnn DIR [--name N] [--binary-format auto|sparse|packed]

Each command is one entry of :data:`COMMANDS`: ``name -> (help, add_arguments, run)``, where
``run(args) -> exit code``. Bad input (a missing or invalid file) is one ``error:`` line on
stderr and exit code 2 (for ``c``, also a bad ``--name`` or a graph the C backend cannot
lower; nothing is written then).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

__all__ = ["COMMANDS", "main"]


def _summary_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=".sbnn file")
    p.add_argument("--json", dest="json_out", help="also write the summary to this JSON file")


def _summary(args: argparse.Namespace) -> int:
    from sbnn_runtime.summary import format_summary, summarize

    s = summarize(args.model)
    print(format_summary(s, title=str(args.model)))
    if args.json_out:
        from sbnn_runtime.files import atomic_write

        atomic_write(args.json_out, (json.dumps(s, indent=2) + "\n").encode())
    return 0


def _c_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=".sbnn file")
    p.add_argument("out_dir", metavar="DIR", help="output folder (made if missing)")
    p.add_argument("--name", help="C prefix and file name: N.c/N.h with N_run, N_run_arena and "
                                  "N_* macros (default: model.c with sbnn_run and SBNN_*)")
    p.add_argument("--binary-format", choices=("auto", "sparse", "packed"), default="auto",
                   help="binary conv weights: the smaller per layer (auto), or force one")


def _c(args: argparse.Namespace) -> int:
    from sbnn_runtime.lower_c import export_file

    print(export_file(args.model, args.out_dir, args.name, args.binary_format)[1])
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                          Callable[[argparse.Namespace], int]]] = {
    "summary": ("one table of every node of a .sbnn model: shapes, params, ones, bits, MACs",
                _summary_args, _summary),
    "c": ("write the model as C99 for microcontrollers: DIR/N.c, N.h and the kernels they call "
          "(sbnn_micro.h, sbnn_*.c, the same for every model); see docs/DEPLOY.md",
          _c_args, _c),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sbnn_runtime",
                                     description="Inspect and lower .sbnn models (numpy only).")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_, description=help_))
    args = parser.parse_args(argv)
    from sbnn_runtime.lower_c import CExportError
    from sbnn_runtime.ops import SBNNFormatError

    try:
        return COMMANDS[args.command][2](args)
    except (SBNNFormatError, CExportError, OSError) as exc:
        what = getattr(exc, "filename", None)
        msg = f"{exc.strerror}: '{what}'" if isinstance(exc, OSError) and what and \
            exc.strerror else str(exc)
        print(f"python -m sbnn_runtime {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

