"""``sbnn train``: parse, then hand the config to :class:`sbnn.pipeline.train.Trainer`."""

from __future__ import annotations

import sys

from sbnn.cli.common import (
    add_device,
    add_logging,
    add_out,
    add_seed,
    add_set,
    add_threads,
    as_overrides,
)

__all__ = ["add_parser", "run"]


def set_keys_help() -> str:
    """The ``--set`` keys, generated from the config dataclasses (no torch is loaded)."""
    from sbnn.pipeline.config import config_keys

    rows = config_keys()
    w = max(len(k) for k, _, _ in rows)
    lines = ["config keys for --set KEY=VALUE (type, default):"]
    lines += [f"  {k:<{w}}  {t}, {v!r}" for k, t, v in rows]
    return "\n".join(lines)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model (no --config: the main Fashion-MNIST job)",
        description="Train a sparse binary network. Without --config, runs the embedded default: "
                    "the main job (Fashion-MNIST, small sparse-binary CNN, EC=0.05). An --out "
                    "that already holds a run is refused unless --resume or --overwrite. "
                    "--device, --threads, --seed and --log-every are also config keys (--set "
                    "device=cpu is --device cpu).",
        epilog=set_keys_help())
    g = p.add_argument_group("what to train")
    g.add_argument("--config", "-c", help="YAML config file (defaults for every key)")
    add_set(g, "override one config key, e.g. --set optim.lr=0.01 (repeatable; the keys are "
               "listed below)")
    add_out(g, "run folder (default: config 'out' or runs/<model>-<time>)")
    g.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run from RUN_DIR/last.pt (uses its config.yaml)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (without it, an existing run is "
                        "refused)")
    g.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML and exit")
    g.add_argument("--verbose", "-v", action="store_true",
                   help="on a model that cannot be exported, say why for each layer")
    g = p.add_argument_group("where and how (also config keys)")
    add_device(g, default=None)
    add_threads(g)
    add_seed(g)
    add_logging(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    import yaml

    from sbnn.pipeline.config import load_config, to_dict
    from sbnn.pipeline.train import Trainer

    overrides = as_overrides(args)
    out, resume = args.out, args.resume
    if resume:
        rdir = Path(resume)
        rdir = rdir if rdir.is_dir() else rdir.parent
        cfg = load_config(args.config or (rdir / "config.yaml"), overrides)
        out = out or rdir
    else:
        cfg = load_config(args.config, overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from sbnn.pipeline.train import NotExportableError

    try:
        trainer = Trainer(cfg, out=out, resume=resume, overwrite=args.overwrite)
    except NotExportableError as e:
        if args.verbose:
            print(e.details(), file=sys.stderr)
        raise
    trainer.fit(log_json=args.log_json)
    return 0
