"""Every op with spatial arithmetic against the numpy reference on every small geometry (issue 18).

Square inputs 1-4, kernels 1-5, strides 1-3, paddings 0-2 (exhaustive), plus a fixed random
sample of non-square ones (H != W, kh != kw up to 9 and 5), on every ISA this CPU runs and the
reference one: the float conv, the binary conv on binarised input (sparse and dense kernels),
and through the engine the binary conv on real input, max and average pooling (both padding
counts) and the global average pool; the engine once more with ``SBNN_ISA=scalar`` forced.
The format refuses only what PyTorch refuses (a kernel larger than the padded input, pooling
padding over half the window) plus its own rule, padding >= kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from sbnn_runtime import kernels, native
from sbnn_runtime.native import core
from sbnn_runtime.ops import Graph, Node, SBNNFormatError, infer_shapes, reference_forward

needs_core = pytest.mark.skipif(core is None, reason=f"no native core: {native.native_error}")


def square_geometries():
    return [(n, n, k, k, s, p) for n in range(1, 5) for k in range(1, 6) for s in range(1, 4)
            for p in range(3)]


def nonsquare_geometries(count: int = 60):
    rng = np.random.default_rng(18)
    out = []
    while len(out) < count:
        out.append(tuple(int(v) for v in (rng.integers(1, 10), rng.integers(1, 10),
                                          rng.integers(1, 6), rng.integers(1, 6),
                                          rng.integers(1, 4), rng.integers(0, 3))))
    return out


def conv_fits(h, w, kh, kw, s, p) -> bool:
    """What PyTorch accepts (the kernel fits the padded input) and the format's p < kernel."""
    return h + 2 * p >= kh and w + 2 * p >= kw and p < max(kh, kw)


GEOMS = square_geometries() + nonsquare_geometries()


def impls():
    return ["ref"] + [i for i in native.available_impls() if i != "ref"] if core else []


@needs_core
def test_float_conv_on_every_small_geometry():
    rng = np.random.default_rng(0)
    n = 0
    for h, w, kh, kw, s, p in GEOMS:
        if not conv_fits(h, w, kh, kw, s, p):
            continue
        x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
        wt = rng.standard_normal((5, 3, kh, kw)).astype(np.float32)
        b = rng.standard_normal(5).astype(np.float32)
        ref = kernels.conv2d_reference(x, wt, b, s, p)
        for impl in impls():
            y = core.conv2d(x, wt, b, s, p, num_threads=1, impl=impl)
            np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4,
                                       err_msg=f"{impl} {h}x{w} k{kh}x{kw} s{s} p{p}")
            n += 1
    assert n > 400


@needs_core
def test_binary_conv_on_every_small_geometry():
    rng = np.random.default_rng(1)
    n = 0
    for h, w, kh, kw, s, p in GEOMS:
        if not conv_fits(h, w, kh, kw, s, p):
            continue
        x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
        bits = (rng.random((5, 3, kh, kw)) < 0.4).astype(np.uint8)
        eta, xi, bias = (rng.standard_normal(5).astype(np.float32) for _ in range(3))
        thr = (0.3 * rng.standard_normal(3)).astype(np.float32)
        ref = kernels.bconv2d_reference(x, bits, eta, xi, bias, s, p, thr)
        for impl in impls():
            for kind in ("sparse", "dense"):
                y = core.bconv2d(x, bits, eta, xi, bias, s, p, thr, impl=impl, kind=kind)
                np.testing.assert_allclose(
                    y, ref, rtol=1e-4, atol=1e-4,
                    err_msg=f"{impl} {kind} {h}x{w} k{kh}x{kw} s{s} p{p}")
                n += 1
    assert n > 800


def _engine_graphs(h, w, kh, kw, s, p, rng):
    """One-op graphs over a (3, h, w) input: real-input binary conv, pools (square windows)."""
    out = []
    if conv_fits(h, w, kh, kw, s, p):
        f = lambda *sh: rng.standard_normal(sh).astype(np.float32)  # noqa: E731
        out.append(Node("sbconv2d", [0], {"stride": s, "padding": p, "binary_input": False},
                        {"bits": (rng.random((4, 3, kh, kw)) < 0.5).astype(np.uint8),
                         "eta": f(4), "xi": f(4), "bias": f(4)}))
    k = kh
    if kh == kw and 2 * p <= k and h + 2 * p >= k and w + 2 * p >= k:
        out.append(Node("maxpool", [0], {"k": k, "stride": s, "pad": p}))
        for cip in (True, False):
            out.append(Node("avgpool", [0], {"k": k, "stride": s, "pad": p,
                                             "count_include_pad": cip}))
    return [Graph([Node("input", [], {"shape": [3, h, w]}), nd], 1) for nd in out]


def check_engine_geometries() -> int:
    """Every one-op graph on every geometry, native engine against the reference; returns the
    number of graphs checked."""
    import sbnn_runtime

    rng = np.random.default_rng(2)
    n = 0
    for geo in GEOMS + [(h, w, 1, 1, 1, 0) for h in range(1, 10) for w in range(1, 10)]:
        graphs = _engine_graphs(*geo, rng)
        h, w = geo[:2]
        graphs.append(Graph([Node("input", [], {"shape": [3, h, w]}),
                             Node("global_avgpool", [0])], 1))
        for g in graphs:
            x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
            y = sbnn_runtime.Engine(g, 1, backend="native")(x)
            np.testing.assert_allclose(y, reference_forward(g, x), rtol=1e-4, atol=1e-4,
                                       err_msg=f"{g.nodes[1].op} {geo}")
            n += 1
    return n


@needs_core
def test_engine_ops_on_every_small_geometry():
    assert check_engine_geometries() > 500


@needs_core
@pytest.mark.skipif("scalar" not in (native.available_impls() if core else []),
                    reason="no scalar kernels")
def test_engine_ops_on_every_small_geometry_with_scalar_forced():
    here = os.path.dirname(__file__)
    code = (f"import sys; sys.path.insert(0, {here!r}); import test_geometry as t; "
            "from sbnn_runtime.native import core; assert core.default_impl() == 'scalar'; "
            "print(t.check_engine_geometries())")
    env = dict(os.environ, SBNN_ISA="scalar", PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout.split()[-1]) > 500


def test_shape_rules_refuse_only_what_pytorch_refuses():
    # conv: a kernel larger than the padded input (PyTorch: "Kernel size can't be greater than
    # actual input size"), plus the format's padding >= kernel; pools: padding over half the
    # window (PyTorch: "pad should be at most half of effective kernel size")
    f = np.zeros
    for h, w, kh, kw, s, p in GEOMS:
        g = Graph([Node("input", [], {"shape": [2, h, w]}),
                   Node("conv2d", [0], {"stride": s, "padding": p},
                        {"weight": f((3, 2, kh, kw), np.float32)})], 1)
        try:
            infer_shapes(g)
            ok = True
        except SBNNFormatError:
            ok = False
        assert ok == conv_fits(h, w, kh, kw, s, p), (h, w, kh, kw, s, p)
        if kh != kw:
            continue
        g = Graph([Node("input", [], {"shape": [2, h, w]}),
                   Node("maxpool", [0], {"k": kh, "stride": s, "pad": p})], 1)
        try:
            infer_shapes(g)
            ok = True
        except SBNNFormatError:
            ok = False
        assert ok == (2 * p <= kh and h + 2 * p >= kh and w + 2 * p >= kh), (h, w, kh, s, p)
