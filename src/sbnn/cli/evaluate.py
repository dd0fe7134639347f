"""``sbnn evaluate``: a run's test accuracy and statistics, or a ``.sbnn`` file on the engine."""

from __future__ import annotations

from sbnn.cli.common import add_device, add_threads

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="test accuracy and sparsity/memory statistics of a trained run",
        description="Evaluate RUN_DIR (its last.pt, or best.pt with --best) or a checkpoint file.")
    p.add_argument("path", nargs="?", help="run folder or .pt checkpoint")
    p.add_argument("--engine", metavar="MODEL.sbnn",
                   help="evaluate this exported model on the native engine instead (with PATH: "
                        "also count predictions that differ from the PyTorch model)")
    p.add_argument("--best", action="store_true", help="use best.pt instead of last.pt")
    p.add_argument("--data", dest="data_root", help="dataset folder (default: the run's)")
    p.add_argument("--dataset", help="dataset name (default: the run's)")
    add_device(p)
    add_threads(p)
    p.add_argument("--batch-size", type=int, default=1000, help="test images per batch")
    p.add_argument("--json", dest="json_out", help="also write the report to this JSON file")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import sys
    from pathlib import Path

    from sbnn.pipeline import evaluate as ev

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        if args.engine:
            report = ev.evaluate_engine(args.engine, dataset=args.dataset, root=args.data_root,
                                        batch_size=args.batch_size, compare_with=args.path,
                                        which="best" if args.best else "last")
            text = ev.format_engine_report(report)
        else:
            if not args.path:
                raise FileNotFoundError("give a run folder or checkpoint (or --engine "
                                        "MODEL.sbnn)")
            report = ev.evaluate_run(args.path, "best" if args.best else "last", args.data_root,
                                     args.dataset, args.device, args.batch_size)
            text = ev.format_report(report, title=f"{report['checkpoint']} (epoch "
                                                  f"{report['epoch']})")
    except ValueError as e:  # a corrupt checkpoint or .sbnn, one without its dataset, ...
        print(f"sbnn evaluate: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0
