"""``sbnn sweep``: parse the comma lists, then :func:`sbnn.pipeline.sweep.run_sweep`."""

from __future__ import annotations

from sbnn.cli.common import add_device, add_out, add_set, add_threads, as_overrides

__all__ = ["add_parser", "run", "floats"]


def floats(text: str, what: str) -> list[float]:
    """``"0.05,0.02"`` -> ``[0.05, 0.02]``; a ValueError names the option ``--what``."""
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{what} expects comma-separated numbers, got {text!r}") from None
    if not vals:
        raise ValueError(f"--{what} is empty")
    return vals


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="train one run per (domain, EC, seed) and tabulate accuracy / bits / latency",
        description="Train every combination of --domain, --ec and --seeds from one config, "
                    "export each run and time it on the engine, then write results.csv, "
                    "results.md and plots into --out. Each finished run's row is appended to "
                    "results.csv at once; runs whose row is already there are skipped (resume "
                    "from a committed CSV), an interrupted run resumes from its last.pt.",
        epilog="job array (SLURM), 8 shards, then gather:\n"
               "  #SBATCH --array=0-7 --cpus-per-task=4\n"
               "  sbnn sweep -c base.yaml --threads 4 --shard $SLURM_ARRAY_TASK_ID/8 "
               "--out sweep/shard$SLURM_ARRAY_TASK_ID\n"
               "  sbnn sweep --collect sweep/shard* --out sweep/all\n"
               "one machine, 4 runs at once: sbnn sweep -c base.yaml --jobs 4 --out DIR")
    g = p.add_argument_group("the plan")
    g.add_argument("--config", "-c", help="base YAML config (default: the main job)")
    add_set(g, "override a config key for every run (repeatable)")
    g.add_argument("--ec", default="0.5,0.25,0.1,0.05,0.02,0.01",
                   help="comma-separated target ones fractions")
    g.add_argument("--domain", default="ab,pm1,01",
                   help="comma-separated domains: ab ({alpha, beta}, learned), closed_form, pm1, "
                        "01, abr ({alpha, beta} with r = alpha / (beta - alpha) fixed at -EC), "
                        "pm1c (+-1 with per-channel mean|w| scaling, ReActNet-style)")
    g.add_argument("--arm", default="cf",
                   help="comma-separated start arms: cf (tau/phi fitted in closed form to the "
                        "initial split), authors (tau = 1, phi = 0)")
    g.add_argument("--seeds", default="0", help="comma-separated seeds, one run per seed")
    g.add_argument("--gamma", help="gamma per EC (comma-separated, or one value for all); "
                                   "default: the authors' pair for each EC")
    g.add_argument("--no-fp", action="store_true", help="skip the full-precision reference run")
    g.add_argument("--no-latency", action="store_true", help="skip engine timing")
    g.add_argument("--collect", nargs="*", metavar="DIR",
                   help="train nothing. Without DIRs: tabulate the plan's rows already in "
                        "--out/results.csv and its finished runs (the others are listed as left "
                        "out). With DIRs (sweep folders or CSV files, e.g. the shards of a job "
                        "array): merge their results.csv into --out/results.csv, then tabulate")
    g.add_argument("--shard", metavar="I/N",
                   help="run only slice I of N (0 <= I < N) of the plan: entries I, I+N, I+2N, "
                        "... in plan order, e.g. --shard $SLURM_ARRAY_TASK_ID/8 in a job array "
                        "(each shard its own --out; gather them with --collect)")
    g = p.add_argument_group("where and how (also config keys)")
    add_device(g, default=None)
    add_threads(g)
    g.add_argument("--jobs", "-j", type=int, default=1,
                   help="runs trained at once on this machine, one process each, the threads "
                        "(--threads, else every CPU) split among them")
    add_out(g, "sweep folder", required=True)
    p.set_defaults(func=run)


def run(args) -> int:
    import os
    import sys
    from pathlib import Path

    from sbnn.pipeline.config import load_config
    from sbnn.pipeline.sweep import collect, parse_shard, run_sweep

    cfg = load_config(args.config, as_overrides(args, keys=("device", "threads")))
    try:
        if args.collect:
            collect(args.collect, args.out)
            print(f"sweep results: {Path(args.out) / 'results.md'}")
            return 0
        ecs = floats(args.ec, "ec")
        seeds = [int(s) for s in floats(args.seeds, "seeds")]
        gammas = floats(args.gamma, "gamma") if args.gamma else None
        domains = [d.strip() for d in args.domain.split(",") if d.strip()]
        arms = [a.strip() for a in args.arm.split(",") if a.strip()]
        run_sweep(cfg, args.out, ecs, domains, seeds, gammas, fp_reference=not args.no_fp,
                  latency=not args.no_latency, arms=arms, train=args.collect is None,
                  jobs=args.jobs,
                  shard=parse_shard(args.shard) if args.shard else None)
    except ValueError as e:
        print(f"sbnn sweep: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"sweep results: {Path(args.out) / 'results.md'}")
    return 0
