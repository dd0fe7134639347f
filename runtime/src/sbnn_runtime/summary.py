"""A per-node summary of a ``.sbnn`` model: what each node holds, stores and costs.

    >>> from sbnn_runtime import summarize
    >>> s = summarize("model.sbnn")        # a path, the file's bytes, or a Graph
    >>> print(format_summary(s))

``summarize`` returns plain data (dicts, lists, ints, floats: JSON-ready), so that a front end
(``sbnn summary MODEL.sbnn``) can print or store it as it likes; :func:`format_summary` is one
text table of it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from sbnn_runtime import fileformat
from sbnn_runtime.ops import OPS, Graph, infer_shapes
from sbnn_runtime.passes import graph_cost

__all__ = ["summarize", "format_summary"]


def _stored_from_graph(graph: Graph) -> list[dict[str, int]]:
    # the blob bytes ``dumps`` would write for each param (rice_gaps for an op's bit params)
    out = []
    for nd in graph.nodes:
        sizes = {}
        for p, arr in nd.params.items():
            if p in OPS[nd.op].bit_params:
                sizes[p] = len(fileformat.encode_bits(arr)[0])
            else:
                sizes[p] = int(arr.size) * (1 if arr.dtype == np.uint8 else 4)
        out.append(sizes)
    return out


def summarize(model: Graph | str | os.PathLike | bytes | bytearray | memoryview,
              **load_kwargs: Any) -> dict[str, Any]:
    """Summarise a model given as a :class:`Graph`, a ``.sbnn`` path or the file's bytes.

    Per node (``"nodes"``, in graph order): ``index``, ``op``, ``name``, ``shape`` (output, one
    image), ``params`` (number of parameter values), ``stored_bytes`` (its blobs in the file;
    for a Graph, what :func:`sbnn_runtime.fileformat.dumps` would store), ``macs`` (per image)
    and ``binary`` (a binary conv: its MACs are XNOR/popcount ones). Binary convs also give
    ``weights`` (bits), ``ones_fraction``, ``kernels`` (``C_out * C_in``), ``zero_kernels``
    (kernels with no 1-bit, which the sparse engine skips) and ``bits_per_weight`` (stored).
    ``"totals"``: params and MACs split into binary and float, ``stored_bytes``, and
    ``file_bytes`` (the whole file, header included) and ``activation_bytes`` / ``memory_bytes``
    (one image, see :class:`sbnn_runtime.ops.GraphCost`). ``load_kwargs`` (``max_macs``,
    ``max_memory``) go to the loader.
    """
    if isinstance(model, Graph):
        graph, file_bytes = model, len(fileformat.dumps(model))
        stored = _stored_from_graph(graph)
    else:
        if isinstance(model, (bytes, bytearray, memoryview)):
            data = bytes(model)
        else:
            with open(model, "rb") as f:
                data = f.read()
        graph = fileformat.loads(data, **load_kwargs)
        file_bytes = len(data)
        stored = fileformat.stored_sizes(data)
    shapes = infer_shapes(graph)
    cost = graph_cost(graph, shapes)
    nodes = []
    tot = {"binary_params": 0, "float_params": 0, "binary_macs": 0, "float_macs": 0,
           "binary_layers": 0, "binary_ones": 0, "binary_stored_bytes": 0,
           "float_stored_bytes": 0, "entropy_bits": 0.0}
    for i, nd in enumerate(graph.nodes):
        spec = OPS[nd.op]
        binary = spec.binary(nd)
        row: dict[str, Any] = {
            "index": i, "op": nd.op, "name": nd.name, "shape": list(shapes[i]),
            "params": int(sum(a.size for a in nd.params.values())),
            "stored_bytes": int(sum(stored[i].values())), "macs": cost.node_macs[i],
            "binary": binary,
        }
        if spec.bit_params:
            bits = nd.params[spec.bit_params[0]]
            kernels = int(bits.shape[0] * bits.shape[1])
            nonzero = int(bits.reshape(kernels, -1).any(axis=1).sum()) if bits.size else 0
            ones = int(np.count_nonzero(bits))
            p = ones / bits.size if bits.size else 0.0
            row.update(weights=int(bits.size), ones_fraction=float(p),
                       kernels=kernels, zero_kernels=kernels - nonzero,
                       bits_per_weight=(8 * stored[i][spec.bit_params[0]] / bits.size
                                        if bits.size else 0.0),
                       entropy_bits=float(bits.size * _entropy(p)))
            tot["binary_params"] += int(bits.size)
            tot["float_params"] += row["params"] - int(bits.size)
            tot["binary_layers"] += 1
            tot["binary_ones"] += ones
            tot["binary_stored_bytes"] += stored[i][spec.bit_params[0]]
            tot["float_stored_bytes"] += row["stored_bytes"] - stored[i][spec.bit_params[0]]
            tot["entropy_bits"] += row["entropy_bits"]
        else:
            tot["float_params"] += row["params"]
            tot["float_stored_bytes"] += row["stored_bytes"]
        tot["binary_macs" if binary else "float_macs"] += row["macs"]
        nodes.append(row)
    nb = tot["binary_params"]
    totals = dict(tot, layers=len(nodes) - 1, params=nb + tot["float_params"],
                  ones_fraction=tot["binary_ones"] / nb if nb else None,
                  bits_per_binary_weight=8 * tot["binary_stored_bytes"] / nb if nb else None,
                  entropy_bits_per_weight=tot["entropy_bits"] / nb if nb else None,
                  macs=cost.macs, stored_bytes=int(sum(r["stored_bytes"] for r in nodes)),
                  file_bytes=file_bytes, activation_bytes=cost.activation_bytes,
                  memory_bytes=cost.memory(1, 1))
    return {"nodes": nodes, "totals": totals, "output": graph.output,
            "metadata": dict(graph.metadata)}


def _entropy(p: float) -> float:
    """H(p) in bits; H(0) = H(1) = 0."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return float(-p * np.log2(p) - (1 - p) * np.log2(1 - p))


