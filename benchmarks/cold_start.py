"""Cold-start cost of a whole network in the native engine: warm calls against calls made right
after the caches were evicted (issue 20).

    python benchmarks/cold_start.py [--models resnet18:0.05 resnet18:0.01] [--repeat 40]
                                    [--evict-mb 64] [--ort] [--layers] [--json out.json]

For each model and ones fraction the network is built as ``bench_models.py`` builds it
(registry model, closed-form bits of its initial weights, ``.sbnn`` export), loaded in the
engine (batch 1, one thread, its per-layer sparse/dense choice settled by a first run), then
called in interleaved rounds, each round one call per mode:

* ``warm``: the call right after another call of the same engine;
* ``cold``: the call right after streaming over ``--evict-mb`` MB (read and written, more than
  the L3), which evicts the engine's plans, weights, activations and code from every cache;
* ``ort`` (with ``--ort``): the call right after what ``bench_models.py``'s interleaving runs
  between two engine calls: the dense engine, onnxruntime fp32 and int8 on the float twin.

Per mode it prints the p10 / median ms and the minor page faults per call
(``getrusage``, so a buffer that the allocator maps and unmaps every call shows up here).
``--layers``: the same with ``profile=True`` (per-op times, best of the rounds and median),
the ops with the largest cold - warm difference first. A network with no 1-bits at all
(``--models resnet18:0``) has sparse plans of no bytes: the cold cost that remains is the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_models import MODELS, build, cpu_model, load_avg  # noqa: E402


def minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(eng, x, modes: dict, repeat: int, profile: bool) -> dict:
    """modes: name -> what to do before the timed call (None: nothing)."""
    out = {k: {"t": [], "faults": [], "ops": {}} for k in modes}
    for _ in range(repeat):
        for k, before in modes.items():
            if before is not None:
                before()
            f0 = minflt()
            t0 = time.perf_counter()
            if profile:
                _, prof = eng.run(x, profile=True)
            else:
                eng.run(x)
            t1 = time.perf_counter()
            out[k]["faults"].append(minflt() - f0)
            out[k]["t"].append(t1 - t0)
            if profile:
                for i, (name, s) in enumerate(prof):
                    out[k]["ops"].setdefault(f"{i:02d} {name}", []).append(s)
                # the call less its ops: Python wrapper, binding, arena, output copy
                out[k]["ops"].setdefault("outside the ops", []).append(
                    t1 - t0 - sum(s for _, s in prof))
    return out


def summary(res: dict) -> dict:
    s = {}
    for k, r in res.items():
        t = np.array(r["t"])
        s[k] = {"p10_ms": float(np.percentile(t, 10) * 1e3), "median_ms": float(np.median(t) * 1e3),
                "faults_per_call": float(np.median(r["faults"])),
                "ops_us": {n: {"min": float(np.min(v) * 1e6), "median": float(np.median(v) * 1e6)}
                           for n, v in r["ops"].items()}}
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet18:0.05", "resnet18:0.01"],
                    help="model:ones, model one of " + ", ".join(MODELS))
    ap.add_argument("--files", nargs="+", default=None,
                    help=".sbnn files to run instead of --models (no torch needed)")
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--evict-mb", type=float, default=64.0)
    ap.add_argument("--ort", action="store_true", help="also a mode after an onnxruntime run")
    ap.add_argument("--layers", action="store_true", help="per-op times (profile=True)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from sbnn_runtime import Engine, fileformat
    from sbnn_runtime.native import core, native_error

    if core is None:
        print(f"error: no native core: {native_error}", file=sys.stderr)
        return 2
    if args.repeat < 1 or not args.evict_mb > 0:
        print("error: --repeat must be >= 1 and --evict-mb > 0", file=sys.stderr)
        return 2
    for spec in [] if args.files else args.models:
        key, _, ones = spec.partition(":")
        try:
            ok = key in MODELS and 0.0 < float(ones) < 1.0
        except ValueError:
            ok = False
        if not ok:
            print(f"error: --models wants name:ones with name in {sorted(MODELS)} and ones in "
                  f"(0, 1): {spec!r}", file=sys.stderr)
            return 2

    nbytes = int(args.evict_mb * 2**20)
    buf = np.zeros(nbytes // 8, dtype=np.int64)

    def evict():
        np.add(buf, 1, out=buf)  # read and write every line: others' dirty lines leave too

    evict()
    report = {"cpu": cpu_model(), "load_start": load_avg(), "evict_mb": args.evict_mb,
              "models": []}
    print(f"cpu: {report['cpu']}\nload: {report['load_start']}")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.files or args.models:
            if args.files:
                path = spec
                try:
                    fileformat.load(path)
                except (OSError, ValueError) as exc:
                    print(f"error: {path}: {exc}", file=sys.stderr)
                    return 2
            else:
                key, ones = spec.split(":")
                path = build(key, float(ones), tmp)
            graph = fileformat.load(path)
            eng = Engine(graph, 1, sparse=True, backend="native")
            x = np.random.default_rng(1).standard_normal((1, *graph.input_shape),
                                                         dtype=np.float32)
            for _ in range(3):
                eng.run(x)  # the first run settles the per-layer kernel choice
            modes = {"warm": None, "cold": evict}
            if args.ort:
                from sbnn.deploy import bench as sb

                twin = sb._float_twin(graph)
                sessions, note = sb.ort_baselines(graph, twin[1] if twin else None, 1)
                if sessions:
                    dense = Engine(graph, 1, sparse=False, backend="native")

                    def bench_like(sessions=sessions, dense=dense, x=x):
                        dense.run(x)
                        for s in sessions.values():
                            s.run(None, {"x": x})

                    modes["ort"] = bench_like
                else:
                    print(f"  (no onnxruntime mode: {note})")
            res = summary(measure(eng, x, modes, args.repeat, False))
            if args.layers:
                prof = summary(measure(eng, x, modes, args.repeat, True))
                for k in res:
                    res[k]["ops_us"] = prof[k]["ops_us"]
            report["models"].append({"model": spec, "modes": res})
            print(f"{spec}: ms p10 / median, minor page faults per call")
            for k, r in res.items():
                print(f"  {k:<5} {r['p10_ms']:7.3f} / {r['median_ms']:7.3f}  "
                      f"faults {r['faults_per_call']:.0f}")
            w = res["warm"]
            for k in res:
                if k != "warm":
                    print(f"  {k} - warm: {res[k]['p10_ms'] - w['p10_ms']:+.3f} ms (p10), "
                          f"{res[k]['median_ms'] - w['median_ms']:+.3f} ms (median)")
            if args.layers:
                ops = w["ops_us"]
                c = res["cold"]["ops_us"]
                rows = sorted(ops, key=lambda n: -(c[n]["median"] - ops[n]["median"]))
                tot_w = sum(v["median"] for n, v in ops.items() if n[0].isdigit())
                tot_c = sum(v["median"] for n, v in c.items() if n[0].isdigit())
                print(f"  per op, median µs (sum warm {tot_w:.0f}, cold {tot_c:.0f}):")
                for n in rows:
                    extra = "".join(f" {k} {res[k]['ops_us'][n]['median']:7.1f}"
                                    for k in res if k not in ("warm", "cold"))
                    print(f"    {n:<34} warm {ops[n]['median']:7.1f} cold {c[n]['median']:7.1f} "
                          f"(+{c[n]['median'] - ops[n]['median']:6.1f}){extra}")
    report["load_end"] = load_avg()
    print(f"load: {report['load_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
