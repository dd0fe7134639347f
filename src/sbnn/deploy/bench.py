"""Whole-model and per-layer latency of a ``.sbnn`` model against its baselines (``sbnn bench``).

For each batch size and thread count, measured in the same run, medians over ``repeat`` timed
runs after ``warmup`` runs:

``sparse``
    the model in the native engine as it loads by default: each binary conv on the faster of
    the sparse kernel (work grows with the 1-bits) and the dense one, chosen per layer at the
    first run of each batch size, and conv + residual add + activation fused (the per-layer
    table names the kernel each layer runs);
``dense``
    the same graph with the dense bit-packed XNOR/popcount binary conv everywhere
    (``sparse=False``, the BNN baseline);
``float_twin``
    PyTorch float32 (eager) on the registry's full-precision twin (``<model>_fp``) when the file
    names its model;
``ort_fp32`` / ``ort_int8``
    onnxruntime on the ONNX lowering of that float twin (traced to a graph by
    :func:`sbnn.deploy.export.to_graph`, lowered by :mod:`sbnn_runtime.lower_onnx`), in float32 and
    statically quantised to int8 (``quantize_static``, QDQ, per-channel weights, uint8
    activations), calibrated on ``CALIB_BATCHES`` batches of standard-normal random images
    (the bench has no data set; a real calibration set changes the scales, not the op count);
``ort_sbnn``
    onnxruntime on the ONNX lowering of the model's own graph
    (:func:`sbnn_runtime.lower_onnx.to_onnx`: binarise, then a float ``Conv`` with the
    dequantized weights): what the same network costs in a float runtime.

No backend is rebuilt here op by op: every baseline is a lowering of a graph.

onnxruntime is optional: without it the ``ort_*`` rows are left out and the result says why.
Sessions get ``intra_op_num_threads`` = the thread count of the row. Ratios are baseline /
sparse (> 1: the sparse engine is faster).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np
import torch

from sbnn import engine as sengine
from sbnn_runtime import fileformat
from sbnn_runtime.ops import Graph

__all__ = ["bench", "format_table", "add_parser", "ort_baselines", "layer_info",
           "CALIB_BATCHES"]

CALIB_BATCHES = 4  # random calibration batches of 8 images for the int8 baseline


def _float_twin(graph: Graph):
    name = graph.metadata.get("model")
    if not name:
        return None
    from sbnn import models

    twin = name if name.endswith("_fp") else f"{name}_fp"
    if not models.is_registered(twin):
        return None
    out = graph.shapes()[graph.output]
    kwargs = dict(graph.metadata.get("model_kwargs") or {})
    m = models.create(twin, num_classes=int(np.prod(out)), in_chans=graph.input_shape[0],
                      **kwargs)
    return twin, m.eval()


def _ort_session(ort, model_bytes: bytes, threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def _twin_onnx(model: torch.nn.Module, input_shape) -> bytes:
    """The float twin as ONNX: traced to a graph, then the graph's ONNX lowering."""
    from sbnn.deploy.export import to_graph
    from sbnn_runtime.lower_onnx import to_onnx

    return to_onnx(to_graph(model, tuple(input_shape))).SerializeToString()


