"""The ONNX lowering of a graph: the same network as standard ONNX operators (opset 17).

    >>> from sbnn_runtime import lower_onnx
    >>> model = lower_onnx.to_onnx(graph)           # an onnx.ModelProto
    >>> lower_onnx.save_onnx(graph, "model.onnx")   # or: sbnn export --onnx model.onnx

Needs the optional extra ``pip install sbnn-runtime[onnx]`` (the ``onnx`` package); the rest of
the runtime needs numpy only, and this module imports onnx only when called.

Each op is lowered by its entry's ``lower_onnx`` in :data:`sbnn_runtime.ops.OPS`, written
against :class:`OnnxBuilder`. A sparse-binary conv becomes ``Where(GreaterOrEqual(x, thr), 1,
-1)`` (``Sign`` would map 0 to 0, but sbnn's ``sign(0) = +1``) followed by a float ``Conv`` with
the dequantized weight ``eta'_c * b + xi'_c`` and the folded bias, which is exactly
``eta'_c conv(x, b) + xi'_c conv(x, 1) + bias'_c``. Zero padding of the binarised input stays 0,
as in the engine. The weights are float32 here (32 bits per weight): ONNX runtimes have no
sparse-binary convolution, so this file is for compatibility (and as the float twin that
``sbnn bench`` times onnxruntime on), not size. Every node and initializer name is unique
(``n<i>_...``), even when the model used a module twice.
"""

from __future__ import annotations

import os

import numpy as np

from sbnn_runtime.files import atomic_write
from sbnn_runtime.ops import Graph, lowering

__all__ = ["to_onnx", "save_onnx", "OPSET", "OnnxBuilder"]

OPSET = 17


class OnnxBuilder:
    """The builder an op's ``lower_onnx`` writes to: ``node(op_type, inputs, outputs, **attrs)``,
    ``const(what, array)`` and ``chan(what, per_channel_vector)`` (initializers; return their
    names), ``tmp(what)`` (a fresh tensor name)."""

    def __init__(self, helper, numpy_helper, shapes):
        self.helper, self.numpy_helper, self.shapes = helper, numpy_helper, shapes
        self.nodes: list = []
        self.inits: list = []
        self.i = 0  # index of the graph node being lowered
        self.name = ""
        self._count = 0

    def _unique(self, what: str) -> str:
        self._count += 1
        return f"n{self.i}_{what}_{self._count}"

    def tmp(self, what: str) -> str:
        return self._unique(what)

    def const(self, what: str, arr) -> str:
        name = self._unique(what)
        self.inits.append(self.numpy_helper.from_array(
            np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    def ints(self, what: str, values) -> str:
        """An int64 initializer (the shape of a Reshape, the sizes of a Resize)."""
        name = self._unique(what)
        self.inits.append(self.numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    def chan(self, what: str, v: np.ndarray) -> str:
        # per-channel vector against the node's (N, C, H, W) or flat (N, F) tensor
        shape = self.shapes[self.i]
        return self.const(what, v.reshape(-1, 1, 1) if len(shape) == 3 else v.reshape(-1))

    def node(self, op_type: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        self.nodes.append(self.helper.make_node(op_type, inputs, outputs,
                                                name=self._unique(op_type), **attrs))


def to_onnx(graph: Graph):
    """An ``onnx.ModelProto`` computing ``graph``: input ``x`` (N, C, H, W), or the user's
    (N, C, L) / (N, F) the graph records (:attr:`Graph.user_input_shape`) -> ``logits``."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise ImportError("the ONNX lowering needs the onnx package: "
                          "pip install 'sbnn-runtime[onnx]'") from None

    shapes = graph.shapes()
    ctx = OnnxBuilder(helper, numpy_helper, shapes)
    names = ["x"]
    user = graph.user_input_shape
    if user != graph.input_shape:  # a (C, L) or (F,) input runs as (C, 1, L) or (F, 1, 1)
        ctx.node("Reshape", ["x", ctx.ints("in_shape", [-1, *graph.input_shape])], ["x4"])
        names = ["x4"]
    lower = lowering(graph, "onnx")
    for i, nd in enumerate(graph.nodes[1:], start=1):
        ctx.i, ctx.name = i, nd.name
        out = f"t{i}"
        lower[i](ctx, nd, [names[j] for j in nd.inputs], out)
        names.append(out)
    ctx.nodes.append(helper.make_node("Identity", [names[graph.output]], ["logits"],
                                      name="output"))
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *user])
    y_info = helper.make_tensor_value_info(
        "logits", TensorProto.FLOAT, ["N", *shapes[graph.output]])
    g = helper.make_graph(ctx.nodes, "sbnn", [x_info], [y_info], initializer=ctx.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="sbnn")
    model.ir_version = min(model.ir_version, 8)  # readable by onnxruntime releases since 1.10
    onnx.checker.check_model(model)
    return model


def save_onnx(graph: Graph, path: str | os.PathLike) -> None:
    """Write the ONNX form of ``graph`` to ``path`` atomically."""
    data = to_onnx(graph).SerializeToString()
    atomic_write(path, data)
