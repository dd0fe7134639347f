"""``sbnn plot``: figures of one or more runs (:mod:`sbnn.pipeline.plot`)."""

from __future__ import annotations

__all__ = ["FORMATS", "add_parser", "run"]

FORMATS = ("png", "svg", "pdf")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plot", help="plots of one or more runs (PNG, SVG or PDF)",
        description="Latent-weight histograms, ones fraction and accuracy over epochs, per-layer "
                    "ones, accuracy against bits per weight; colours from the Okabe-Ito palette, "
                    "which readers with the common colour-vision deficiencies can tell apart.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders to plot")
    p.add_argument("--out", "-o", help="folder for the cross-run plot (default: the first run)")
    p.add_argument("--format", dest="formats", action="append", choices=FORMATS, default=None,
                   help="file format; repeat for several (--format png --format svg); "
                        "default: png")
    p.set_defaults(func=run)


def run(args) -> int:
    from sbnn.pipeline.plot import plot_runs

    for path in plot_runs(args.runs, args.out, formats=tuple(args.formats or ("png",))):
        print(path)
    return 0