def _quantize_int8(fp32: bytes, input_shape, seed: int = 0) -> bytes:
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    rng = np.random.default_rng(seed)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = [{"x": rng.standard_normal((8, *input_shape), dtype=np.float32)}
                            for _ in range(CALIB_BATCHES)]

        def get_next(self):
            return self.batches.pop() if self.batches else None

    with tempfile.TemporaryDirectory() as d:
        src, pre, dst = (os.path.join(d, n) for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        with open(src, "wb") as f:
            f.write(fp32)
        try:  # the recommended pre-processing (shape inference, BN folding)
            quant_pre_process(src, pre)
        except Exception:  # noqa: BLE001 - optional step; quantize the raw export instead
            pre = src
        quantize_static(pre, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        with open(dst, "rb") as f:
            return f.read()


def ort_baselines(graph: Graph, twin_model, threads: int) -> tuple[dict[str, Any], str | None]:
    """onnxruntime sessions ``{name: session}`` for ``ort_fp32`` / ``ort_int8`` (float twin) and
    ``ort_sbnn`` (sbnn's ONNX graph), and why any are missing (None when all are there)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {}, f"onnxruntime not installed ({exc}); pip install onnxruntime"
    out: dict[str, Any] = {}
    notes = []
    if twin_model is not None:
        fp32 = _twin_onnx(twin_model, graph.input_shape)
        out["ort_fp32"] = _ort_session(ort, fp32, threads)
        try:
            out["ort_int8"] = _ort_session(ort, _quantize_int8(fp32, graph.input_shape), threads)
        except Exception as exc:  # noqa: BLE001 - report, keep the other baselines
            notes.append(f"int8 quantisation failed: {exc}")
    else:
        notes.append("no float twin in the registry: no ort_fp32 / ort_int8")
    try:
        from sbnn_runtime.lower_onnx import to_onnx

        out["ort_sbnn"] = _ort_session(ort, to_onnx(graph).SerializeToString(), threads)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"sbnn ONNX graph failed: {exc}")
    return out, "; ".join(notes) or None


def layer_info(engine) -> list[dict[str, Any]]:
    """Per op of a native :class:`sbnn.engine.Engine`: name and the kernel it runs (binary
    convs: ``sparse`` / ``dense`` as chosen at load time, with the ISA). Empty when the
    extension is older than the per-layer choice."""
    nat = getattr(engine, "_native", None)
    if nat is None or not hasattr(nat, "layer_info"):
        return []
    return [dict(d) for d in nat.layer_info()]


def _interleaved(fns: dict[str, Any], warmup: int, repeat: int) -> dict[str, list]:
    """Time every candidate once per round, round-robin, so that load from other processes
    hits all of them alike; returns each candidate's list of samples (seconds or per-op)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            out = fn()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            samples[k].append((dt, dc) if out is None else [s for _, s in out])
    return samples


def bench(path: str | os.PathLike, batches=(1, 32), threads=(1, 2), warmup: int = 3,
          repeat: int = 10, float_twin: bool = True, layers: bool = True,
          progress=None, onnxruntime: bool = True) -> dict[str, Any]:
    """Benchmark the ``.sbnn`` model at ``path``; returns a JSON-able dict of medians."""
    graph = fileformat.load(path)
    twin = _float_twin(graph) if float_twin else None
    names = [f"{nd.op}:{nd.name}" for nd in graph.nodes[1:]]
    result: dict[str, Any] = {
        "model": os.fspath(path), "metadata": graph.metadata, "input_shape": graph.input_shape,
        "float_twin": twin[0] if twin else None, "warmup": warmup, "repeat": repeat,
        "torch_version": torch.__version__, "runs": [],
    }
    from sbnn_runtime.native import core

    if core is not None and hasattr(core, "default_impl"):
        result["engine_impl"] = str(core.default_impl())
    old_threads = torch.get_num_threads()
    try:
        for nt in threads:
            torch.set_num_threads(nt)
            sparse = sengine.Engine(graph, nt, sparse=True, backend="native")
            dense = sengine.Engine(graph, nt, sparse=False, backend="native")
            sessions: dict[str, Any] = {}
            if onnxruntime:
                sessions, note = ort_baselines(graph, twin[1] if twin else None, nt)
                result["onnxruntime"] = note or "ok"
            for n in batches:
                x = np.random.default_rng(0).standard_normal((n, *graph.input_shape),
                                                             dtype=np.float32)
                xt = torch.from_numpy(x)
                fns: dict[str, Any] = {
                    "sparse": lambda x=x, e=sparse: (e.run(x), None)[1],
                    "dense": lambda x=x, e=dense: (e.run(x), None)[1],
                }
                if twin is not None:
                    def run_twin(xt=xt):
                        with torch.no_grad():
                            twin[1](xt)

                    fns["float_twin"] = run_twin
                for k, sess in sessions.items():
                    fns[k] = lambda x=x, sess=sess: (sess.run(None, {"x": x}), None)[1]
                tot = _interleaved(fns, warmup, repeat)
                # cpu_s: process CPU time (all threads); with one thread it is the latency
                # without the time other processes held the core (shared machines)
                run: dict[str, Any] = {"batch": n, "threads": nt,
                                       "median_s": {k: float(np.median([t for t, _ in v]))
                                                    for k, v in tot.items()},
                                       "cpu_s": {k: float(np.median([c for _, c in v]))
                                                 for k, v in tot.items()},
                                       "layers": {}}
                if layers:
                    # the engine's plan (fused ops as one), the same for both engines
                    per = _interleaved({
                        "sparse": lambda x=x, e=sparse: e.run(x, profile=True)[1],
                        "dense": lambda x=x, e=dense: e.run(x, profile=True)[1],
                    }, 1, max(3, repeat // 2))
                    run["layers"] = {k: [float(t) for t in np.median(np.array(v), 0)]
                                     for k, v in per.items()}
                    info = layer_info(sparse)
                    run["layer_names"] = [d["name"] for d in info] or names
                    run["kernels"] = [d.get("kernel", "") for d in info]
                s, c = run["median_s"]["sparse"], run["cpu_s"]["sparse"]
                run["speedup"] = {k: v / s for k, v in run["median_s"].items() if k != "sparse"}
                run["cpu_speedup"] = {k: v / c for k, v in run["cpu_s"].items()
                                      if k != "sparse"}
                result["runs"].append(run)
                if progress:
                    progress(run)
    finally:
        torch.set_num_threads(old_threads)
    result["layer_names"] = names
    return result


def format_table(res: dict[str, Any], layers: bool = True) -> str:
    """Whole-model table, then per-layer tables of the binary convs for each configuration."""
    keys = ["sparse", "dense"] + (["float_twin"] if res.get("float_twin") else [])
    keys += [k for k in ("ort_fp32", "ort_int8", "ort_sbnn")
             if res["runs"] and k in res["runs"][0]["median_s"]]
    head = f"{'batch':>5} {'thr':>3} " + " ".join(f"{k + ' ms':>13}" for k in keys) + \
        "  " + " ".join(f"{k + '/sp':>13}" for k in keys[1:])
    lines = [f"model {res['model']}  input {tuple(res['input_shape'])}"
             + (f"  float twin {res['float_twin']}" if res.get("float_twin") else ""), head]
    if res.get("onnxruntime") not in (None, "ok"):
        lines.insert(1, f"onnxruntime: {res['onnxruntime']}")
    for r in res["runs"]:
        lines.append(f"{r['batch']:>5} {r['threads']:>3} "
                     + " ".join(f"{1e3 * r['median_s'][k]:>13.3f}" for k in keys) + "  "
                     + " ".join(f"{r['speedup'][k]:>12.2f}x" for k in keys[1:]))
    lines.append("process CPU time (all threads; = latency without preemption at 1 thread)")
    for r in res["runs"]:
        lines.append(f"{r['batch']:>5} {r['threads']:>3} "
                     + " ".join(f"{1e3 * r['cpu_s'][k]:>13.3f}" for k in keys) + "  "
                     + " ".join(f"{r['cpu_speedup'][k]:>12.2f}x" for k in keys[1:]))
    if layers:
        names = res["layer_names"]
        for r in res["runs"]:
            if not r["layers"].get("sparse"):
                continue
            lines.append(f"\nper layer, batch {r['batch']}, {r['threads']} thread(s) (convs of "
                         "the engine's fused plan; kernel = the per-layer choice; ms)")
            lines.append(f"{'layer':<6} {'op':<24} {'kernel':<12} {'engine':>9} {'dense':>9} "
                         f"{'dense/eng':>9}")
            L = r["layers"]
            kern = r.get("kernels") or []
            lnames = r.get("layer_names") or names
            for i, nm in enumerate(lnames):
                if i >= len(kern) or not kern[i] or i >= len(L["sparse"]):
                    continue  # only convs name a kernel
                sp, de = L["sparse"][i], L["dense"][i]
                k = kern[i] if i < len(kern) else ""
                lines.append(f"{i:<6} {nm[:24]:<24} {k:<12} {1e3 * sp:>9.3f} {1e3 * de:>9.3f} "
                             f"{de / max(sp, 1e-12):>8.2f}x")
    return "\n".join(lines)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="latency of a .sbnn model vs dense-binary, PyTorch and onnxruntime "
                      "baselines",
        description="Per-layer and whole-model latency (medians after warm-up) of a .sbnn "
                    "model in the native engine (the kernel each binary conv runs, per layer), "
                    "against the same graph with dense binary convs, the float twin in "
                    "PyTorch float32, and onnxruntime fp32/int8 on the ONNX lowering of the "
                    "float twin and on the ONNX lowering of the model's graph, measured in the "
                    "same run.")
    p.add_argument("model", help=".sbnn file")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="batch sizes")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--no-float-twin", action="store_true",
                   help="skip the registry float twin (<model>_fp) baseline")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer tables")
    p.add_argument("--no-onnxruntime", action="store_true",
                   help="skip the onnxruntime baselines (float twin fp32/int8, sbnn's ONNX)")
    p.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    from sbnn_runtime.native import core, native_error

    if core is None or not hasattr(core, "Engine"):
        print(f"sbnn bench: error: the native engine is unavailable: {native_error}",
              file=sys.stderr)
        return 2

    def progress(run):
        print(f"  batch {run['batch']}, {run['threads']} thread(s): sparse "
              f"{1e3 * run['median_s']['sparse']:.3f} ms", file=sys.stderr)

    try:
        res = bench(args.model, args.batch, args.threads, args.warmup, args.repeat,
                    not args.no_float_twin, not args.no_layers, progress,
                    onnxruntime=not args.no_onnxruntime)
    except fileformat.SBNNFormatError as exc:
        print(f"sbnn bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(res, not args.no_layers))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
    return 0
