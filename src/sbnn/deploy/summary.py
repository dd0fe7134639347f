"""``sbnn.summary(model)``: one table of every layer (``sbnn summary RUN|MODEL.sbnn`` is
:mod:`sbnn.cli.summary`).

Like larq's ``lq.models.summary``: one row per layer of the deployed graph (what
:func:`sbnn.deploy.export.to_graph` makes of the model, BatchNorm folded, so the rows are what the
engine runs), float layers included, with

* ``kind``: the engine op (``sbconv2d`` binary conv, ``conv2d`` float conv, ``linear``, pooling...);
* ``output``: the output shape of one image, ``(C, H, W)`` or ``(F,)``;
* ``params``: binary weights + float values the layer stores;
* ``ones``: the ones fraction of a binary layer's bits, ``bits/w``: the bits per binary weight
  as stored (run-length Rice code of the ``.sbnn`` format), ``0-kern``: its all-zero kernels;
* ``memory``: the bytes the layer's parameters take in the file (float32 for float values);
* ``bin ops`` / ``MACs``: binary multiply-accumulates (XNOR/AND + popcount, binary-input binary
  convs) and float multiply-accumulates per image (:func:`sbnn_runtime.ops.graph_macs`).

Totals split binary and float, and the whole file's size (its serialised ``.sbnn`` bytes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sbnn_runtime import fileformat
from sbnn_runtime.fileformat import Graph, encode_bits, infer_shapes
from sbnn_runtime.ops import graph_macs

__all__ = ["Summary", "summary", "graph_summary", "format_summary"]


@dataclass
class Summary:
    """Rows (one dict per layer) and totals; ``str(summary)`` is the table."""

    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return format_summary(self)

    def to_dict(self) -> dict:
        return {"title": self.title, "rows": self.rows, "totals": self.totals}


def _layer_row(nd, shape, macs: int) -> dict[str, Any]:
    row: dict[str, Any] = {"name": nd.name, "kind": nd.op, "output": list(shape),
                           "binary_params": 0, "float_params": 0, "ones_fraction": None,
                           "bits_per_weight": None, "zero_kernels": None, "memory_bytes": 0,
                           "binary_ops": 0, "float_macs": 0}
    stored_bits = 0
    for key, arr in nd.params.items():
        if nd.op == "sbconv2d" and key == "bits":
            blob, _ = encode_bits(arr)
            row["binary_params"] = int(arr.size)
            stored_bits += 8 * len(blob)
            row["ones_fraction"] = float(arr.mean()) if arr.size else 0.0
            row["bits_per_weight"] = 8 * len(blob) / arr.size if arr.size else 0.0
            kern = arr.reshape(arr.shape[0] * arr.shape[1], -1)
            row["zero_kernels"] = float((kern.max(1) == 0).mean()) if kern.size else 0.0
        else:
            row["float_params"] += int(arr.size)
            stored_bits += 32 * int(arr.size)
    row["memory_bytes"] = (stored_bits + 7) // 8
    if nd.op == "sbconv2d" and nd.attrs.get("binary_input"):
        row["binary_ops"] = int(macs)
    else:
        row["float_macs"] = int(macs)
    return row


def graph_summary(graph: Graph, file_bytes: int | None = None, title: str = "") -> Summary:
    """The :class:`Summary` of an engine graph; ``file_bytes``: the ``.sbnn`` file's size
    (default: the graph's serialised size)."""
    shapes = infer_shapes(graph)
    macs = graph_macs(graph)
    rows = [_layer_row(nd, shapes[i], macs[i]) for i, nd in enumerate(graph.nodes)
            if nd.op != "input"]
    if file_bytes is None:
        file_bytes = len(fileformat.dumps(graph))
    binary = [r for r in rows if r["binary_params"]]
    bin_w = sum(r["binary_params"] for r in rows)
    bin_mem = sum((r["bits_per_weight"] or 0) * r["binary_params"] for r in binary) / 8
    totals = {
        "layers": len(rows),
        "binary_layers": len(binary),
        "binary_params": bin_w,
        "float_params": sum(r["float_params"] for r in rows),
        "ones_fraction": (sum(r["ones_fraction"] * r["binary_params"] for r in binary) / bin_w
                          if bin_w else None),
        "bits_per_binary_weight": 8 * bin_mem / bin_w if bin_w else None,
        "binary_memory_bytes": int(round(bin_mem)),
        "float_memory_bytes": 4 * sum(r["float_params"] for r in rows),
        "memory_bytes": sum(r["memory_bytes"] for r in rows),
        "binary_ops": sum(r["binary_ops"] for r in rows),
        "float_macs": sum(r["float_macs"] for r in rows),
        "file_bytes": int(file_bytes),
    }
    return Summary(rows, totals, title, dict(graph.metadata))


def _fmt_int(v: int) -> str:
    if v >= 10_000_000:
        return f"{v / 1e6:.1f}M"
    if v >= 100_000:
        return f"{v / 1e3:.0f}k"
    return str(v)


def _fmt_bytes(v: float) -> str:
    return f"{v / 1024:.1f} KiB" if v >= 1024 else f"{int(v)} B"


def format_summary(s: Summary) -> str:
    heads = ["layer", "kind", "output", "params", "ones", "bits/w", "0-kern", "memory",
             "bin ops", "MACs"]
    table = []
    for r in s.rows:
        params = r["binary_params"] + r["float_params"]
        table.append([
            r["name"], r["kind"], "x".join(str(v) for v in r["output"]), _fmt_int(params),
            "-" if r["ones_fraction"] is None else f"{100 * r['ones_fraction']:.2f}%",
            "-" if r["bits_per_weight"] is None else f"{r['bits_per_weight']:.3f}",
            "-" if r["zero_kernels"] is None else f"{100 * r['zero_kernels']:.1f}%",
            _fmt_bytes(r["memory_bytes"]) if r["memory_bytes"] else "0",
            _fmt_int(r["binary_ops"]) if r["binary_ops"] else "0",
            _fmt_int(r["float_macs"]) if r["float_macs"] else "0"])
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h)
              for i, h in enumerate(heads)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    out = [s.title] if s.title else []
    out += [line(heads), "-" * len(line(heads))]
    out += [line(t) for t in table]
    t = s.totals
    out.append("-" * len(line(heads)))
    ones = "-" if t["ones_fraction"] is None else f"{100 * t['ones_fraction']:.2f} %"
    bpw = "-" if t["bits_per_binary_weight"] is None else f"{t['bits_per_binary_weight']:.3f}"
    out += [
        f"binary: {t['binary_layers']} layer(s), {t['binary_params']} weights, ones {ones}, "
        f"{bpw} bits/weight, {_fmt_bytes(t['binary_memory_bytes'])}, "
        f"{_fmt_int(t['binary_ops'])} binary ops/image",
        f"float:  {t['float_params']} params, {_fmt_bytes(t['float_memory_bytes'])}, "
        f"{_fmt_int(t['float_macs'])} MACs/image",
        f"total:  {t['layers']} layers, parameters {_fmt_bytes(t['memory_bytes'])}, "
        f"file {_fmt_bytes(t['file_bytes'])} ({t['file_bytes']} bytes)",
    ]
    return "\n".join(out)


def summary(model, input_shape: tuple[int, int, int] | None = None, *,
            print_fn=None) -> Summary:
    """The :class:`Summary` of ``model``: an ``nn.Module`` (give ``input_shape`` ``(C, H, W)``),
    a ``.sbnn`` file, or an engine ``Graph``. ``print_fn``
    (e.g. ``print``) also prints the table."""
    if isinstance(model, Graph):
        s = graph_summary(model)
    elif isinstance(model, (str, os.PathLike)):
        p = Path(model)
        if not p.is_file():
            raise FileNotFoundError(f"no .sbnn file at '{p}' (for a run folder use `sbnn "
                                    "summary RUN` or summary(sbnn.load_model(RUN), shape))")
        s = graph_summary(fileformat.load(p), p.stat().st_size, title=str(p))
    else:
        from sbnn.deploy.export import to_graph

        if input_shape is None:
            raise ValueError("summary(model) needs input_shape=(C, H, W) of one sample, e.g. "
                             "(1, 28, 28) for Fashion-MNIST")
        s = graph_summary(to_graph(model, tuple(input_shape)), title=type(model).__name__)
    if print_fn is not None:
        print_fn(str(s))
    return s
