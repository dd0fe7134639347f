#!/usr/bin/env python
"""Mutation-fuzz the ``.sbnn`` loader and the native engine (issue 18): a long campaign.

Mutants of real files (bit flips, with and without the checksum made right, truncations,
prefix fields, header field mutations including huge integers; runtime/tests/sbnn_fuzz.py)
are loaded under limits (default ``max_memory=256M``, ``max_macs=1e9``) and, when they load,
built into the native engine and run on one image. Findings: any exception other than
``SBNNFormatError`` (a crash; a sanitizer report or a signal ends the process, and the
progress file names the mutant), any mutant over ``--hang`` seconds, and a peak RSS above the
memory limit plus 64 MiB over the baseline (an allocation past the limit).

    python scripts/fuzz_sbnn.py --mutants 100000                  # this venv's engine
    python scripts/fuzz_sbnn.py --mutants 100000 --asan           # ASan+UBSan-built engine

``--asan`` builds (once) the extension with ``-fsanitize=address,undefined`` into
``build/asan`` (a wheel unpacked in ``build/asan-pkg``) and re-runs itself with the ASan
runtime preloaded (leak checks off: the interpreter's own allocations are not ours).
Exit status 0 when there are no findings; the summary is one line per figure.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "runtime" / "tests"))


def _asan_env() -> dict:
    pkg = ROOT / "build" / "asan-pkg"
    if not (pkg / "sbnn_runtime").is_dir():
        wheels = sorted((ROOT / "build" / "asan-wheel").glob("sbnn_runtime-*.whl"))
        if not wheels:
            flags = "-fsanitize=address,undefined -fno-omit-frame-pointer"
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", str(ROOT / "runtime"), "--no-deps", "-w",
                 str(ROOT / "build" / "asan-wheel"), "--config-settings=build-dir=build/asan",
                 f"--config-settings=cmake.define.CMAKE_CXX_FLAGS={flags}",
                 "--config-settings=cmake.define.CMAKE_SHARED_LINKER_FLAGS="
                 "-fsanitize=address,undefined"], check=True)
            wheels = sorted((ROOT / "build" / "asan-wheel").glob("sbnn_runtime-*.whl"))
        with zipfile.ZipFile(wheels[-1]) as z:
            z.extractall(pkg)
    libs = [subprocess.run(["g++", f"-print-file-name={n}"], capture_output=True, text=True,
                           check=True).stdout.strip() for n in ("libasan.so", "libubsan.so")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(pkg)] + sys.path),
                LD_PRELOAD=" ".join(libs), SBNN_FUZZ_ASAN="1",
                ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
                UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutants", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-memory", default="256M")
    ap.add_argument("--max-macs", default="1e9")
    ap.add_argument("--hang", type=float, default=10.0, help="seconds that count as a hang")
    ap.add_argument("--asan", action="store_true", help="run against an ASan+UBSan build")
    ap.add_argument("--progress", default=str(ROOT / "build" / "fuzz_progress.txt"))
    a = ap.parse_args(argv)
    if a.asan and not os.environ.get("SBNN_FUZZ_ASAN"):
        args = [x for x in (argv if argv is not None else sys.argv[1:]) if x != "--asan"]
        return subprocess.run([sys.executable, __file__, *args], env=_asan_env()).returncode

    if os.environ.get("SBNN_FUZZ_ASAN"):
        # an editable install's import hook would win over PYTHONPATH: drop it, so that
        # sbnn_runtime (and its _core) come from build/asan-pkg
        sys.meta_path[:] = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
    import sbnn_fuzz
    import sbnn_runtime
    from sbnn_runtime.ops import Limits

    limits = {"max_memory": a.max_memory, "max_macs": a.max_macs}
    lim = Limits.resolve(**limits)
    files = sbnn_fuzz.seed_files()
    sbnn_fuzz.run_one(files[0], limits, __import__("numpy").random.default_rng(0))  # warm up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(a.progress).parent.mkdir(parents=True, exist_ok=True)
    prog = open(a.progress, "w")  # noqa: SIM115 - written through the whole campaign
    t0 = time.time()

    def progress(i, res):
        if i % 1000 == 0:
            prog.seek(0)
            prog.write(f"mutant {i} of {a.mutants}, {time.time() - t0:.0f} s\n")
            prog.truncate()
            prog.flush()

    res = sbnn_fuzz.fuzz(a.mutants, a.seed, limits, a.hang, files, progress)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    allowed = lim.max_memory + (64 << 20) + res.max_input_bytes  # (+ the caller's input)
    if os.environ.get("SBNN_FUZZ_ASAN"):
        allowed += (256 << 20) + allowed // 8  # ASan's quarantine of freed blocks, its shadow
    over = peak > allowed
    for i, dt, data in res.slow_cases:
        out = Path(a.progress).parent / f"fuzz_slow_{i}.sbnn"
        out.write_bytes(data)
        print(f"  mutant {i}: {dt:.2f} s, written to {out}")
    native = getattr(sbnn_runtime.native.core, "__file__", "?")
    if os.environ.get("SBNN_FUZZ_ASAN") and "asan-pkg" not in native:
        print(f"fuzz_sbnn.py: --asan ran the engine at {native}, not the ASan build")
        return 2
    print(f"engine: {native}{' (ASan+UBSan)' if os.environ.get('SBNN_FUZZ_ASAN') else ''}")
    print(f"mutants: {res.mutants} (seed {a.seed}) in {time.time() - t0:.0f} s")
    print(f"refused with the format error: {res.refused}; loaded, refused by the engine's "
          f"limits: {res.loaded}; loaded and ran: {res.ran}")
    print(f"crashes (exceptions other than SBNNFormatError): {len(res.crashes)}")
    for c in res.crashes[:20]:
        print(f"  {c}")
    print(f"hangs over {a.hang:g} s: {res.slow} (slowest mutant {res.slowest:.2f} s)")
    print(f"peak RSS over the baseline: {peak / (1 << 20):.1f} MiB (allowed "
          f"{allowed / (1 << 20):.0f} MiB: the limit {lim.max_memory / (1 << 20):.0f} + 64, the "
          f"largest input {res.max_input_bytes / (1 << 20):.0f}"
          f"{', ASan quarantine and shadow' if os.environ.get('SBNN_FUZZ_ASAN') else ''}): "
          f"allocations over the limit: {int(over)}")
    return 1 if res.crashes or res.slow or over else 0


if __name__ == "__main__":
    sys.exit(main())
