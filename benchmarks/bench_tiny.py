"""Binary convs on tiny maps: the tiny-map kernel (``core/bconv_tiny.h``) against the sparse and
dense kernels, each in an engine of one conv, batch 1 (or ``--batch``), one thread.

    python benchmarks/bench_tiny.py [--ones 0.05] [--rounds 200] [--batch 1] [--json out.json]
    python benchmarks/bench_tiny.py --models reactnet18:0.05 resnet18:0.05 [--rounds 300]

Shapes: ReActNet-18's 2x2 stage (512@2x2 and its stride-2 entry 256@4x4 -> 512) and ResNet-18's
4x4 stage (512@4x4 and its entry 256@8x8 -> 512 s2). Bits random at ``--ones``, inputs normal.
Three engines per shape (``choose=False``: the sparse kernel; ``sparse=False``: the dense one;
``SBNN_TINY_MAPS=only``: the tiny-map one) run in turn, call by call; each figure is the 10th
percentile of the engine's whole run (the same input copy and output for all three), in µs.

``--models``: whole networks instead (built as ``bench_models.py`` builds them, closed-form
bits), the engine with and without the tiny-map kernel (``SBNN_TINY_MAPS=0``) in one process,
runs interleaved, the outputs compared bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from sbnn_runtime import Engine
from sbnn_runtime.native import core, native_error
from sbnn_runtime.ops import OPS, Graph, Node

# (Ci, Co, H, stride)
SHAPES = [(512, 512, 2, 1), (256, 512, 4, 2), (512, 512, 4, 1), (256, 512, 8, 2)]


# the binary-weight conv op, named by the op table (op names are spelled only there)
_BCONV = next(name for name, op in OPS.items() if op.bit_params)


def _graph(rng, ci, co, hw, s, ones):
    bits = (rng.random((co, ci, 3, 3)) < ones).astype(np.uint8)
    p = {"bits": bits, **{k: rng.standard_normal(co).astype(np.float32)
                          for k in ("eta", "xi", "bias")}}
    return Graph([Node("input", [], {"shape": [ci, hw, hw]}),
                  Node(_BCONV, [0], {"stride": s, "padding": 1, "binary_input": True}, p)], 1)


def _engine(g, kind):
    old = os.environ.get("SBNN_TINY_MAPS")
    os.environ["SBNN_TINY_MAPS"] = "only" if kind == "tiny" else "0"
    try:
        return Engine(g, 1, backend="native", sparse=kind != "dense", choose=kind == "tiny")
    finally:
        if old is None:
            del os.environ["SBNN_TINY_MAPS"]
        else:
            os.environ["SBNN_TINY_MAPS"] = old


def whole(models: list[str], rounds: int, batch: int) -> list[dict]:
    import tempfile

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_models import build

    from sbnn_runtime import fileformat

    rows = []
    with tempfile.TemporaryDirectory() as d:
        for spec in models:
            key, ones = spec.split(":")
            g = fileformat.load(build(key, float(ones), d))
            x = np.random.default_rng(0).standard_normal((batch, *g.input_shape)) \
                .astype(np.float32)
            engs = {}
            for mode in ("0", "1"):
                old = os.environ.get("SBNN_TINY_MAPS")
                os.environ["SBNN_TINY_MAPS"] = mode
                try:
                    engs[mode] = Engine(g, 1, backend="native")
                finally:
                    if old is None:
                        del os.environ["SBNN_TINY_MAPS"]
                    else:
                        os.environ["SBNN_TINY_MAPS"] = old
                engs[mode].run(x)  # the per-layer choice
            equal = bool(np.array_equal(engs["0"].run(x), engs["1"].run(x)))
            ts: dict[str, list[float]] = {m: [] for m in engs}
            for _ in range(rounds):
                for m, e in engs.items():
                    t0 = time.perf_counter()
                    e.run(x)
                    ts[m].append(time.perf_counter() - t0)
            q = {m: float(np.percentile(v, 10)) * 1e6 for m, v in ts.items()}
            kinds = [i["kernel"] for i in engs["1"].layer_info()
                     if i["kernel"] in ("sparse", "dense", "tiny")]
            row = {"model": key, "ones": float(ones), "without_us": q["0"], "with_us": q["1"],
                   "speedup": q["0"] / q["1"], "equal": equal,
                   "tiny_layers": kinds.count("tiny"), "binary_layers": len(kinds)}
            rows.append(row)
            print(f"{spec:<18} without {q['0']:8.1f}  with {q['1']:8.1f} us  "
                  f"{row['speedup']:.2f}x  tiny {row['tiny_layers']} of {len(kinds)}  "
                  f"outputs {'equal' if equal else 'DIFFER'}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ones", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--models", nargs="+", default=None,
                    help="whole networks as model:ones (e.g. reactnet18:0.05), with and without")
    args = ap.parse_args(argv)
    if core is None:
        print(f"no native core: {native_error}", file=sys.stderr)
        return 2
    load0 = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"load {load0}, ones {args.ones}, batch {args.batch}")
    if args.models:
        rows = whole(args.models, args.rounds, args.batch)
        load1 = " ".join(f"{v:.2f}" for v in os.getloadavg())
        print(f"load {load1}")
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump({"rounds": args.rounds, "batch": args.batch, "load_before": load0,
                           "load_after": load1, "rows": rows}, f, indent=1)
                f.write("\n")
        return 0 if all(r["equal"] for r in rows) else 1
    rng = np.random.default_rng(0)
    rows = []
    for ci, co, hw, s in SHAPES:
        g = _graph(rng, ci, co, hw, s, args.ones)
        x = rng.standard_normal((args.batch, ci, hw, hw)).astype(np.float32)
        engs = {k: _engine(g, k) for k in ("sparse", "dense", "tiny")}
        outs = {k: e.run(x) for k, e in engs.items()}
        assert all(np.array_equal(outs["sparse"], v) for v in outs.values()), "outputs differ"
        ts: dict[str, list[float]] = {k: [] for k in engs}
        for _ in range(args.rounds):
            for k, e in engs.items():
                t0 = time.perf_counter()
                e.run(x)
                ts[k].append(time.perf_counter() - t0)
        q = {k: float(np.percentile(v, 10)) * 1e6 for k, v in ts.items()}
        ho = (hw + 2 - 3) // s + 1
        row = {"shape": f"{ci}->{co}@{hw}x{hw} s{s} (out {ho}x{ho})",
               **{f"{k}_us": v for k, v in q.items()},
               "best_other_over_tiny": min(q["sparse"], q["dense"]) / q["tiny"]}
        rows.append(row)
        print(f"{row['shape']:<30} sparse {q['sparse']:7.1f}  dense {q['dense']:7.1f}  "
              f"tiny {q['tiny']:7.1f} us   best other / tiny {row['best_other_over_tiny']:.2f}")
    load1 = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"load {load1}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"ones": args.ones, "rounds": args.rounds, "batch": args.batch,
                       "load_before": load0, "load_after": load1,
                       "available_isas": list(core.available_impls()), "rows": rows}, f,
                      indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
