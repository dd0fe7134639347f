"""Per-layer profile of a whole network in the native engine: where the time goes, and how far
each layer is from the machine's peak.

    python benchmarks/profile_layers.py [--models resnet18:0.05 resnet18:0.01] [--runs 30]
                                        [--split-rounds 40] [--ghz 2.45] [--json out.json]
                                        [--markdown]

For each model and ones fraction the network is built as ``bench_models.py`` builds it
(registry model, closed-form bits of its initial weights, ``.sbnn`` export), loaded in the
engine (batch 1, one thread, its per-layer sparse/dense choice) and run ``--runs`` times with
``profile=True``; each op's figure is its best (minimum) over the runs, which is robust on a
loaded machine. Per op it reports:

* ``time``: the op's best time, and its share of the sum of all ops;
* ``work``: binary convs: the binary MACs the sparse kernel touches (1-bits x output pixels:
  one int8 add per 1-bit and output pixel) and the dense binary MACs (Ci*kh*kw*Co*Ho*Wo);
  float convs / linear layers: float MACs;
* ``peak``: achieved fraction of the kernel's peak. Sparse binary: 1-bit-pixel adds per second
  over ``2 x 32 int8 adds per cycle`` (two 256-bit adds per cycle, AVX2); dense binary: binary
  MACs per second over ``2 x 64 per cycle`` (two scalar 64-bit POPCNT per cycle; AVX2 has no
  vector popcount); float: MACs per second over ``2 x 8 FMA per cycle`` (two 256-bit FMAs).
  ``--ghz`` is the clock the peaks assume (default: the first ``cpu MHz`` of /proc/cpuinfo);
* ``split`` (binary convs): the same layer run alone (``_core.BConv2d``, same bits, same kernel
  the engine chose), next to two twins with all-zero bits at ``Co`` and ``2*Co`` output
  channels. An all-zero filter accumulates nothing, so a zero twin costs only the layout
  (binarising the input into planes / packing it, window sums) plus one epilogue per output
  channel: ``epilogue = t0(2Co) - t0(Co)``, ``layout = t0(Co) - epilogue``,
  ``kernel = t(Co) - t0(Co)``. Layers the engine runs dense are split the same way (the dense
  kernel's cost does not depend on the bits, so there ``kernel`` is only noise and the layer
  is layout + "epilogue" = the GEMM per output channel): the split is only meaningful for
  sparse layers, and the table says which kernel ran. Timings interleave the three layers,
  each the 10th percentile of ``--split-rounds`` calls.

The profile sum is a little below the whole-network time (the run loop, the first op's copy).
AVX-512 rows need an AVX-512 machine: run the same command there (``SBNN_ISA`` picks the
kernels, as everywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_models import MODELS, build, cpu_model, load_avg  # noqa: E402

# Peak operations per cycle assumed for one AVX2 core (see the module docstring).
PEAK_SPARSE = 2 * 32
PEAK_DENSE = 2 * 64
PEAK_FMA = 2 * 8


def cpu_ghz() -> float:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":", 1)[1]) / 1e3
    except (OSError, ValueError):
        pass
    return 2.5


def split_layer(nd, H: int, W: int, kernel: str, rounds: int) -> dict:
    """Kernel / epilogue / layout of one binary conv, from the layer and its all-zero twins."""
    from sbnn_runtime.native import core

    p = nd.params
    bits = np.ascontiguousarray(p["bits"], dtype=np.uint8)
    co = bits.shape[0]
    thr = p.get("thr")
    st, pad = int(nd.attrs["stride"]), int(nd.attrs["padding"])

    def mk(b: np.ndarray, n: int):
        e = np.resize(np.asarray(p["eta"], np.float32), n)
        xi = np.resize(np.asarray(p["xi"], np.float32), n)
        bi = np.resize(np.asarray(p["bias"], np.float32), n)
        return core.BConv2d(b, e, xi, bi, H, W, st, pad, thr, kernel, "auto", 1)

    layers = {"full": mk(bits, co), "zero": mk(np.zeros_like(bits), co),
              "zero2": mk(np.zeros((2 * co, *bits.shape[1:]), np.uint8), 2 * co)}
    x = np.random.default_rng(2).standard_normal((1, bits.shape[1], H, W), dtype=np.float32)
    ts: dict[str, list[float]] = {k: [] for k in layers}
    for _ in range(rounds):
        for k, layer in layers.items():
            t0 = time.perf_counter()
            layer(x)
            ts[k].append(time.perf_counter() - t0)
    q = {k: float(np.percentile(v, 10)) for k, v in ts.items()}
    epi = max(q["zero2"] - q["zero"], 0.0)
    return {"alone_s": q["full"], "kernel_s": max(q["full"] - q["zero"], 0.0),
            "epilogue_s": epi, "layout_s": max(q["zero"] - epi, 0.0)}


def profile_model(path: str, runs: int, split_rounds: int, ghz: float) -> dict:
    from sbnn_runtime import Engine, fileformat
    from sbnn_runtime.ops import OPS
    from sbnn_runtime.passes import graph_cost, plan

    graph = fileformat.load(path)
    shapes = graph.shapes()
    cost = graph_cost(graph, shapes)
    eng = Engine(graph, 1, sparse=True, backend="native")
    x = np.random.default_rng(1).standard_normal((1, *graph.input_shape), dtype=np.float32)
    eng.run(x)  # settles the per-layer choice
    best: list[float] = []
    names: list[str] = []
    whole = []
    for _ in range(runs):
        t0 = time.perf_counter()
        _, prof = eng.run(x, profile=True)
        whole.append(time.perf_counter() - t0)
        if not names:
            names = [nm for nm, _ in prof]
            best = [float("inf")] * len(prof)
        best = [min(b, float(s)) for b, (_, s) in zip(best, prof, strict=True)]
    info = list(eng._native.layer_info()) if hasattr(eng, "_native") else []
    # The engine runs the passes' steps in order, one profile entry per step.
    steps = plan(graph, "native").steps
    if len(steps) != len(names):
        steps = [None] * len(names)
    total = sum(best)
    hz = ghz * 1e9
    rows = []
    for k, (nm, t) in enumerate(zip(names, best, strict=True)):
        st = steps[k]
        i = st.node if st is not None else None
        nd = graph.nodes[i] if i is not None else None
        li = info[k] if k < len(info) else {}
        row = {"name": nd.name if nd is not None else nm, "step": nm, "time_s": t,
               "share": t / total if total else 0.0}
        if nd is not None and OPS[nd.op].bit_params:  # a binary-weight conv (the op table says)
            _, ho, wo = shapes[i]
            c, h, w = shapes[nd.inputs[0]]
            bits = nd.params["bits"]
            kern = li.get("kernel", "sparse")
            row.update(op=nd.op, cls="binary", kernel=f"{kern} {li.get('isa', '')}".strip(),
                       ones=float(bits.mean()), sparse_macs=int(bits.sum()) * ho * wo,
                       dense_macs=int(bits.size) * ho * wo)
            row.update(split_layer(nd, h, w, kern, split_rounds))
            k_t = row["kernel_s"] if kern == "sparse" else t
            if kern == "sparse":
                row["peak"] = row["sparse_macs"] / max(k_t, 1e-12) / (PEAK_SPARSE * hz)
            else:
                row["peak"] = row["dense_macs"] / max(t, 1e-12) / (PEAK_DENSE * hz)
        elif nd is not None and "weight" in nd.params:  # a float conv or linear layer
            row.update(op=nd.op, cls="float", kernel=li.get("kernel", ""),
                       float_macs=int(cost.node_macs[i]))
            row["peak"] = row["float_macs"] / max(t, 1e-12) / (PEAK_FMA * hz)
        else:
            row["op"] = nd.op if nd is not None else nm
        rows.append(row)
    return {"model": graph.metadata.get("model"), "ones": graph.metadata.get("ones"),
            "whole_s": float(min(whole)), "ops_sum_s": total, "rows": rows}


def us(s: float) -> str:
    return f"{s * 1e6:.1f}"


def markdown(res: dict) -> str:
    lines = [f"**{res['model']} at {res['ones']:.0%} ones**: whole run {us(res['whole_s'])} µs "
             f"(best of runs), sum of ops {us(res['ops_sum_s'])} µs.", "",
             "| op | kernel | time µs | share | kernel µs | epilogue µs | layout µs "
             "| binary MACs touched / dense | float MACs | peak |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if r.get("cls") == "binary":
            work = f"{r['sparse_macs'] / 1e6:.2f}M / {r['dense_macs'] / 1e6:.1f}M"
            split = f"{us(r['kernel_s'])} | {us(r['epilogue_s'])} | {us(r['layout_s'])}"
            fm = ""
        else:
            work, split = "", " | | "
            fm = f"{r['float_macs'] / 1e6:.2f}M" if "float_macs" in r else ""
        pk = f"{r['peak']:.1%}" if "peak" in r else ""
        lines.append(f"| {r['name']} ({r['step']}) | {r.get('kernel', '')} | {us(r['time_s'])} | "
                     f"{r['share']:.1%} | {split} | {work} | {fm} | {pk} |")
    # Totals by category.
    b = [r for r in res["rows"] if r.get("cls") == "binary"]
    f = [r for r in res["rows"] if r.get("cls") == "float"]
    o = [r for r in res["rows"] if r not in b and r not in f]
    tot = res["ops_sum_s"]

    def s(rs, k="time_s"):
        return sum(r[k] for r in rs)

    lines += ["", f"Binary convs {us(s(b))} µs ({s(b) / tot:.0%}; alone: kernel "
              f"{us(s(b, 'kernel_s'))}, epilogue {us(s(b, 'epilogue_s'))}, layout "
              f"{us(s(b, 'layout_s'))}), float convs/linear {us(s(f))} µs ({s(f) / tot:.0%}), "
              f"other ops {us(s(o))} µs ({s(o) / tot:.0%})."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet18:0.05", "resnet18:0.01"])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--split-rounds", type=int, default=40)
    ap.add_argument("--ghz", type=float, default=None)
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--markdown", action="store_true", help="print markdown tables")
    args = ap.parse_args(argv)
    from sbnn_runtime.native import core, native_error

    if core is None:
        print(f"no native core: {native_error}", file=sys.stderr)
        return 2
    for spec in args.models:
        key, _, ones = spec.partition(":")
        if key not in MODELS or not ones:
            print(f"error: --models wants name:ones with name in {sorted(MODELS)}: {spec!r}",
                  file=sys.stderr)
            return 2
    ghz = args.ghz or cpu_ghz()
    head = {"cpu": cpu_model(), "isa": core.default_impl(),
            "ghz": ghz, "load": load_avg()}
    print(f"{head['cpu']}  isa {head['isa']}  peaks at {ghz:.2f} GHz  {head['load']}")
    out = []
    with tempfile.TemporaryDirectory() as d:
        for spec in args.models:
            key, _, ones = spec.partition(":")
            res = profile_model(build(key, float(ones), d), args.runs, args.split_rounds, ghz)
            out.append(res)
            print(markdown(res) if args.markdown else json.dumps(res, indent=1))
            print()
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({**head, "models": out}, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
