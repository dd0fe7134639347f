"""``python -m sbnn_runtime``: the runtime's command line (numpy only, no torch).

    python -m sbnn_runtime summary MODEL.sbnn
    python -m sbnn_runtime c MODEL.sbnn DIR [--name N] [--binary-format auto|sparse|packed]

Bad input (a file that is not a valid model, a bad ``--name``) prints one error line and exits
with status 2, writing nothing.
"""

from __future__ import annotations

import argparse
import sys

from sbnn_runtime.lower_c import BINARY_FORMATS


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sbnn_runtime",
                                 description="Inspect or lower a .sbnn model.")
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summary", help="per-node shapes, params, bits and MACs of a .sbnn file")
    s.add_argument("model", help="a .sbnn file")
    c = sub.add_parser("c", help="write the model as C99 for microcontrollers",
                       description="Write DIR/N.c and DIR/N.h (model.c/model.h without --name) "
                                   "and the kernels they call (sbnn_micro.h, sbnn_*.c, the same "
                                   "for every model); see docs/DEPLOY.md.")
    c.add_argument("model", help="a .sbnn file")
    c.add_argument("out_dir", metavar="DIR", help="output folder (made if missing)")
    c.add_argument("--name", help="C prefix and file name: N_run, N_run_arena, N_* macros "
                                  "(default: model.c with sbnn_run and SBNN_*)")
    c.add_argument("--binary-format", choices=BINARY_FORMATS, default="auto",
                   help="binary conv weights: the smaller per layer (auto), or force one")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from sbnn_runtime.fileformat import SBNNFormatError
    from sbnn_runtime.lower_c import CExportError

    try:
        if args.command == "summary":
            from sbnn_runtime.summary import format_summary, summarize

            print(format_summary(summarize(args.model)))
        else:
            from sbnn_runtime.lower_c import export_file

            print(export_file(args.model, args.out_dir, args.name, args.binary_format)[1])
    except (SBNNFormatError, CExportError, OSError) as exc:
        print(f"python -m sbnn_runtime {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
