#!/usr/bin/env python
"""Mutation-fuzz the ``.sbnn`` loader and the native engine (issue 18): a long campaign.

Mutants of real files (bit flips, with and without the checksum made right, truncations,
prefix fields, header field mutations including huge integers; runtime/tests/sbnn_fuzz.py)
are loaded under limits (default ``max_memory=256M``, ``max_macs=1e9``) and, when they load,
built into the native engine and run on one image. Findings: any exception other than
``SBNNFormatError`` (a crash; a sanitizer report or a signal ends the process, and the
progress file names the mutant), any mutant over ``--hang`` CPU seconds (a hang: this process's
CPU time, every thread, for loading, building and running it; the wall time is reported beside
it, but on a shared machine it measures the neighbours), and a peak RSS over the baseline
above what the loader's estimate says the dearest file that ran may hold (its
``GraphCost.memory`` plus its input image, which is the caller's) plus 64 MiB: an allocation
the estimate missed (it is at most the memory limit, so none past the limit either). Under
``--asan`` the allowance is the limit plus the largest input plus 64 MiB, plus ASan's
quarantine and shadow (the quarantine holds blocks freed by earlier files).

    python scripts/fuzz_sbnn.py --mutants 100000                  # this venv's engine
    python scripts/fuzz_sbnn.py --mutants 100000 --asan           # ASan+UBSan-built engine

``--asan`` re-runs itself through ``scripts/asan_python.py``: against the runtime built with
``-fsanitize=address,undefined`` (``build/asan-pkg``, rebuilt when the sources changed), the
ASan runtime preloaded (leak checks off: the interpreter's own allocations are not ours).
Exit status 0 when there are no findings; the summary is one line per figure.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "runtime" / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

import asan_python  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutants", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-memory", default="256M")
    ap.add_argument("--max-macs", default="1e9")
    ap.add_argument("--hang", type=float, default=10.0,
                    help="CPU seconds of one mutant that count as a hang")
    ap.add_argument("--asan", action="store_true", help="run against an ASan+UBSan build")
    ap.add_argument("--no-limit-files", dest="limit_files", action="store_false",
                    help="skip the files at the limits (run before the mutants)")
    ap.add_argument("--progress", default=str(ROOT / "build" / "fuzz_progress.txt"))
    a = ap.parse_args(argv)
    asan = bool(os.environ.get("SBNN_ASAN"))
    if a.asan and not asan:
        args = [x for x in (argv if argv is not None else sys.argv[1:]) if x != "--asan"]
        return subprocess.run([sys.executable, __file__, *args],
                              env=asan_python.env()).returncode

    import sbnn_fuzz
    import sbnn_runtime
    from sbnn_runtime.ops import Limits

    limits = {"max_memory": a.max_memory, "max_macs": a.max_macs}
    lim = Limits.resolve(**limits)
    files = sbnn_fuzz.seed_files()
    sbnn_fuzz.run_one(files[0], limits, __import__("numpy").random.default_rng(0))  # warm up
    # the files at the limits are made (by bisection, tens of MiB) before the baseline: making
    # them is this script's work, not an allocation of a file being loaded or run
    limit_files = sbnn_fuzz.limit_files(limits) if a.limit_files else {}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(a.progress).parent.mkdir(parents=True, exist_ok=True)
    prog = open(a.progress, "w")  # noqa: SIM115 - written through the whole campaign

    def progress(i, res):
        if i % 1000 == 0:
            prog.seek(0)
            prog.write(f"mutant {i} of {a.mutants}, {time.time() - t0:.0f} s\n")
            prog.truncate()
            prog.flush()

    # first the files at the limits: the dearest graph of each costly kind that the limits let
    # in (sbnn_fuzz.limit_files); a mutant costs no more per counted unit of work than these
    at_limits, limit_input, limit_need = [], 0, 0
    t0 = time.time()
    if limit_files:
        x_rng = __import__("numpy").random.default_rng(1)
        for name, data in limit_files.items():
            c0, w0 = time.process_time(), time.perf_counter()
            what = sbnn_fuzz.run_one(data, limits, x_rng)
            at_limits.append((name, what, time.process_time() - c0, time.perf_counter() - w0))
            need, inp = sbnn_fuzz.need_bytes(data, limits)
            limit_input, limit_need = max(limit_input, inp), max(limit_need, need)
            prog.write(f"at the limits: {name}: {what}, {at_limits[-1][2]:.2f} s CPU\n")
            prog.flush()
    t0 = time.time()
    res = sbnn_fuzz.fuzz(a.mutants, a.seed, limits, a.hang, files, progress)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    max_input = max(res.max_input_bytes, limit_input)
    # what the loader's estimate says the dearest file that ran may hold, with its input image
    # (the caller's), plus the fixed margin; at most the limit plus the largest input
    max_need = max(res.max_need_bytes, limit_need)
    allowed = max_need + (64 << 20)
    if asan:
        # ASan's quarantine keeps up to 256 MiB of blocks freed by earlier files and adds its
        # shadow, so its peak is not one file's: the limit plus the largest input, as before
        allowed = lim.max_memory + (64 << 20) + max_input
        allowed += (256 << 20) + allowed // 8
    over = peak > allowed
    for i, cpu, wall, data in res.slow_cases:
        out = Path(a.progress).parent / f"fuzz_slow_{i}.sbnn"
        out.write_bytes(data)
        print(f"  mutant {i}: {cpu:.2f} s CPU, {wall:.2f} s wall, written to {out}")
    native = getattr(sbnn_runtime.native.core, "__file__", "?")
    if asan and (why := asan_python.check_asan_engine()):
        print(f"fuzz_sbnn.py: --asan: {why}")
        return 2
    print(f"engine: {native}{' (ASan+UBSan)' if asan else ''}")
    print(f"mutants: {res.mutants} (seed {a.seed}) in {time.time() - t0:.0f} s")
    print(f"refused with the format error: {res.refused}; loaded, refused by the engine's "
          f"limits: {res.loaded}; loaded and ran: {res.ran}")
    print(f"crashes (exceptions other than SBNNFormatError): {len(res.crashes)}")
    for c in res.crashes[:20]:
        print(f"  {c}")
    for name, what, cpu, wall in at_limits:
        print(f"at the limits: {name}: {what}, {cpu:.2f} s CPU, {wall:.2f} s wall")
    at_hang = sum(cpu > a.hang or what != "ran" for _, what, cpu, _ in at_limits)
    if at_limits:
        print(f"files at the limits over {a.hang:g} CPU seconds or not run: {at_hang} of "
              f"{len(at_limits)} (slowest {max(c for _, _, c, _ in at_limits):.2f} s CPU)")
    print(f"hangs over {a.hang:g} CPU seconds: {res.slow} (slowest mutant {res.slowest:.2f} s "
          f"CPU); by the wall clock: {res.slow_wall} over {a.hang:g} s (slowest "
          f"{res.slowest_wall:.2f} s)")
    basis = (f"the limit {lim.max_memory / (1 << 20):.0f} + 64 + the largest input "
             f"{max_input / (1 << 20):.0f}, ASan quarantine and shadow" if asan else
             f"the largest estimate plus input of a file that ran {max_need / (1 << 20):.0f} + 64")
    print(f"peak RSS over the baseline: {peak / (1 << 20):.1f} MiB (allowed "
          f"{allowed / (1 << 20):.0f} MiB: {basis}; the largest input "
          f"{max_input / (1 << 20):.0f}): allocations over the "
          f"{'limit' if asan else 'estimate'}: {int(over)}")
    return 1 if res.crashes or res.slow or over or at_hang else 0


if __name__ == "__main__":
    sys.exit(main())
