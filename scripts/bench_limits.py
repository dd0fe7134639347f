#!/usr/bin/env python
"""Do the loader's limits bound what the native engine really takes? (issue 18)

``rss``: for random valid graphs (runtime/tests/random_graphs.py), save each to a ``.sbnn``,
load it, build the native engine and run one batch in a fresh interpreter, and compare the
peak RSS it added (the high-water mark, reset to the resident size just before loading: the
interpreter, numpy, the module and the input batch are the baseline) with the estimate the
loader holds to ``max_memory`` (``GraphCost.memory(batch, threads)``). Fails (exit 1) when any
graph takes more than the estimate plus ``--margin`` MiB.

``time``: for random valid graphs, the run time of one batch (best of 3, after a warm-up run
that includes the engine's sparse/dense choice) per unit of estimated work
(``GraphCost.work``, the quantity ``max_macs`` bounds), and its spread: fails when any graph
is more than ``--factor`` times off the median. A benchmark, not a test: the figures depend on
the machine and its load.

    python scripts/bench_limits.py rss --graphs 200
    python scripts/bench_limits.py time --graphs 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "runtime" / "tests"))

_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    import sbnn_runtime
    from sbnn_runtime import fileformat as ff
    from sbnn_runtime.passes import graph_cost
    path, batch, threads, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    raw = open(path, "rb").read()
    hlen = int.from_bytes(raw[12:16], "little")
    c, h, w = json.loads(raw[56:56 + hlen])["nodes"][0]["attrs"]["shape"]
    del raw
    x = np.random.default_rng(0).standard_normal((batch, c, h, w), dtype=np.float32)
    # baseline: the interpreter, numpy, the module, the input batch and a tiny engine (thread
    # pool, code pages); loading (decoding included), building and running come after it
    tiny = ff.Graph([ff.Node("input", [], {"shape": [c, h, w]})], 0)
    sbnn_runtime.Engine(tiny, threads, backend="native")(x[:1])
    del tiny
    # the resident size now, not the high-water mark: memory freed since (import, header
    # parse) would otherwise hide what loading reuses of it
    base = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
    try:  # reset the high-water mark (VmHWM) to the current size
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm = True
    except OSError:
        hwm = False
    eng = sbnn_runtime.load(path, threads, backend="native", max_macs="inf", max_memory="inf")
    y = eng(x)
    t = []
    if mode == "time":
        for _ in range(3):
            t0 = time.perf_counter()
            eng(x)
            t.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if hwm:
        status = open("/proc/self/status").read()
        peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
    cost = graph_cost(eng.graph)
    print(json.dumps({"rss": peak - base, "estimate": cost.memory(batch, threads),
                      "work": cost.work * batch, "macs": cost.macs * batch,
                      "seconds": min(t) if t else None}))
""")


def measure(seed: int | str, mode: str, batch: int, threads: int, scale: int) -> dict:
    """One graph in a fresh interpreter: ``seed`` a random graph's, or a hostile file's name."""
    from random_graphs import hostile_files, random_graph
    from sbnn_runtime import fileformat as ff

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "g.sbnn")
        if isinstance(seed, str):
            Path(path).write_bytes(hostile_files()[seed])
        else:
            ff.save(random_graph(seed, scale), path)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        r = subprocess.run([sys.executable, "-c", _CHILD, path, str(batch), str(threads), mode],
                           capture_output=True, text=True, timeout=600, env=env)
    if r.returncode:
        raise RuntimeError(f"graph {seed}: child failed: {r.stderr.strip()[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["seed"] = seed
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["rss", "time"])
    ap.add_argument("--graphs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="first graph seed")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scale", type=int, default=4, help="channel multiplier of the graphs")
    ap.add_argument("--margin", type=float, default=64, help="MiB allowed over the estimate")
    ap.add_argument("--factor", type=float, default=10, help="allowed spread around the median")
    ap.add_argument("--json", help="write every measurement to this file")
    ap.add_argument("--hostile", action="store_true",
                    help="also the small files of large cost of random_graphs.hostile_files")
    a = ap.parse_args(argv)
    rows = []
    seeds: list[int | str] = list(range(a.seed, a.seed + a.graphs))
    if a.hostile:
        from random_graphs import hostile_files

        seeds += list(hostile_files())
    for seed in seeds:
        rows.append(measure(seed, a.mode, a.batch, a.threads, a.scale))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    mib = 1 << 20
    if a.mode == "rss":
        over = [r for r in rows if r["rss"] > r["estimate"] + a.margin * mib]
        slack = [(r["estimate"] - r["rss"]) / mib for r in rows]
        print(f"{len(rows)} graphs: peak RSS - estimate: worst {-min(slack):+.1f} MiB, "
              f"median {-statistics.median(slack):+.1f} MiB; largest estimate "
              f"{max(r['estimate'] for r in rows) / mib:.1f} MiB, largest RSS "
              f"{max(r['rss'] for r in rows) / mib:.1f} MiB; over estimate + {a.margin:g} MiB: "
              f"{len(over)}")
        for r in over:
            print(f"  graph {r['seed']}: RSS {r['rss'] / mib:.1f} MiB, estimate "
                  f"{r['estimate'] / mib:.1f} MiB")
        return 1 if over else 0
    # time: only graphs with enough work to time (at least 1e6 steps, 1 ms)
    timed = [r for r in rows if r["work"] >= 1e6 and r["seconds"] and r["seconds"] > 1e-3]
    rate = [r["seconds"] / r["work"] for r in timed]
    med = statistics.median(rate)
    off = [(r, x / med) for r, x in zip(timed, rate, strict=True)
           if not 1 / a.factor <= x / med <= a.factor]
    print(f"{len(timed)} of {len(rows)} graphs timed: seconds per G work units median "
          f"{med * 1e9:.3g}, min {min(rate) * 1e9:.3g} ({min(rate) / med:.2f}x), max "
          f"{max(rate) * 1e9:.3g} ({max(rate) / med:.2f}x); outside {a.factor:g}x of the "
          f"median: {len(off)}")
    for r, f in off:
        print(f"  graph {r['seed']}: {r['seconds'] * 1e3:.2f} ms for {r['work'] / 1e6:.1f} M "
              f"work units ({f:.2f}x the median)")
    return 1 if off else 0


if __name__ == "__main__":
    sys.exit(main())
