"""The int8 pass: a float graph plus calibration data -> the same graph with its float layers
in int8.

    >>> from sbnn_runtime import quantize
    >>> q = quantize.quantize_graph(graph, [x0, x1])   # x*: float32 (N, C, H, W) batches

Which layers: every node whose op has an int8 twin in the op table (``OpSpec.int8``: the float
convs and linears, i.e. the layers a sparse-binary network keeps in float: the first conv, the
1x1 shortcuts, depthwise convs, the classifier). Binary convs stay as they are.

How: :func:`observe` runs the graph on the calibration batches (the native engine when it is
built, else the numpy reference) and keeps the range [min, max] of each such layer's input;
:func:`quantize` turns each range into a uint8 scale and zero point
(:func:`sbnn_runtime.qkernels.qparams`) and asks the op table for the node's int8 twin, whose
weights are per-output-channel symmetric int8. The twin's output is float32, so nothing else in
the graph changes. The arithmetic is in :mod:`sbnn_runtime.qkernels`; the native engine, the C
export and ONNX (QDQ) all run the rewritten graph.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from sbnn_runtime import native, qkernels
from sbnn_runtime.ops import OPS, Graph, Node, infer_shapes, lowering

__all__ = ["int8_layers", "observe", "quantize", "quantize_graph"]

Range = tuple[float, float]


def int8_layers(graph: Graph) -> list[int]:
    """Indices of the nodes that have an int8 twin (the float layers)."""
    return [i for i, nd in enumerate(graph.nodes) if OPS[nd.op].int8 is not None]


def _update(ranges: dict[int, Range], t: int, v: np.ndarray) -> None:
    v = np.asarray(v, np.float32)
    fin = v[np.isfinite(v)]
    if not fin.size:
        return
    lo, hi = float(fin.min()), float(fin.max())
    old = ranges.get(t)
    ranges[t] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))


def observe(graph: Graph, batches: Iterable[np.ndarray], tensors: list[int] | None = None,
            backend: str = "auto", num_threads: int | None = None) -> dict[int, Range]:
    """[min, max] of each tensor in ``tensors`` (default: the inputs of :func:`int8_layers`)
    over the calibration ``batches`` (float32 (N, C, H, W) arrays).

    ``backend``: ``"native"`` (unfused, each tensor read as the engine's output), ``"reference"``
    (numpy), ``"auto"``: native when the extension is built.
    """
    infer_shapes(graph)
    if tensors is None:
        tensors = sorted({graph.nodes[i].inputs[0] for i in int8_layers(graph)})
    want = set(tensors)
    core = native.core
    use_native = backend == "native" or (backend == "auto" and core is not None
                                         and hasattr(core, "Engine"))
    ranges: dict[int, Range] = {}
    eng, ids = None, []
    if use_native:
        if core is None:
            raise RuntimeError(native.native_error or "the native engine is not built")
        eng = core.Engine(0 if num_threads is None else num_threads)
        eng.set_choice(False)
        opts = {"sparse": True, "impl": "auto"}
        for nd, fn in zip(graph.nodes, lowering(graph, "native"), strict=True):
            ids.append(fn(eng, nd, [ids[j] for j in nd.inputs], opts))
    for x in batches:
        x = np.ascontiguousarray(x, np.float32)
        if 0 in want:
            _update(ranges, 0, x)
        if eng is not None:
            for t in sorted(want - {0}):
                eng.set_output(ids[t])
                _update(ranges, t, eng.run(x, False))
            continue
        vals: list[np.ndarray | None] = [x]
        last = max(want, default=0)
        for i, nd in enumerate(graph.nodes[1:last + 1], start=1):
            vals.append(np.asarray(OPS[nd.op].reference(nd, [vals[j] for j in nd.inputs]),
                                   np.float32))
            if i in want:
                _update(ranges, i, vals[i])
    return ranges


def quantize(graph: Graph, ranges: dict[int, Range], layers: list[int] | None = None) -> Graph:
    """The graph with each node of ``layers`` (default: :func:`int8_layers`) replaced by its
    int8 twin, its input quantised with the range ``ranges[input tensor]``.

    A layer whose input range is missing stays in float. The graph's metadata gains
    ``"int8": {node name: [x_scale, x_zero]}``.
    """
    layers = int8_layers(graph) if layers is None else layers
    nodes: list[Node] = list(graph.nodes)
    done: dict[str, list] = {}
    for i in layers:
        nd = nodes[i]
        twin = OPS[nd.op].int8
        if twin is None:
            raise ValueError(f"node {i} ({nd.op} {nd.name!r}) has no int8 twin")
        r = ranges.get(nd.inputs[0])
        if r is None:
            continue
        scale, zero = qkernels.qparams(*r)
        nodes[i] = twin(nd, scale, zero)
        done[nd.name or str(i)] = [nodes[i].attrs["x_scale"], zero]
    meta = dict(graph.metadata)
    meta["int8"] = done
    out = Graph(nodes, graph.output, meta)
    infer_shapes(out)
    return out


def quantize_graph(graph: Graph, batches: Iterable[np.ndarray], backend: str = "auto",
                   num_threads: int | None = None) -> Graph:
    """:func:`observe` on ``batches``, then :func:`quantize`: the int8 graph."""
    return quantize(graph, observe(graph, batches, backend=backend, num_threads=num_threads))
