"""Whole networks: the sbnn engine against onnxruntime fp32 / int8 on the float twin.

    python benchmarks/bench_models.py [--batch 1 8] [--repeat 40] [--json out.json]
                                      [--models resnet18:0.05 resnet18:0.01 reactnet18:0.05]
                                      [--isa avx2] [--threads 1] [--int8]

For each model and ones fraction: build the registry network (32x32 input, 10 classes), set
every sparse-binary layer to the closed-form bits of its initial weights at that fraction
(``sbnn.init_closed_form_``), export it to ``.sbnn``, and load it three ways: the engine as it
runs by default (per-layer kernel choice), the engine with ``sparse=False`` (dense binary
kernel everywhere: the BNN baseline) and, if onnxruntime is installed, its float twin
(``<model>_fp``, exported with ``torch.onnx.export``) in onnxruntime fp32 and statically
quantised int8 (QDQ, per-channel, calibrated on random normal batches: see
``sbnn.deploy.bench``), plus sbnn's own ONNX graph in onnxruntime. All candidates are timed in
interleaved rounds in this one process (a busy phase of a shared machine hits them alike);
the table shows medians and 10th percentiles, and ratios ``other / sbnn`` of the medians and
of the p10s. ``--isa`` sets ``SBNN_ISA`` (the engine's kernels and its float GEMM).

``--int8`` adds ``sbnn_int8``: the same network with its float layers (stem, shortcuts,
classifier) in int8 (``sbnn_runtime.quantize``, calibrated on random normal batches as the
onnxruntime int8 twin is), and the ratios of onnxruntime fp32 / int8 to it. The header names
the int8 kernel the engine runs (``vnni``, ``avx2``, ``neon``, ``scalar``) and the CPU's VNNI
flag.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

MODELS = {"resnet18": "resnet18_irnet", "reactnet18": "reactnet18"}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flag(flag: str) -> bool:
    """Whether /proc/cpuinfo lists ``flag`` (False where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return flag in line.split()
    except OSError:
        pass
    return False


def load_avg() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())


def build(model_key: str, ones: float, folder: str) -> str:
    import torch

    import sbnn
    from sbnn import models
    from sbnn.deploy.export import export

    name = MODELS[model_key]
    torch.manual_seed(0)
    m = models.create(name, num_classes=10).eval()
    sbnn.init_closed_form_(m, ones)
    path = os.path.join(folder, f"{model_key}_{ones}.sbnn")
    export(m, path, (3, 32, 32), metadata={"model": name, "ones": ones}, check=False)
    return path


def interleaved(fns: dict, warmup: int, repeat: int) -> dict[str, list[float]]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[k].append(time.perf_counter() - t0)
    return out


def int8_engine(graph, threads: int):
    """The engine on ``graph`` with its float layers in int8, calibrated on 4 random normal
    batches (as the onnxruntime int8 twin is, sbnn.deploy.bench)."""
    from sbnn_runtime import Engine, quantize

    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((8, *graph.input_shape), dtype=np.float32) for _ in range(4)]
    return Engine(quantize.quantize_graph(graph, calib), threads, sparse=True, backend="native")


def bench_model(path: str, batches, threads: int, warmup: int, repeat: int,
                int8: bool = False) -> dict:
    import torch

    from sbnn.deploy import bench as sb
    from sbnn_runtime import Engine, fileformat

    torch.set_num_threads(threads)
    graph = fileformat.load(path)
    eng = Engine(graph, threads, sparse=True, backend="native")
    dense = Engine(graph, threads, sparse=False, backend="native")
    twin = sb._float_twin(graph)
    sessions, note = sb.ort_baselines(graph, twin[1] if twin else None, threads)
    res = {"model": graph.metadata.get("model"), "ones": graph.metadata.get("ones"),
           "onnxruntime": note or "ok", "runs": []}
    for n in batches:
        x = np.random.default_rng(1).standard_normal((n, *graph.input_shape), dtype=np.float32)
        want = dense.run(x)
        got = eng.run(x)  # first run at this batch: the engine settles its per-layer choice
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
        fns = {"sbnn": lambda x=x: eng.run(x), "sbnn_dense": lambda x=x: dense.run(x)}
        if int8:
            q8 = int8_engine(graph, threads)
            q8.run(x)  # its binary convs settle their kernel choice too
            fns["sbnn_int8"] = lambda x=x, q8=q8: q8.run(x)
        for k, s in sessions.items():
            fns[k] = lambda x=x, s=s: s.run(None, {"x": x})
        t = interleaved(fns, warmup, repeat)
        med = {k: float(np.median(v)) for k, v in t.items()}
        p10 = {k: float(np.percentile(v, 10)) for k, v in t.items()}
        _, prof = eng.run(x, profile=True)
        res["runs"].append({
            "batch": n, "threads": threads, "median_s": med, "p10_s": p10,
            "ratio_median": {k: v / med["sbnn"] for k, v in med.items() if k != "sbnn"},
            "ratio_p10": {k: v / p10["sbnn"] for k, v in p10.items() if k != "sbnn"},
            "sparse_vs_dense_max_rel_err": err,
            "layers": sb.layer_info(eng),
            "profile": [(nm, float(s)) for nm, s in prof],
        })
    return res


