"""``sbnn summary RUN|CHECKPOINT|MODEL.sbnn``: the one summary (:mod:`sbnn_runtime.summary`).

A run folder or checkpoint is loaded (never running code from it) and traced to the graph it
would export to; a ``.sbnn`` file is read as it is (the output is that of
``python -m sbnn_runtime summary MODEL.sbnn``), and its size on disk is the file size.
"""

from __future__ import annotations

__all__ = ["run_summary", "add_parser", "run"]


def run_summary(path, input_shape=None):
    """The :class:`~sbnn.deploy.summary.Summary` of a run folder, checkpoint or ``.sbnn`` file."""
    from pathlib import Path

    from sbnn.deploy.summary import summary

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no run folder, checkpoint or .sbnn file at '{p}'")
    if p.is_file() and p.suffix != ".pt":
        return summary(p)
    from sbnn.cli.export import input_shape_of
    from sbnn.deploy.export import to_graph
    from sbnn.deploy.summary import graph_summary
    from sbnn.pipeline.runs import load_checkpoint, load_model

    ckpt = load_checkpoint(p)
    if input_shape is None:
        input_shape = input_shape_of(ckpt, None)
    graph = to_graph(load_model(p), tuple(input_shape))
    return graph_summary(graph, title=f"{p} (epoch {ckpt.get('epoch')})")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "summary", help="one table of every layer of a run or .sbnn model",
        description="Per node of the deployed graph: op, output shape, parameters, ones "
                    "fraction, all-zero kernels, bits per weight, stored bytes and MACs; "
                    "totals split binary/float, H(p), the file size and activations.")
    p.add_argument("path", help="run folder, .pt checkpoint or .sbnn file")
    p.add_argument("--input-shape", help="C,H,W of one sample (default: from the run's dataset)")
    p.add_argument("--json", dest="json_out", help="also write the summary to this JSON file")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import sys
    from pathlib import Path

    from sbnn.deploy.export import ExportError, parse_shape

    try:
        shape = parse_shape(args.input_shape) if args.input_shape else None
        s = run_summary(args.path, shape)
    except (ValueError, ExportError) as e:  # bad --input-shape, unknown dataset, untraceable
        if isinstance(e, OSError):
            raise
        print(f"sbnn summary: error: {e}", file=sys.stderr)
        return 2
    print(s)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(s.to_dict(), indent=2) + "\n")
    return 0
