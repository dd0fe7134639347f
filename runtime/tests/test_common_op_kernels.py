"""The common CNN ops of issue 19 (activations, softmax, broadcast mul/add, channel concat, the
affine of a BatchNorm1d) against their numpy reference on many shapes: on the native engine at
every ISA this CPU has (scalar forced too) and through onnxruntime. The C kernels are checked
in test_micro.py, whole traced networks in tests/test_common_ops.py."""

from __future__ import annotations

import numpy as np
import pytest

from sbnn_runtime import Engine, Graph, Node, native, reference_forward
from sbnn_runtime.native import core, native_error
from sbnn_runtime.ops import ACTIVATION_KINDS, ELTWISE_KINDS, SBNNFormatError, infer_shapes

needs_core = pytest.mark.skipif(core is None or not hasattr(core.Engine, "activation"),
                                reason=f"no native core with activation: {native_error}")

SHAPES = [(1, 1, 1), (3, 5, 7), (8, 4, 4), (16, 1, 1), (5, 9, 2)]
TOL = 1e-5  # of the largest |output|: exp and tanh differ by an ulp or so between libms


def _f(rng, *s):
    return rng.standard_normal(s).astype(np.float32)


def _graph(shape, rng, case: str) -> Graph:
    c, h, w = shape
    nodes = [Node("input", [], {"shape": [c, h, w]})]

    def add(op, inputs, attrs=None, params=None):
        nodes.append(Node(op, inputs, attrs or {}, params or {}, name=f"n{len(nodes)}"))
        return len(nodes) - 1

    kind, _, arg = case.partition(":")
    if kind == "activation":
        add("activation", [0], {"kind": arg, "alpha": float(rng.uniform(0.01, 0.3))})
    elif kind == "softmax":
        add("softmax", [add("flatten", [0]) if arg == "flat" else 0])
    elif kind == "eltwise":
        op, how = arg.split("/")
        if how == "same":
            b = add("relu", [0])
        else:  # squeeze-and-excitation: one gate per channel, (C, 1, 1)
            b = add("activation", [add("global_avgpool", [0])],
                    {"kind": "sigmoid", "alpha": 0.0})
        add("eltwise", [0, b], {"kind": op})
    elif kind == "concat":
        if arg == "flat":
            f = add("flatten", [0])
            add("concat", [f, add("relu", [f])])
        else:
            b = add("conv2d", [0], {"stride": 1, "padding": 0}, {"weight": _f(rng, 3, c, 1, 1)})
            add("concat", [add("concat", [0, b]), 0])
    elif kind == "affine1d":  # what a BatchNorm1d on features exports to
        f = add("flatten", [0])
        n = c * h * w
        add("affine", [f], {}, {"scale": _f(rng, n), "shift": _f(rng, n)})
    else:  # pragma: no cover - a typo in CASES
        raise ValueError(case)
    return Graph(nodes, len(nodes) - 1)


CASES = ([f"activation:{k}" for k in ACTIVATION_KINDS] + ["softmax:chw", "softmax:flat"]
         + [f"eltwise:{k}/{b}" for k in ELTWISE_KINDS for b in ("same", "chan")]
         + ["concat:chw", "concat:flat", "affine1d"])


def _inputs(rng, shape, n=3):
    x = 3 * _f(rng, n, *shape)
    x.flat[:4] = [0.0, -3.0, 3.0, 40.0][: x.size]  # the kinks of hardswish/hardsigmoid, exp range
    return x


def _close(got, want):
    got = np.asarray(got).reshape(want.shape)
    scale = max(float(np.abs(want).max()), 1e-6)
    assert float(np.abs(got - want).max()) <= TOL * scale, float(np.abs(got - want).max())


def _impls():
    avail = native.available_impls() if core is not None else []
    return [pytest.param(i, marks=pytest.mark.skipif(i not in avail, reason=f"no {i} here"))
            for i in ("scalar", "avx2", "avx512", "neon")]


@needs_core
@pytest.mark.parametrize("impl", _impls())
@pytest.mark.parametrize("case", CASES)
def test_engine_matches_reference(case, impl, monkeypatch):
    monkeypatch.setenv("SBNN_ISA", impl)
    rng = np.random.default_rng(len(case))
    for shape in SHAPES:
        g = _graph(shape, rng, case)
        x = _inputs(rng, shape)
        want = reference_forward(g, x)
        _close(Engine(g, 1, backend="native", impl=impl).run(x), want)
        _close(Engine(g, 2, backend="native", impl=impl).run(x[:1]), want[:1])


@pytest.mark.parametrize("case", CASES)
def test_onnx_matches_reference(case):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from sbnn_runtime import lower_onnx

    rng = np.random.default_rng(len(case) + 1)
    for shape in SHAPES:
        g = _graph(shape, rng, case)
        x = _inputs(rng, shape)
        sess = ort.InferenceSession(lower_onnx.to_onnx(g).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        _close(sess.run(None, {"x": x})[0], reference_forward(g, x))


def test_reference_semantics_are_torchs():
    """The references say what torch says (hand-written formulas, a few points each)."""
    x = np.array([[-4.0, -3.0, -1.0, 0.0, 0.5, 3.0, 5.0]], np.float32).reshape(1, 7, 1, 1)
    g = _graph((7, 1, 1), np.random.default_rng(0), "activation:hardswish")
    np.testing.assert_allclose(reference_forward(g, x).ravel(),
                               [0, 0, -1 / 3, 0, 0.5 * 3.5 / 6, 3, 5], atol=1e-6)
    g.nodes[1].attrs["kind"] = "leaky_relu"
    g.nodes[1].attrs["alpha"] = 0.1
    np.testing.assert_allclose(reference_forward(g, x).ravel(),
                               [-0.4, -0.3, -0.1, 0, 0.5, 3, 5], atol=1e-6)
    g.nodes[1].attrs["kind"] = "silu"
    np.testing.assert_allclose(reference_forward(g, x).ravel(),
                               x.ravel() / (1 + np.exp(-x.ravel())), rtol=1e-6)


def test_bad_kinds_and_shapes_are_refused_by_name():
    rng = np.random.default_rng(0)
    g = _graph((3, 4, 4), rng, "activation:tanh")
    g.nodes[1].attrs["kind"] = "gelu"
    with pytest.raises(SBNNFormatError, match="unknown activation kind 'gelu'; known: leaky_relu"):
        infer_shapes(g)
    g = _graph((3, 4, 4), rng, "eltwise:mul/chan")
    g.nodes[-1].inputs = g.nodes[-1].inputs[::-1]  # (C, 1, 1) first: the op broadcasts the 2nd
    with pytest.raises(SBNNFormatError, match=r"cannot broadcast \(3, 4, 4\) to \(3, 1, 1\)"):
        infer_shapes(g)
    g = _graph((3, 4, 4), rng, "concat:chw")
    g.nodes.append(Node("global_avgpool", [0]))
    g.nodes.append(Node("concat", [1, len(g.nodes) - 1]))
    g.output = len(g.nodes) - 1
    with pytest.raises(SBNNFormatError, match="cannot join"):
        infer_shapes(g)
