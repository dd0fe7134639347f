"""The same network as a standard ONNX graph (``sbnn export --onnx model.onnx``).

Built from the engine graph (:mod:`sbnn.fileformat`), with standard operators only (opset 17):
a sparse-binary conv becomes ``Where(GreaterOrEqual(x, thr), 1, -1)`` (``Sign`` would map 0 to
0, but sbnn's ``sign(0) = +1``) followed by a float ``Conv`` with the dequantized weight
``eta'_c * b + xi'_c`` and the folded bias, which is exactly
``eta'_c conv(x, b) + xi'_c conv(x, 1) + bias'_c``. Zero padding of the binarised input stays 0,
as in the engine. The weights are float32 here (32 bits per weight): ONNX runtimes have no
sparse-binary convolution, so this file is for compatibility, not size.
"""

from __future__ import annotations

import os

import numpy as np

from sbnn._io import atomic_write
from sbnn.engine import dequantized_weight
from sbnn.fileformat import Graph

__all__ = ["to_onnx", "save_onnx", "OPSET"]

OPSET = 17


def to_onnx(graph: Graph):
    """An ``onnx.ModelProto`` computing ``graph``: input ``x`` (N, C, H, W) -> ``logits``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shapes = graph.shapes()
    inits: list = []
    nodes: list = []

    def const(name: str, arr) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    def chan(name: str, v: np.ndarray, i: int) -> str:
        # per-channel vector against a (N, C, H, W) or flat (N, F) tensor
        return const(name, v.reshape(-1, 1, 1) if len(shapes[i]) == 3 else v.reshape(-1))

    names = ["x"]
    for i, nd in enumerate(graph.nodes[1:], start=1):
        P, A = nd.params, nd.attrs
        src = [names[j] for j in nd.inputs]
        out = f"t{i}"
        pre = f"n{i}"
        op = nd.op
        if op in ("conv2d", "sbconv2d"):
            x = src[0]
            if op == "sbconv2d" and A["binary_input"]:
                c = shapes[nd.inputs[0]][0]
                thr = P.get("thr", np.zeros(c, np.float32))
                ge = f"{pre}_ge"
                nodes.append(helper.make_node("GreaterOrEqual",
                                              [x, const(f"{pre}_thr", thr.reshape(1, -1, 1, 1))],
                                              [ge]))
                x = f"{pre}_xb"
                nodes.append(helper.make_node("Where", [ge, const(f"{pre}_one", 1.0),
                                                        const(f"{pre}_mone", -1.0)], [x]))
            w = P["weight"] if op == "conv2d" else dequantized_weight(P)
            ins = [x, const(f"{pre}_w", w)]
            if "bias" in P:
                ins.append(const(f"{pre}_b", P["bias"]))
            p = A["padding"]
            nodes.append(helper.make_node("Conv", ins, [out], kernel_shape=list(w.shape[2:]),
                                          strides=[A["stride"]] * 2, pads=[p] * 4, name=nd.name))
        elif op == "affine":
            m = f"{pre}_mul"
            nodes.append(helper.make_node("Mul", [src[0], chan(f"{pre}_s", P["scale"], i)], [m]))
            nodes.append(helper.make_node("Add", [m, chan(f"{pre}_t", P["shift"], i)], [out],
                                          name=nd.name))
        elif op == "hardtanh":
            nodes.append(helper.make_node("Clip", [src[0], const(f"{pre}_lo", A["lo"]),
                                                   const(f"{pre}_hi", A["hi"])], [out],
                                          name=nd.name))
        elif op == "relu":
            nodes.append(helper.make_node("Relu", src, [out], name=nd.name))
        elif op == "rprelu":
            z, pz = f"{pre}_z", f"{pre}_pz"
            nodes.append(helper.make_node("Sub", [src[0], chan(f"{pre}_si", P["shift_in"], i)],
                                          [z]))
            nodes.append(helper.make_node("PRelu", [z, chan(f"{pre}_sl", P["slope"], i)], [pz]))
            nodes.append(helper.make_node("Add", [pz, chan(f"{pre}_so", P["shift_out"], i)],
                                          [out], name=nd.name))
        elif op == "add":
            nodes.append(helper.make_node("Add", src, [out], name=nd.name))
        elif op in ("avgpool", "maxpool"):
            kw = dict(kernel_shape=[A["k"]] * 2, strides=[A["stride"]] * 2, pads=[A["pad"]] * 4)
            if op == "avgpool":
                kw["count_include_pad"] = int(A["count_include_pad"])
            nodes.append(helper.make_node("AveragePool" if op == "avgpool" else "MaxPool", src,
                                          [out], name=nd.name, **kw))
        elif op == "global_avgpool":
            nodes.append(helper.make_node("GlobalAveragePool", src, [out], name=nd.name))
        elif op == "flatten":
            nodes.append(helper.make_node("Flatten", src, [out], axis=1, name=nd.name))
        elif op == "linear":
            ins = [src[0], const(f"{pre}_w", P["weight"])]
            if "bias" in P:
                ins.append(const(f"{pre}_b", P["bias"]))
            nodes.append(helper.make_node("Gemm", ins, [out], transB=1, name=nd.name))
        else:  # pragma: no cover - the file format knows no other op
            raise ValueError(f"op {op!r} has no ONNX form")
        names.append(out)
    nodes.append(helper.make_node("Identity", [names[graph.output]], ["logits"]))
    c, h, w = graph.input_shape
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, h, w])
    y_info = helper.make_tensor_value_info(
        "logits", TensorProto.FLOAT, ["N", *shapes[graph.output]])
    g = helper.make_graph(nodes, "sbnn", [x_info], [y_info], initializer=inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="sbnn")
    model.ir_version = min(model.ir_version, 8)  # readable by onnxruntime releases since 1.10
    onnx.checker.check_model(model)
    return model


def save_onnx(graph: Graph, path: str | os.PathLike) -> None:
    """Write the ONNX form of ``graph`` to ``path`` atomically."""
    data = to_onnx(graph).SerializeToString()
    atomic_write(path, data)