def _num(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{unit}"
    return f"{v:g}"


def format_summary(summary: dict[str, Any], title: str = "") -> str:
    """One text table of :func:`summarize`'s result, totals last (``title``: a first line).

    The one summary of a model: ``sbnn summary``, ``python -m sbnn_runtime summary`` and
    ``sbnn export`` print it."""
    head = ("#", "op", "name", "output", "params", "ones", "0-kern", "bits/w", "stored", "MACs")
    rows = [head]
    for r in summary["nodes"]:
        sb = "weights" in r  # a node with binary weights
        rows.append((
            str(r["index"]), r["op"] + (" (bin)" if r["binary"] else ""), r["name"],
            "x".join(map(str, r["shape"])), _num(r["params"]),
            f"{100 * r['ones_fraction']:.1f}%" if sb else "",
            f"{r['zero_kernels']}/{r['kernels']}" if sb else "",
            f"{r['bits_per_weight']:.3f}" if sb else "",
            _num(r["stored_bytes"]) + "B", _num(r["macs"])))
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    t = summary["totals"]
    if t.get("binary_params"):
        binary = (f"binary: {t['binary_layers']} layer(s), {_num(t['binary_params'])} weights, "
                  f"ones {100 * t['ones_fraction']:.2f}%, {t['bits_per_binary_weight']:.3f} "
                  f"bits/weight stored (H(p) {t['entropy_bits_per_weight']:.3f}), "
                  f"{_num(t['binary_stored_bytes'])}B, {_num(t['binary_macs'])} binary MACs")
    else:
        binary = "binary: no binary layer"
    lines += [
        "-" * len(lines[0]),
        binary,
        f"float:  {_num(t['float_params'])} params, {_num(t['float_stored_bytes'])}B, "
        f"{_num(t['float_macs'])} MACs",
        f"total:  {t['layers']} layers, {_num(t['params'])} params, {_num(t['macs'])} MACs per "
        f"image, stored {_num(t['stored_bytes'])}B, file {_num(t['file_bytes'])}B "
        f"({t['file_bytes']} bytes); activations {_num(t['activation_bytes'])}B per image",
    ]
    return "\n".join(([title] if title else []) + lines)
