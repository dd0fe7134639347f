"""Options that several commands share, spelled and explained the same way everywhere.

Each ``add_*`` adds one option to a parser (or argument group). The trainer's options
(``--device``, ``--threads``, ``--seed``) are also its config keys, so ``sbnn train --device cpu``
and ``sbnn train --set device=cpu`` are the same thing (:func:`as_overrides`). Nothing here
imports torch or the native core: ``sbnn COMMAND --help`` stays fast.
"""

from __future__ import annotations

__all__ = ["add_device", "add_threads", "add_seed", "add_out", "add_set", "add_logging",
           "as_overrides"]


def add_device(p, default: str | None = "auto") -> None:
    p.add_argument("--device", default=default, metavar="DEV",
                   help="auto (CUDA when available) | cpu | cuda | cuda:N")


def add_threads(p, many: bool = False) -> None:
    if many:
        p.add_argument("--threads", type=int, nargs="+", default=[1, 2], metavar="N",
                       help="thread counts to measure (one run per count)")
    else:
        p.add_argument("--threads", type=int, default=None, metavar="N",
                       help="CPU threads (torch.set_num_threads); default: torch's choice")


def add_seed(p, what: str = "the random seed (data order, initialisation, augmentation)"
             ) -> None:
    p.add_argument("--seed", type=int, default=None, metavar="S", help=what)


def add_out(p, help: str, required: bool = False, dest: str = "out",
            extra: tuple[str, ...] = ()) -> None:
    p.add_argument("--out", "-o", *extra, dest=dest, required=required, help=help)


def add_set(p, what: str = "override one config key, e.g. --set optim.lr=0.01 (repeatable; "
                           "the keys are listed by sbnn train --help)") -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=what)


def add_logging(p) -> None:
    g = p.add_argument_group("logging")
    g.add_argument("--log-every", type=int, default=None, metavar="N",
                   help="also log one line every N training steps (0: once per epoch only); "
                        "same as --set log_every=N")
    g.add_argument("--log-json", metavar="FILE",
                   help="write machine-readable events (start, steps, epochs, end, warnings) "
                        "to FILE, one JSON object per line")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar even on a terminal (off a terminal there is none)")


def as_overrides(args, keys=("device", "threads", "seed", "log_every")) -> list[str]:
    """The common flags given on the command line as ``--set`` strings, placed after the
    user's own ``--set`` (so a flag wins over a ``--set`` of the same key)."""
    out = list(getattr(args, "overrides", []) or [])
    for k in keys:
        v = getattr(args, k, None)
        if v is not None:
            out.append(f"{k}={v}")
    if getattr(args, "no_progress", False):
        out.append("progress=false")
    return out
