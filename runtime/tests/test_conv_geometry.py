"""Grouped, depthwise, dilated and non-square convs (issue 19), float and binary, and the
``zeropad`` node: the attribute helper, the numpy reference against a brute-force twin, and the
native kernels (every ISA this CPU runs, the reference one, ``SBNN_ISA=scalar`` forced for the
engine) against the reference on many shapes; ONNX (onnxruntime) on the same graphs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from sbnn_runtime import kernels, native
from sbnn_runtime.native import core
from sbnn_runtime.ops import (
    Graph,
    Node,
    SBNNFormatError,
    conv_geometry,
    conv_is_simple,
    infer_shapes,
    reference_forward,
)

needs_core = pytest.mark.skipif(core is None, reason=f"no native core: {native.native_error}")


def impls():
    return ["ref"] + [i for i in native.available_impls() if i != "ref"] if core else []


def brute_conv(x, w, b, geom):
    """Straight from the definition: one output at a time (the reference's own twin)."""
    sh, sw, pt, pl, pb, pr, dh, dw, g = geom
    n, ci, h, wd = x.shape
    co, cig, kh, kw = w.shape
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (wd + pl + pr - (kw - 1) * dw - 1) // sw + 1
    y = np.zeros((n, co, oh, ow), np.float64)
    for o in range(co):
        grp = o // (co // g)
        for i in range(oh):
            for j in range(ow):
                acc = np.zeros(n)
                for c in range(cig):
                    for ky in range(kh):
                        for kx in range(kw):
                            r, q = i * sh + ky * dh - pt, j * sw + kx * dw - pl
                            if 0 <= r < h and 0 <= q < wd:
                                acc += w[o, c, ky, kx] * x[:, grp * cig + c, r, q]
                y[:, o, i, j] = acc + (0 if b is None else b[o])
    return y


def random_geometries(count: int, seed: int = 19):
    """(ci, co, h, w, kh, kw, geom) with every feature mixed: groups (depthwise and in
    between, depth multipliers), dilation, per-axis strides, four different pads."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        g = int(rng.choice([1, 2, 3, 4]))
        cig = int(rng.integers(1, 4))
        ci = g * cig
        if rng.random() < 0.3:  # depthwise, multiplier 1 or 2
            g, ci = ci, ci
            co = ci * int(rng.integers(1, 3))
        else:
            co = g * int(rng.integers(1, 4))
        kh, kw = (int(v) for v in rng.integers(1, 5, 2))
        dh, dw = (int(v) for v in rng.integers(1, 4, 2))
        sh, sw = (int(v) for v in rng.integers(1, 4, 2))
        h, w = (int(v) for v in rng.integers(1, 12, 2))
        ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
        pads = [int(v) for v in rng.integers(0, max(ekh, ekw), 4)]
        pt, pl, pb, pr = pads
        if h + pt + pb < ekh or w + pl + pr < ekw:
            continue
        out.append((ci, co, h, w, kh, kw, (sh, sw, pt, pl, pb, pr, dh, dw, g)))
    return out


GEOMS = random_geometries(80)


def conv_node(op, geom, params, binary_input=None):
    sh, sw, pt, pl, pb, pr, dh, dw, g = geom
    attrs = {"stride": [sh, sw], "padding": [pt, pl, pb, pr], "dilation": [dh, dw],
             "groups": g}
    if binary_input is not None:
        attrs["binary_input"] = binary_input
    return Node(op, [0], attrs, params, "c")


def test_conv_geometry_reads_every_form():
    def geom(**attrs):
        return conv_geometry(Node("conv2d", [0], attrs))

    assert geom(stride=2, padding=1) == (2, 2, 1, 1, 1, 1, 1, 1, 1)  # an old file's attributes
    assert geom(stride=[2, 1], padding=[0, 1, 2, 3], dilation=[3, 2], groups=4) == \
        (2, 1, 0, 1, 2, 3, 3, 2, 4)
    assert geom(stride=1, padding=0, dilation=2) == (1, 1, 0, 0, 0, 0, 2, 2, 1)
    assert conv_is_simple(geom(stride=2, padding=1))
    assert not conv_is_simple(geom(stride=1, padding=[1, 1, 1, 2]))
    assert not conv_is_simple(geom(stride=1, padding=0, groups=2))
    for bad in (dict(stride=[1, 2, 3], padding=0), dict(stride=1, padding=[1, 1]),
                dict(stride=0, padding=0), dict(stride=1, padding=0, groups=0),
                dict(stride=1, padding=0, dilation=[1, True]), dict(stride="2", padding=0)):
        with pytest.raises(SBNNFormatError, match="conv2d"):
            geom(**bad)


def test_reference_against_brute_force():
    rng = np.random.default_rng(0)
    for ci, co, h, w, kh, kw, geom in GEOMS[:25]:
        x = rng.standard_normal((2, ci, h, w)).astype(np.float32)
        wt = rng.standard_normal((co, ci // geom[8], kh, kw)).astype(np.float32)
        b = rng.standard_normal(co).astype(np.float32)
        sh, sw, pt, pl, pb, pr, dh, dw, g = geom
        y = kernels.conv2d_reference(x, wt, b, (sh, sw), (pt, pl, pb, pr), (dh, dw), g)
        np.testing.assert_allclose(y, brute_conv(x, wt, b, geom), rtol=1e-5, atol=1e-5,
                                   err_msg=str(geom))


def test_shape_rule_checks_groups_and_pads():
    w = np.zeros((4, 2, 3, 3), np.float32)
    ok = Graph([Node("input", [], {"shape": [4, 8, 8]}),
                conv_node("conv2d", (2, 1, 0, 1, 2, 2, 2, 1, 2), {"weight": w})], 1)
    # rows: (8 + 0 + 2 - 5) // 2 + 1 = 3; columns: (8 + 1 + 2 - 3) // 1 + 1 = 9
    assert infer_shapes(ok)[1] == (4, 3, 9)
    for geom, why in [((1, 1, 0, 0, 0, 0, 1, 1, 3), "group"),  # 4 channels in 3 groups
                      ((1, 1, 5, 0, 0, 0, 1, 1, 2), "padding"),  # pad >= the kernel's extent
                      ((1, 1, 0, 0, 0, 0, 5, 5, 2), "does not fit")]:  # dilated past the input
        bad = Graph([Node("input", [], {"shape": [4, 8, 8]}),
                     conv_node("conv2d", geom, {"weight": w})], 1)
        with pytest.raises(SBNNFormatError, match=why):
            infer_shapes(bad)


@needs_core
def test_float_conv_kernels_on_every_isa():
    rng = np.random.default_rng(1)
    n = 0
    for ci, co, h, w, kh, kw, geom in GEOMS:
        x = rng.standard_normal((2, ci, h, w)).astype(np.float32)
        wt = rng.standard_normal((co, ci // geom[8], kh, kw)).astype(np.float32)
        b = rng.standard_normal(co).astype(np.float32) if n % 2 else None
        sh, sw, pt, pl, pb, pr, dh, dw, g = geom
        ref = kernels.conv2d_reference(x, wt, b, (sh, sw), (pt, pl, pb, pr), (dh, dw), g)
        for impl in impls():
            for threads in (1, 2):
                y = core.conv2d_ex(x, wt, b, list(geom), threads, impl)
                np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4,
                                           err_msg=f"{impl} {geom} {ci}->{co} {h}x{w}")
                n += 1
    assert n >= 2 * 80 * 2


@needs_core
def test_depthwise_is_the_same_on_every_isa():
    # the direct depthwise kernel sums in the reference GEMM's order, with no fused
    # multiply-add: every ISA gives the same bits
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 16, 13, 11)).astype(np.float32)
    wt = rng.standard_normal((32, 1, 3, 5)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    geom = [2, 1, 1, 2, 1, 2, 1, 2, 16]
    outs = [core.conv2d_ex(x, wt, b, geom, 1, impl) for impl in impls() if impl != "ref"]
    for y in outs[1:]:
        np.testing.assert_array_equal(y, outs[0])


def _engine_graphs(seed: int):
    """One graph per geometry: a float conv, a binary conv on binarised input (thresholds),
    the same on real input, and a zeropad before them."""
    rng = np.random.default_rng(seed)
    for k, (ci, co, h, w, kh, kw, geom) in enumerate(GEOMS[::2]):
        bits = (rng.random((co, ci // geom[8], kh, kw)) < 0.4).astype(np.uint8)
        eta, xi, bias = rng.standard_normal((3, co)).astype(np.float32)
        sb = {"bits": bits, "eta": eta, "xi": xi, "bias": bias}
        if k % 2:
            sb["thr"] = (0.3 * rng.standard_normal(ci)).astype(np.float32)
        wt = rng.standard_normal(bits.shape).astype(np.float32)
        pads = [int(v) for v in rng.integers(0, 3, 4)]
        inp = Node("input", [], {"shape": [ci, h, w]})
        yield f"float {geom}", Graph([inp, conv_node("conv2d", geom, {"weight": wt})], 1), \
            (ci, h, w)
        yield f"binary {geom}", Graph([inp, conv_node("sbconv2d", geom, sb, True)], 1), \
            (ci, h, w)
        yield f"real-input binary {geom}", Graph(
            [inp, conv_node("sbconv2d", geom, dict(sb), False)], 1), (ci, h, w)
        zp = Node("zeropad", [0], {"pads": pads}, {}, "pad")
        yield f"zeropad {pads}", Graph([inp, zp], 1), (ci, h, w)


@needs_core
def test_engine_against_reference():
    from sbnn_runtime.engine import Engine

    rng = np.random.default_rng(3)
    n = 0
    for what, graph, shape in _engine_graphs(4):
        x = rng.standard_normal((3, *shape)).astype(np.float32)
        ref = reference_forward(graph, x)
        for threads in (1, 2):
            got = Engine(graph, num_threads=threads)(x)
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4, err_msg=what)
            n += 1
    assert n > 150


@needs_core
def test_engine_with_scalar_forced():
    code = ("import test_conv_geometry as t; t.test_engine_against_reference(); "
            "from sbnn_runtime.native import core; print(core.default_impl())")
    env = dict(os.environ, SBNN_ISA="scalar")
    here = os.path.dirname(__file__)
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=here, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("scalar")


def test_onnx_against_reference(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from sbnn_runtime.lower_onnx import save_onnx

    rng = np.random.default_rng(5)
    for k, (what, graph, shape) in enumerate(_engine_graphs(6)):
        if k % 5:  # a fifth of them: onnxruntime's session start is the cost here
            continue
        x = rng.standard_normal((2, *shape)).astype(np.float32)
        path = tmp_path / f"{k}.onnx"
        save_onnx(graph, path)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"x": x})[0]
        np.testing.assert_allclose(got, reference_forward(graph, x), rtol=1e-4, atol=1e-4,
                                   err_msg=what)
