"""The native engine runtime (``sbnn_runtime._core.Engine``) against numpy references.

The same graph is computed three ways: the native engine built op by op, a plain numpy forward
(``sbnn_runtime.kernels`` convs plus the numpy pools below), and the runtime's own reference
executor (``sbnn_runtime.ops.reference_forward``). numpy only: no torch here.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from sbnn_runtime import kernels, native
from sbnn_runtime.native import core, native_error
from sbnn_runtime.ops import Graph, Node, reference_forward

pytestmark = pytest.mark.skipif(core is None, reason=f"no native core: {native_error}")


# -- plain numpy references ---------------------------------------------------------------------

def _c(v: np.ndarray) -> np.ndarray:
    # per-channel (C,) over x: (N, C, H, W)
    return v[None, :, None, None]


def _rprelu(x, s1, a, s2):
    v = x - _c(s1)
    return np.where(v >= 0, v, _c(a) * v) + _c(s2)


def _pool_windows(x, k, stride, pad, fill):
    # x: (N, C, H, W) -> windows (N, C, Ho, Wo, k, k)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    return sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]


def max_pool(x, k, stride, pad):
    return _pool_windows(x, k, stride, pad, -np.inf).max(axis=(4, 5)).astype(np.float32)


def avg_pool(x, k, stride, pad, count_include_pad=True):
    s = _pool_windows(x, k, stride, pad, 0.0).sum(axis=(4, 5), dtype=np.float64)
    if count_include_pad:
        return (s / (k * k)).astype(np.float32)
    ones = np.ones((1, 1) + x.shape[2:], np.float64)
    n = _pool_windows(ones, k, stride, pad, 0.0).sum(axis=(4, 5))
    return (s / n).astype(np.float32)


def _hardtanh(x, lo=-1.0, hi=1.0):
    return np.clip(x, lo, hi).astype(np.float32)


def build_block_net(num_threads: int, impl: str = "auto", sparse: bool = True):
    """A small ResNet-like graph that uses every op.

    Returns (native engine, numpy forward, the same net as a :class:`Graph`)."""
    rng = np.random.default_rng(0)

    def r(*s, scale=1.0):
        return (rng.standard_normal(s) * scale).astype(np.float32)

    C = 6
    w0, b0 = r(C, 3, 3, 3, scale=0.5), r(C)
    bn_s, bn_b = np.abs(r(C)) + 0.5, r(C)
    bits = (rng.random((C, C, 3, 3)) < 0.2).astype(np.uint8)
    eta, xi, bias, thr = np.abs(r(C)) + 0.1, r(C, scale=0.1), r(C), r(C, scale=0.2)
    s1, a, s2 = r(C, scale=0.1), np.abs(r(C)) * 0.25, r(C, scale=0.1)
    bits2 = (rng.random((2 * C, C, 3, 3)) < 0.1).astype(np.uint8)
    eta2, xi2, bias2 = np.abs(r(2 * C)) + 0.1, r(2 * C, scale=0.1), r(2 * C)
    wsc = r(2 * C, C, 1, 1, scale=0.5)
    f_s, f_b = np.abs(r(2 * C)) + 0.5, r(2 * C)
    wl, bl = r(5, 2 * C, scale=0.3), r(5)

    eng = core.Engine(num_threads)
    t = eng.input(3, 8, 8)
    t = eng.conv2d(t, w0, b0, 1, 1)
    t = eng.affine(t, bn_s, bn_b)
    t = eng.hardtanh(t, -1.0, 1.0)
    skip = t
    u = eng.sbconv2d(t, bits, eta, xi, bias, 1, 1, thr, sparse=sparse, impl=impl)
    u = eng.rprelu(u, s1, a, s2)
    t = eng.add(u, skip)
    t = eng.maxpool(t, 3, 1, 1)
    d = eng.sbconv2d(t, bits2, eta2, xi2, bias2, 2, 1, sparse=sparse, impl=impl)
    sc = eng.avgpool(t, 2, 2, 0)
    sc = eng.conv2d(sc, wsc)
    sc = eng.avgpool(sc, 3, 1, 1, count_include_pad=False)
    t = eng.add(d, eng.relu(sc))
    t = eng.avgpool(t, 3, 1, 1)
    t = eng.global_avgpool(t)
    t = eng.flatten(t)
    t = eng.affine(t, f_s, f_b)
    t = eng.linear(t, wl, bl)
    eng.set_output(t)

    def forward(x):
        y = kernels.conv2d_reference(x, w0, b0, 1, 1)
        y = _hardtanh(y * _c(bn_s) + _c(bn_b))
        u = _rprelu(kernels.bconv2d_reference(y, bits, eta, xi, bias, 1, 1, thr), s1, a, s2)
        y = max_pool(u + y, 3, 1, 1)
        d = kernels.bconv2d_reference(y, bits2, eta2, xi2, bias2, 2, 1)
        sc = kernels.conv2d_reference(avg_pool(y, 2, 2, 0), wsc)
        sc = avg_pool(sc, 3, 1, 1, count_include_pad=False)
        y = avg_pool(d + np.maximum(sc, 0), 3, 1, 1)
        y = y.mean(axis=(2, 3), dtype=np.float64).astype(np.float32)
        y = y * f_s + f_b
        return (y @ wl.T + bl).astype(np.float32)

    N = Node
    graph = Graph([
        N("input", [], {"shape": [3, 8, 8]}, name="input"),
        N("conv2d", [0], {"stride": 1, "padding": 1}, {"weight": w0, "bias": b0}, "stem"),
        N("affine", [1], params={"scale": bn_s, "shift": bn_b}, name="bn"),
        N("hardtanh", [2], {"lo": -1.0, "hi": 1.0}, name="ht"),
        N("sbconv2d", [3], {"stride": 1, "padding": 1, "binary_input": True},
          {"bits": bits, "eta": eta, "xi": xi, "bias": bias, "thr": thr}, "b1"),
        N("rprelu", [4], params={"shift_in": s1, "slope": a, "shift_out": s2}, name="act"),
        N("add", [5, 3], name="res"),
        N("maxpool", [6], {"k": 3, "stride": 1, "pad": 1}, name="mp"),
        N("sbconv2d", [7], {"stride": 2, "padding": 1, "binary_input": True},
          {"bits": bits2, "eta": eta2, "xi": xi2, "bias": bias2}, "b2"),
        N("avgpool", [7], {"k": 2, "stride": 2, "pad": 0, "count_include_pad": True}, name="p1"),
        N("conv2d", [9], {"stride": 1, "padding": 0}, {"weight": wsc}, "sc"),
        N("avgpool", [10], {"k": 3, "stride": 1, "pad": 1, "count_include_pad": False},
          name="p2"),
        N("relu", [11], name="relu"),
        N("add", [8, 12], name="res2"),
        N("avgpool", [13], {"k": 3, "stride": 1, "pad": 1, "count_include_pad": True},
          name="p3"),
        N("global_avgpool", [14], name="gap"),
        N("flatten", [15], name="flat"),
        N("affine", [16], params={"scale": f_s, "shift": f_b}, name="bn1d"),
        N("linear", [17], params={"weight": wl, "bias": bl}, name="fc"),
    ], 18)
    return eng, forward, graph


def _x(seed: int, *shape) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("num_threads,sparse", [(1, True), (2, True), (2, False)])
def test_graph_with_every_op_matches_numpy(num_threads, sparse):
    eng, forward, graph = build_block_net(num_threads, sparse=sparse)
    x = _x(1, 3, 3, 8, 8)
    y = eng.run(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (3, 5)
    # binarisation thresholds make tiny float differences before a sign flip possible; the
    # float ops before the first binary conv are exact enough in practice at this size
    np.testing.assert_allclose(y, forward(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y, reference_forward(graph, x), rtol=1e-4, atol=1e-4)
    y1 = eng.run(x[1:2])
    np.testing.assert_allclose(y1, y[1:2], rtol=0, atol=1e-6)


def test_numpy_pools_match_the_runtime_reference():
    """The test's own pools against the ops table's (two independent numpy twins)."""
    x = _x(4, 2, 3, 7, 6)
    for k, s, p in ((2, 2, 0), (3, 1, 1), (3, 2, 1)):
        g = Graph([Node("input", [], {"shape": [3, 7, 6]}),
                   Node("maxpool", [0], {"k": k, "stride": s, "pad": p})], 1)
        np.testing.assert_array_equal(reference_forward(g, x), max_pool(x, k, s, p))
        for cip in (True, False):
            g = Graph([Node("input", [], {"shape": [3, 7, 6]}),
                       Node("avgpool", [0], {"k": k, "stride": s, "pad": p,
                                             "count_include_pad": cip})], 1)
            np.testing.assert_allclose(reference_forward(g, x), avg_pool(x, k, s, p, cip),
                                       rtol=1e-6, atol=1e-6)


def test_maxpool_fast_path_and_nan_planes_match_reference():
    """The engine's maxpool takes a separable fast path on planes without NaN and the plain
    loop on planes with one (a NaN in a window wins); both against the reference, per plane."""
    from sbnn_runtime import Engine

    for (c, h, w), (k, s, p) in [((64, 32, 32), (3, 2, 1)), ((5, 7, 6), (2, 2, 0)),
                                 ((3, 9, 5), (3, 1, 1)), ((4, 1, 3), (1, 1, 0)),
                                 ((2, 8, 8), (4, 3, 2)), ((3, 5, 5), (3, 3, 0))]:
        x = _x(c + h, 2, c, h, w)
        x[0, 1, h // 2, w // 2] = np.nan  # one plane with a NaN, the others without
        x[1, 0, 0, 0] = np.nan
        g = Graph([Node("input", [], {"shape": [c, h, w]}),
                   Node("maxpool", [0], {"k": k, "stride": s, "pad": p})], 1)
        got = Engine(g, 1, backend="native").run(x)
        want = reference_forward(g, x)
        np.testing.assert_array_equal(got, want)  # NaN where the reference has NaN
        assert np.isnan(got[0, 1]).any() and not np.isnan(got[0, 0]).any()


@pytest.mark.parametrize("impl", native.available_impls())
def test_every_impl_runs_the_graph(impl):
    eng, forward, _ = build_block_net(1, impl=impl)
    x = _x(2, 2, 3, 8, 8)
    np.testing.assert_allclose(eng.run(x), forward(x), rtol=1e-4, atol=1e-4)


class _DLPackOnly:
    """An array that offers only the DLPack protocol (what a CPU torch or JAX array offers)."""

    def __init__(self, a: np.ndarray):
        self._a = a

    def __dlpack__(self, *args, **kwargs):
        return self._a.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_dlpack_and_non_contiguous_inputs():
    eng, _, _ = build_block_net(1)
    x = _x(3, 2, 3, 8, 8)
    ref = eng.run(x)
    np.testing.assert_array_equal(eng.run(_DLPackOnly(x)), ref)  # through DLPack
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not xt.flags.c_contiguous
    np.testing.assert_array_equal(eng.run(xt), ref)
    np.testing.assert_array_equal(eng.run(np.asfortranarray(x)), ref)


def test_profile_and_layer_times():
    eng, _, _ = build_block_net(1)
    x = np.zeros((1, 3, 8, 8), np.float32)
    y, times = eng.run(x, profile=True)
    assert y.shape == (1, 5)
    assert len(times) == eng.num_ops
    assert all(isinstance(n, str) and s >= 0 for n, s in times)
    assert [n for n, _ in eng.layer_times()] == [n for n, _ in times]
    assert times[0][0] == "conv2d"


def test_shapes_and_flat_ops():
    eng = core.Engine(0)
    assert eng.num_threads >= 1
    t = eng.input(4, 5, 5)
    assert eng.shape(t) == [4, 5, 5]
    t = eng.global_avgpool(t)
    assert eng.shape(t) == [4, 1, 1]
    f = eng.flatten(t)
    assert eng.shape(f) == [4]
    f = eng.relu(eng.hardtanh(f, -0.5, 0.5))
    eng.set_output(f)
    x = _x(5, 2, 4, 5, 5)
    ref = np.maximum(_hardtanh(x.mean(axis=(2, 3), dtype=np.float64), -0.5, 0.5), 0)
    np.testing.assert_allclose(eng.run(x), ref, rtol=1e-6, atol=1e-6)


def test_build_time_shape_errors():
    eng = core.Engine(1)
    t = eng.input(4, 6, 6)
    one = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="input channels"):
        eng.conv2d(t, np.zeros((2, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="input channels"):
        eng.sbconv2d(t, np.zeros((2, 3, 3, 3), np.uint8), one[:2], one[:2], one[:2])
    with pytest.raises(ValueError, match="eta"):
        eng.sbconv2d(t, np.zeros((2, 4, 3, 3), np.uint8), one, one[:2], one[:2])
    with pytest.raises(ValueError, match="affine"):
        eng.affine(t, one[:3], one[:3])
    with pytest.raises(ValueError, match="flat"):
        eng.linear(t, np.zeros((2, 4), np.float32))
    u = eng.conv2d(t, np.zeros((4, 4, 3, 3), np.float32), stride=2)
    with pytest.raises(ValueError, match="shape mismatch"):
        eng.add(t, u)
    with pytest.raises(ValueError, match="unknown tensor"):
        eng.relu(99)
    with pytest.raises(ValueError, match="input features"):
        eng.linear(eng.flatten(t), np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="pad"):
        eng.maxpool(t, 2, 1, 2)
    with pytest.raises(ValueError, match="output"):
        eng.run(np.zeros((1, 4, 6, 6), np.float32))


def test_run_time_shape_errors():
    eng = core.Engine(1)
    t = eng.input(2, 4, 4)
    eng.set_output(eng.relu(t))
    with pytest.raises(ValueError, match=r"\(N, 2, 4, 4\)"):
        eng.run(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="4-D"):
        eng.run(np.zeros((2, 4, 4), np.float32))
    y = eng.run(np.zeros((0, 2, 4, 4), np.float32))
    assert y.shape == (0, 2, 4, 4)


def test_dense_and_sparse_engines_agree_on_a_wide_layer():
    rng = np.random.default_rng(9)
    Ci, Co = 130, 70
    bits = (rng.random((Co, Ci, 3, 3)) < 0.05).astype(np.uint8)
    eta, xi, bias = (rng.random(Co).astype(np.float32) for _ in range(3))
    x = _x(1, 2, Ci, 7, 7)
    outs = []
    for sparse in (True, False):
        eng = core.Engine(2)
        t = eng.input(Ci, 7, 7)
        eng.set_output(eng.sbconv2d(t, bits, eta, xi, bias, 2, 1, sparse=sparse))
        outs.append(eng.run(x))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(outs[0], kernels.bconv2d_reference(x, bits, eta, xi, bias, 2, 1),
                               rtol=1e-6, atol=1e-4)
