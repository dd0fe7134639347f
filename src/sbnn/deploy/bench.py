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

import os
import time
from typing import Any

import numpy as np
import torch

from sbnn import engine as sengine
from sbnn_runtime import fileformat
from sbnn_runtime.ops import Graph

__all__ = ["bench", "format_table", "to_csv", "plan_paths", "thread_scaling", "ort_baselines",
           "ort_session", "twin_onnx", "quantize_int8", "layer_info", "CALIB_BATCHES"]

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


def ort_session(ort, model_bytes: bytes, threads: int):
    """An onnxruntime CPU session of ``model_bytes`` with ``threads`` intra-op threads, run
    sequentially, all graph optimisations on."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def twin_onnx(model: torch.nn.Module, input_shape) -> bytes:
    """The float twin as ONNX: traced to a graph, then the graph's ONNX lowering."""
    from sbnn.deploy.export import to_graph
    from sbnn_runtime.lower_onnx import to_onnx

    return to_onnx(to_graph(model, tuple(input_shape))).SerializeToString()


def quantize_int8(fp32: bytes, input_shape, seed: int = 0, calib=None) -> bytes:
    """Static QDQ int8 (per-channel weights, uint8 activations) of the ONNX model ``fp32``,
    calibrated on ``calib`` (a list of float32 input batches) or, without it, on
    ``CALIB_BATCHES`` random batches."""
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
                            for _ in range(CALIB_BATCHES)] if calib is None else \
                [{"x": np.ascontiguousarray(b, dtype=np.float32)} for b in calib]

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
        fp32 = twin_onnx(twin_model, graph.input_shape)
        out["ort_fp32"] = ort_session(ort, fp32, threads)
        try:
            out["ort_int8"] = ort_session(ort, quantize_int8(fp32, graph.input_shape), threads)
        except Exception as exc:  # noqa: BLE001 - report, keep the other baselines
            notes.append(f"int8 quantisation failed: {exc}")
    else:
        notes.append("no float twin in the registry: no ort_fp32 / ort_int8")
    try:
        from sbnn_runtime.lower_onnx import to_onnx

        out["ort_sbnn"] = ort_session(ort, to_onnx(graph).SerializeToString(), threads)
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
          progress=None, onnxruntime: bool = True, seed: int = 0) -> dict[str, Any]:
    """Benchmark the ``.sbnn`` model at ``path`` on random inputs (``seed``); returns a
    JSON-able dict of medians."""
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
                x = np.random.default_rng(seed).standard_normal((n, *graph.input_shape),
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
                    run["layer_paths"] = plan_paths(graph, run["layer_names"])
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
    result["scaling"] = thread_scaling(result["runs"])
    return result


def thread_scaling(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per batch measured at 1 thread and at T > 1 threads: the sparse engine's throughput at
    T over its own at 1 thread (``wall_x``, from the medians), its process CPU time at T over
    at 1 (``cpu_ratio``: about 1 when the threads add no work), and ``idle_bound_x`` = T /
    ``cpu_ratio``: the gain a set of T idle cores would give with even slices (what a shared
    machine cannot show in wall time), beside onnxruntime int8 at T threads over sbnn at T."""
    one = {r["batch"]: r for r in runs if r["threads"] == 1}
    out = []
    for r in runs:
        b, t = r["batch"], r["threads"]
        if t <= 1 or b not in one:
            continue
        r1 = one[b]
        cpu_ratio = r["cpu_s"]["sparse"] / max(r1["cpu_s"]["sparse"], 1e-12)
        row = {"batch": b, "threads": t,
               "wall_x": r1["median_s"]["sparse"] / max(r["median_s"]["sparse"], 1e-12),
               "cpu_ratio": cpu_ratio, "idle_bound_x": t / max(cpu_ratio, 1e-12)}
        if "ort_int8" in r["speedup"]:
            row["ort_int8_x"] = r["speedup"]["ort_int8"]
        out.append(row)
    return out


def plan_paths(graph: Graph, labels: list[str]) -> list[str]:
    """The module path (``layers.2.conv1``) of each entry of the engine's plan, given as op
    labels in run order (fused ops joined by ``+``: ``sbconv2d+add+hardtanh``): the name the
    exporter gave the first graph node of that op not yet taken. An entry without a match keeps
    its label; an old file's unnamed node gives ``#<node index>``."""
    taken: set[int] = set()
    out = []
    for label in labels:
        ops = label.split(":")[0].split("+")
        hit = next((i for i, nd in enumerate(graph.nodes) if i not in taken and nd.op == ops[0]),
                   None)
        if hit is None:
            out.append(label)
            continue
        taken.add(hit)
        for op in ops[1:]:  # the fused followers: the next node of each op after the head
            nxt = next((i for i in range(hit + 1, len(graph.nodes))
                        if i not in taken and graph.nodes[i].op == op), None)
            if nxt is not None:
                taken.add(nxt)
        out.append(graph.nodes[hit].name or f"#{hit}")
    return out


def _short(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters from the left (a module path's tail tells most)."""
    return text if len(text) <= width else "~" + text[-(width - 1):]


_CANDIDATES = ("sparse", "dense", "float_twin", "ort_fp32", "ort_int8", "ort_sbnn")


def _keys(res: dict[str, Any]) -> list[str]:
    seen = res["runs"][0]["median_s"] if res["runs"] else {}
    return [k for k in _CANDIDATES if k in seen]


def format_table(res: dict[str, Any], layers: bool = True) -> str:
    """Whole-model table (one row per configuration and candidate), then per-layer tables of
    the binary convs for each configuration, named by module path; at most 100 columns."""
    keys = _keys(res)
    lines = [_short(f"model {res['model']}  input {tuple(res['input_shape'])}"
                    + (f"  float twin {res['float_twin']}" if res.get("float_twin") else ""),
                    100)]
    if res.get("onnxruntime") not in (None, "ok"):
        lines.append(_short(f"onnxruntime: {res['onnxruntime']}", 100))
    lines.append("latency: median wall ms; cpu: process CPU ms (all threads; = latency without "
                 "preemption at 1 thread)")
    lines.append(f"{'batch':>5} {'thr':>3}  {'candidate':<11} {'ms':>10} {'/sparse':>8}  "
                 f"{'cpu ms':>10} {'/sparse':>8}")
    for r in res["runs"]:
        for k in keys:
            ratio = "" if k == "sparse" else f"{r['speedup'][k]:.2f}x"
            cratio = "" if k == "sparse" else f"{r['cpu_speedup'][k]:.2f}x"
            lines.append(f"{r['batch']:>5} {r['threads']:>3}  {k:<11} "
                         f"{1e3 * r['median_s'][k]:>10.3f} {ratio:>8}  "
                         f"{1e3 * r['cpu_s'][k]:>10.3f} {cratio:>8}".rstrip())
    scaling = res.get("scaling") or []
    if scaling:
        lines.append("\nthreads (sparse engine, same run): throughput x its own at 1 thread "
                     "(wall medians),")
        lines.append("  CPU time / 1 thread's, T / that (the bound on T idle cores)")
        for sc in scaling:
            o = f", ort_int8 {sc['ort_int8_x']:.2f}x slower" if "ort_int8_x" in sc else ""
            lines.append(f"  batch {sc['batch']}, {sc['threads']} threads: {sc['wall_x']:.2f}x, "
                         f"cpu {sc['cpu_ratio']:.2f}, bound {sc['idle_bound_x']:.2f}x{o}")
        if res.get("onnxruntime") == "ok":
            # measured: ReActNet-18 batch 16, cpu ratio 1.68 beside onnxruntime, 1.04 without
            lines.append("  (onnxruntime's threads spin on into the next candidate's CPU time: "
                         "rerun with")
            lines.append("  --no-onnxruntime for a clean CPU ratio)")
    if layers:
        for r in res["runs"]:
            if not r["layers"].get("sparse"):
                continue
            lines.append(f"\nper layer, batch {r['batch']}, {r['threads']} thread(s): convs of "
                         "the engine's fused plan, kernel = its choice (ms)")
            lines.append(f"{'#':>3} {'module':<30} {'op':<22} {'kernel':<12} {'engine':>8} "
                         f"{'dense':>8} {'d/e':>7}")
            L = r["layers"]
            kern = r.get("kernels") or []
            ops = r.get("layer_names") or res["layer_names"]
            paths = r.get("layer_paths") or ops
            for i, op in enumerate(ops):
                if i >= len(kern) or not kern[i] or i >= len(L["sparse"]):
                    continue  # only convs name a kernel
                sp, de = L["sparse"][i], L["dense"][i]
                k = kern[i] if i < len(kern) else ""
                lines.append(f"{i:>3} {_short(paths[i], 30):<30} {_short(op, 22):<22} "
                             f"{_short(k, 12):<12} {1e3 * sp:>8.3f} {1e3 * de:>8.3f} "
                             f"{de / max(sp, 1e-12):>6.2f}x")
    return "\n".join(lines)


def to_csv(res: dict[str, Any]) -> str:
    """The results as CSV: one row per (batch, threads, candidate) of the whole model
    (``scope=model``) and per (batch, threads, plan entry) of the per-layer timings
    (``scope=layer``); times in milliseconds. ``ratio``: the candidate's time over the sparse
    engine's (model rows), the dense kernel's over the engine's choice (layer rows)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["scope", "batch", "threads", "name", "op", "kernel", "ms", "cpu_ms",
                "ratio", "dense_ms"])
    for r in res["runs"]:
        for k in _keys(res):
            w.writerow(["model", r["batch"], r["threads"], k, "", "",
                        f"{1e3 * r['median_s'][k]:.6f}", f"{1e3 * r['cpu_s'][k]:.6f}",
                        "" if k == "sparse" else f"{r['speedup'][k]:.6f}", ""])
        L = r.get("layers") or {}
        ops = r.get("layer_names") or res.get("layer_names") or []
        paths = r.get("layer_paths") or ops
        kern = r.get("kernels") or []
        for i, sp in enumerate(L.get("sparse") or []):
            de = L["dense"][i]
            w.writerow(["layer", r["batch"], r["threads"], paths[i] if i < len(paths) else i,
                        ops[i] if i < len(ops) else "", kern[i] if i < len(kern) else "",
                        f"{1e3 * sp:.6f}", "", f"{de / max(sp, 1e-12):.6f}", f"{1e3 * de:.6f}"])
    return buf.getvalue()
