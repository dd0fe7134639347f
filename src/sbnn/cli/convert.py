"""``sbnn convert``: build a :class:`sbnn.pipeline.convert_run.ConvertJob` and run it."""

from __future__ import annotations

from sbnn.cli.common import add_device, add_out, add_seed, add_threads

__all__ = ["GRANULARITIES", "ALLOCATIONS", "add_parser", "run"]

# the choices of sbnn.verbs.convert, repeated here so that --help loads no torch
# (tests/test_cli_fast.py holds them equal)
GRANULARITIES = ("layer", "channel")
ALLOCATIONS = ("uniform", "global")


def _domain_name(text: str) -> str:
    """``ab`` (the sweep's name of the learned {alpha, beta} domain) is ``learned``."""
    return "learned" if text == "ab" else text


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a trained full-precision model to sparse-binary in closed form",
        description="Closed-form conversion of a full-precision checkpoint (a *_fp model of the "
                    "registry) into its sparse-binary twin at a target ones fraction, optional "
                    "pruning and fine-tuning; writes a run folder like `sbnn train`'s. Without "
                    "--bn-batches and --finetune-epochs a converted network is usually at chance.")
    p.add_argument("checkpoint", help="last.pt/best.pt of a full-precision `sbnn train` run")
    g = p.add_argument_group("conversion")
    g.add_argument("--ec", "--ones", dest="ones", type=float, required=True, metavar="EC",
                   help="target ones fraction (EC, as in sbnn train's sparsity.ec) in (0, 1)")
    g.add_argument("--granularity", choices=GRANULARITIES, default="layer",
                   help="one {alpha, beta} split per layer, or per output channel")
    g.add_argument("--allocation", choices=ALLOCATIONS, default="uniform",
                   help="the ones budget: EC in every layer (uniform), or one global budget "
                        "spent where the fit gains most (global)")
    g.add_argument("--domain", default=None, type=_domain_name,
                   help="domain of the binary twin: learned (alias ab), closed_form, pm1, 01 "
                        "(default: the checkpoint's, usually learned)")
    g = p.add_argument_group("pruning (sbnn.verbs.prune)")
    g.add_argument("--prune-magnitude", type=float, default=0.0, metavar="SHARE",
                   help="share of each binary layer's weights pruned by magnitude")
    g.add_argument("--prune-filters", type=float, default=0.0, metavar="SHARE",
                   help="share of each binary layer's output filters made dead")
    g.add_argument("--prune-kernels", type=float, default=0.0, metavar="SHARE",
                   help="target share of all-zero k x k kernels in each binary conv")
    g.add_argument("--patterns", type=int, default=None, metavar="K",
                   help="Sub-bit: 2**K kernel patterns per layer (4, 5, 6)")
    g.add_argument("--no-shrink", action="store_true",
                   help="do not write the physically shrunk copy (shrunk_model.pt)")
    g = p.add_argument_group("fine-tuning and report")
    g.add_argument("--bn-batches", type=int, default=0, metavar="N",
                   help="re-estimate BatchNorm statistics on N training batches after conversion")
    g.add_argument("--finetune-epochs", type=int, default=0, metavar="E",
                   help="epochs of fine-tuning under the sparsity constraint")
    g.add_argument("--gamma", type=float, default=0.07, help="sparsity penalty share")
    g.add_argument("--lr", type=float, default=None,
                   help="fine-tuning learning rate (default: the checkpoint's optim.lr)")
    g.add_argument("--from-scratch", metavar="RUN_DIR",
                   help="a `sbnn train` run of the same network as an SBNN, for the report")
    g.add_argument("--data", dest="data_root", help="dataset folder (default: the checkpoint's)")
    g.add_argument("--train-subset", type=int, default=None, metavar="N",
                   help="fine-tune and recalibrate on the first N training images only")
    g.add_argument("--test-subset", type=int, default=None, metavar="N",
                   help="evaluate on the first N test images only")
    g = p.add_argument_group("where and how")
    add_device(g)
    add_threads(g)
    add_seed(g, "seed of the fine-tuning's data order (default: the checkpoint's)")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar even on a terminal (off a terminal there is none)")
    add_out(g, "new run folder", required=True)
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from sbnn.pipeline.convert_run import ConvertJob, run_convert
    from sbnn.pipeline.runs import clean_stale_tmp_dirs
    from sbnn.verbs.convert import ConversionError
    from sbnn.verbs.prune import PruneConfig

    clean_stale_tmp_dirs(args.out)  # left by a convert killed before its final rename
    try:
        prune = PruneConfig(magnitude=args.prune_magnitude, filters=args.prune_filters,
                            kernels=args.prune_kernels, patterns=args.patterns,
                            shrink=not args.no_shrink)
        job = ConvertJob(
            checkpoint=args.checkpoint, out=args.out, ones=args.ones,
            granularity=args.granularity, allocation=args.allocation, prune=prune,
            finetune_epochs=args.finetune_epochs, from_scratch=args.from_scratch,
            domain=args.domain, gamma=args.gamma, lr=args.lr, data_root=args.data_root,
            train_subset=args.train_subset, test_subset=args.test_subset,
            threads=args.threads, device=args.device, progress=not args.no_progress,
            bn_batches=args.bn_batches, seed=args.seed)
        run_convert(job)
    except (ConversionError, ValueError) as e:
        print(f"sbnn convert: error: {e}", file=sys.stderr)
        return 2
    return 0