def fmt(res: dict) -> str:
    lines = []
    for r in res["runs"]:
        keys = list(r["median_s"])
        lines.append(f"{res['model']} ones={res['ones']} batch={r['batch']} "
                     f"threads={r['threads']} (onnxruntime: {res['onnxruntime']})")
        lines.append(f"  {'runtime':<12} {'median ms':>10} {'p10 ms':>9} {'x sbnn (med)':>13} "
                     f"{'x sbnn (p10)':>13}")
        for k in keys:
            rm = r["ratio_median"].get(k, 1.0)
            rp = r["ratio_p10"].get(k, 1.0)
            lines.append(f"  {k:<12} {1e3 * r['median_s'][k]:>10.3f} {1e3 * r['p10_s'][k]:>9.3f} "
                         f"{rm:>12.2f}x {rp:>12.2f}x")
        med = r["median_s"]
        if "sbnn_int8" in med:
            q = med["sbnn_int8"]
            lines.append("  int8 float layers: " + ", ".join(
                f"{k} / sbnn_int8 = {med[k] / q:.2f}x" for k in ("sbnn", "ort_fp32", "ort_int8")
                if k in med))
        kinds: dict[str, int] = {}
        for d in r["layers"]:
            if d.get("kernel"):
                kinds[d["kernel"]] = kinds.get(d["kernel"], 0) + 1
        if kinds:
            lines.append("  binary-conv kernels chosen: "
                         + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+",
                    default=["resnet18:0.05", "resnet18:0.01", "reactnet18:0.05"],
                    help="model:ones entries; models: " + ", ".join(MODELS))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--isa", help="force the engine's ISA (sets SBNN_ISA): scalar, avx2, avx512")
    ap.add_argument("--int8", action="store_true",
                    help="also time the network with its float layers in int8 (sbnn_int8)")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    if args.isa:
        os.environ["SBNN_ISA"] = args.isa
    from sbnn_runtime import native

    core = native.core
    if core is None:
        print(f"bench_models: no native engine: {native.native_error}", file=sys.stderr)
        return 2
    info = {"cpu": cpu_model(), "isa": core.default_impl(),
            "available_isas": list(core.available_impls()), "uptime_before": load_avg(),
            "python": platform.python_version(),
            "int8_kernel": core.int8_kernel("auto") if hasattr(core, "int8_kernel") else None,
            "vnni": cpu_flag("avx512_vnni") or cpu_flag("avx_vnni")}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    print(f"CPU {info['cpu']}  engine ISA {info['isa']}  int8 kernel {info['int8_kernel']}  "
          f"VNNI {'yes' if info['vnni'] else 'no'}  onnxruntime {info['onnxruntime']}")
    print(f"load: {info['uptime_before']}")
    results = []
    with tempfile.TemporaryDirectory() as d:
        for spec in args.models:
            key, _, ones = spec.partition(":")
            if key not in MODELS:
                ap.error(f"unknown model {key!r}; valid: {', '.join(MODELS)}")
            path = build(key, float(ones or 0.05), d)
            res = bench_model(path, args.batch, args.threads, args.warmup, args.repeat,
                              args.int8)
            print(fmt(res), flush=True)
            results.append(res)
    info["uptime_after"] = load_avg()
    print(f"load: {info['uptime_after']}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"machine": info, "results": results}, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
