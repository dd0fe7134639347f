"""The ONNX lowering (sbnn_runtime.lower_onnx, the ``onnx`` extra) against the numpy reference,
and a toy op registered in one place (its op-table entry) running through both."""

from __future__ import annotations

import numpy as np
import pytest

from sbnn_runtime import Graph, Node, ops, reference_forward

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sbnn_runtime import lower_onnx  # noqa: E402


def _run(graph: Graph, x: np.ndarray) -> np.ndarray:
    model = lower_onnx.to_onnx(graph)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _net(rng) -> Graph:
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    bits = (rng.random((6, 4, 3, 3)) < 0.3).astype(np.uint8)
    nodes = [
        Node("input", [], {"shape": [3, 8, 8]}),
        Node("conv2d", [0], {"stride": 1, "padding": 1}, {"weight": f(4, 3, 3, 3), "bias": f(4)}),
        Node("hardtanh", [1], {"lo": -1.0, "hi": 1.0}),
        Node("sbconv2d", [2], {"stride": 2, "padding": 1, "binary_input": True},
             {"bits": bits, "eta": np.abs(f(6)) + 0.1, "xi": f(6) * 0.1, "bias": f(6),
              "thr": f(4) * 0.1}),
        Node("rprelu", [3], {}, {"shift_in": f(6), "slope": f(6), "shift_out": f(6)}),
        Node("avgpool", [4], {"k": 2, "stride": 2, "pad": 0, "count_include_pad": True}),
        Node("global_avgpool", [5]),
        Node("flatten", [6]),
        Node("affine", [7], {}, {"scale": f(6), "shift": f(6)}),
        Node("linear", [8], {}, {"weight": f(5, 6), "bias": f(5)}),
    ]
    return Graph(nodes, len(nodes) - 1)


def test_onnx_lowering_matches_the_reference():
    rng = np.random.default_rng(0)
    graph = _net(rng)
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(graph, x), reference_forward(graph, x), rtol=1e-4, atol=1e-4)


def test_a_toy_op_is_one_entry(monkeypatch):
    """Adding an op: one OpSpec (shape rule, reference, lowerings); the reference and ONNX run
    it with nothing else changed, and a backend without its lowering refuses it by name."""
    spec = ops.OpSpec(
        "toy_square", 1, {}, {},
        shape=lambda nd, ins, where: ins[0],
        reference=lambda nd, x: x[0] * x[0],
        lower_native=None,
        lower_onnx=lambda ctx, nd, ins, out: ctx.node("Mul", [ins[0], ins[0]], [out]),
        macs=lambda nd, ins, out: int(np.prod(out)))
    monkeypatch.setitem(ops.OPS, "toy_square", spec)
    graph = Graph([Node("input", [], {"shape": [2, 3, 3]}), Node("toy_square", [0])], 1)
    x = np.random.default_rng(1).standard_normal((2, 2, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(reference_forward(graph, x), x * x)
    np.testing.assert_allclose(_run(graph, x), x * x, rtol=1e-6)
    from sbnn_runtime import Engine

    with pytest.raises(ValueError, match="toy_square.*no native lowering"):
        Engine(graph, num_threads=1, backend="native")
