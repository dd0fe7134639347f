"""int8 float layers: the numpy reference's arithmetic, the engine's kernels (every ISA here,
scalar forced) bit for bit against it, the quantisation pass, the file format, the C99 kernel
and ONNX QDQ (numpy only: no torch)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from sbnn_runtime import fileformat, native, passes, qkernels, quantize
from sbnn_runtime.engine import Engine
from sbnn_runtime.lower_c import kernel_files
from sbnn_runtime.native import core, native_error
from sbnn_runtime.ops import OPS, Graph, Node, SBNNFormatError, infer_shapes, reference_forward

needs_core = pytest.mark.skipif(core is None or not hasattr(core, "qconv2d"),
                                reason=f"no native int8 kernels: {native_error}")
IMPLS = ["ref", "scalar", "avx2", "avx512", "neon"]


def impl_params():
    avail = native.available_impls()
    return [pytest.param(i, marks=pytest.mark.skipif(i not in avail, reason=f"{i} not here"))
            for i in IMPLS]


# -- the arithmetic ---------------------------------------------------------------------------

def test_quantize_rounds_half_to_even_and_saturates():
    s = np.float32(0.5)
    x = np.array([0.25, 0.75, 1.25, -0.25, -0.75, 0.0, 1000.0, -1000.0, np.nan, np.inf,
                  -np.inf], np.float32)
    # x / s = 0.5, 1.5, 2.5, -0.5, -1.5, 0, ... ; zero point 10
    q = qkernels.quantize_reference(x, s, 10)
    assert q.tolist() == [10, 12, 12, 10, 8, 10, 255, 0, 0, 255, 0]


def test_qparams_hold_zero_exactly():
    for lo, hi in [(-1.0, 1.0), (0.0, 6.0), (-3.0, -1.0), (0.5, 2.0), (0.0, 0.0), (-0.1, 25.0)]:
        s, z = qkernels.qparams(lo, hi)
        assert s > 0 and 0 <= z <= 255
        assert qkernels.quantize_reference(np.zeros(1, np.float32), s, z)[0] == z
        # the range's ends land inside [0, 255], not clipped by more than one step
        ends = qkernels.quantize_reference(np.array([min(lo, 0), max(hi, 0)], np.float32), s, z)
        assert ends[0] <= 1 and ends[1] >= 254 or hi == lo
    with pytest.raises(ValueError):
        qkernels.qparams(-np.inf, 1.0)


def test_weight_quantisation_is_per_channel_and_symmetric():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32) * np.arange(1, 6)[:, None, None, None]
    w[2] = 0
    q, s = qkernels.quantize_weight(w)
    assert q.dtype == np.int8 and int(np.abs(q).max()) == 127 and q.min() >= -127
    assert s[2] == 1 and not q[2].any()
    err = np.abs(q * s[:, None, None, None] - w).max(axis=(1, 2, 3))
    assert (err <= s / 2 + 1e-7).all()


def test_reference_sum_is_exact_integer_arithmetic():
    # a brute-force loop over taps against the reference's int32 sums (groups, dilation, pads)
    rng = np.random.default_rng(1)
    xq = rng.integers(0, 256, (2, 4, 6, 7), dtype=np.uint8)
    w = rng.integers(-127, 128, (6, 2, 3, 2), dtype=np.int8)
    z, st, pads, dil, g = 77, (2, 1), (1, 0, 2, 1), (1, 2), 2
    acc = qkernels.qconv2d_counts_reference(xq, z, w, st, pads, dil, g)
    n, ci, h, wd = xq.shape
    co, cig, kh, kw = w.shape
    ho = (h + pads[0] + pads[2] - (kh - 1) * dil[0] - 1) // st[0] + 1
    wo = (wd + pads[1] + pads[3] - (kw - 1) * dil[1] - 1) // st[1] + 1
    assert acc.shape == (n, co, ho, wo)
    for b in range(n):
        for o in range(co):
            for oy in range(ho):
                for ox in range(wo):
                    s = 0
                    for c in range(cig):
                        for ky in range(kh):
                            for kx in range(kw):
                                iy = oy * st[0] - pads[0] + ky * dil[0]
                                ix = ox * st[1] - pads[1] + kx * dil[1]
                                v = int(xq[b, (o // (co // g)) * cig + c, iy, ix]) if (
                                    0 <= iy < h and 0 <= ix < wd) else z
                                s += int(w[o, c, ky, kx]) * (v - z)
                    assert acc[b, o, oy, ox] == s


# -- the engine's kernels against the reference, bit for bit ---------------------------------

# (N, Ci, Co, H, W, kh, kw, stride, pads (t, l, b, r), dilation, groups): stems, 1x1 shortcuts,
# depthwise and grouped, dilated, non-square, taps past one and several 64-byte blocks, more
# output positions than one task (256), channel counts off every register tile (4 rows, 2 cols)
SHAPES = [
    (1, 3, 64, 32, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (2, 64, 128, 8, 8, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1),
    (1, 1, 1, 1, 1, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (3, 5, 7, 9, 11, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),
    (1, 8, 8, 10, 10, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 8),
    (2, 12, 6, 7, 9, 3, 2, (1, 2), (1, 0, 1, 1), (2, 1), 3),
    (1, 70, 9, 5, 5, 3, 3, (1, 1), (0, 1, 2, 0), (1, 1), 1),
    (1, 4, 5, 49, 10, 10, 4, (2, 2), (4, 1, 5, 2), (1, 1), 1),
    (2, 16, 33, 6, 6, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
]


def _case(shape, seed):
    n, ci, co, h, w, kh, kw, st, pads, dil, g = shape
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, ci, h, w)) * 2).astype(np.float32)
    wq, ws = qkernels.quantize_weight(rng.standard_normal((co, ci // g, kh, kw)))
    b = rng.standard_normal(co).astype(np.float32) if seed % 2 else None
    xs, xz = qkernels.qparams(float(x.min()) * 0.7, float(x.max()) * 0.9)  # some saturate
    return x, wq, ws, b, xs, xz, st, pads, dil, g


@needs_core
@pytest.mark.parametrize("impl", impl_params())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:7])) + f"g{s[-1]}")
def test_qconv2d_matches_reference_exactly(impl, shape):
    for seed in (0, 1):
        x, wq, ws, b, xs, xz, st, pads, dil, g = _case(shape, seed)
        ref = qkernels.qconv2d_reference(x, wq, ws, b, xs, xz, st, pads, dil, g)
        for nt in (1, 3):
            y = qkernels.qconv2d(x, wq, ws, b, xs, xz, st, pads, dil, g, impl=impl,
                                 num_threads=nt)
            np.testing.assert_array_equal(y, ref)


@needs_core
@pytest.mark.parametrize("impl", impl_params())
def test_engine_quantises_ties_saturation_and_nan_like_the_reference(impl):
    # an identity 1x1 conv shows the quantised input: ties x / s = k + 0.5 both ways, values
    # past both ends, NaN and infinities, over more than one vector of 8 and a tail
    v = np.array([0.25, 0.75, 1.25, -0.25, -0.75, 0.0, 1e3, -1e3, np.nan, np.inf, -np.inf,
                  3.75, -6.25, 12.5, 63.75, -63.25, 1e-30, -1e-30, 0.5, 2.0, 7.25], np.float32)
    x = np.tile(v, 3).reshape(1, 1, 7, 9)
    w = np.ones((1, 1, 1, 1), np.int8)
    for zero in (0, 10, 128, 255):
        ref = qkernels.qconv2d_reference(x, w, np.ones(1, np.float32), None, 0.5, zero)
        y = qkernels.qconv2d(x, w, np.ones(1, np.float32), None, 0.5, zero, impl=impl)
        np.testing.assert_array_equal(y, ref)


@needs_core
@pytest.mark.parametrize("impl", impl_params())
def test_qlinear_matches_reference_exactly(impl):
    rng = np.random.default_rng(2)
    for n, i, o in [(1, 1, 1), (3, 70, 10), (4, 512, 37), (2, 129, 4)]:
        x = rng.standard_normal((n, i)).astype(np.float32)
        wq, ws = qkernels.quantize_weight(rng.standard_normal((o, i)))
        b = rng.standard_normal(o).astype(np.float32)
        ref = qkernels.qlinear_reference(x, wq, ws, b, 0.03, 120)
        np.testing.assert_array_equal(qkernels.qlinear(x, wq, ws, b, 0.03, 120, impl=impl), ref)


@needs_core
def test_the_int8_kernel_each_isa_runs():
    names = {i: core.int8_kernel(i) for i in native.available_impls() if i != "ref"}
    assert names["scalar"] == "scalar"
    if "avx2" in names:
        assert names["avx2"] == "avx2"
    if "avx512" in names:
        assert names["avx512"] in ("vnni", "avx2")


# -- graphs: the pass, the op table, the file, the engine -----------------------------------

def float_graph(rng) -> Graph:
    """conv (3->8) -> relu -> grouped conv -> global pool -> flatten -> linear: float layers
    only, so every value the int8 layers read is computed exactly alike everywhere."""
    def f(*s):
        return rng.standard_normal(s).astype(np.float32)
    nodes = [
        Node("input", [], {"shape": [3, 12, 10]}, {}, "input"),
        Node("conv2d", [0], {"stride": 1, "padding": 1}, {"weight": f(8, 3, 3, 3),
                                                          "bias": f(8)}, "stem"),
        Node("relu", [1], {}, {}, "act"),
        Node("conv2d", [2], {"stride": 2, "padding": 0}, {"weight": f(16, 8, 1, 1)}, "short"),
        Node("global_avgpool", [3], {}, {}, "gap"),
        Node("flatten", [4], {}, {}, "flat"),
        Node("linear", [5], {}, {"weight": f(10, 16), "bias": f(10)}, "fc"),
    ]
    return Graph(nodes, 6, {})


def test_the_pass_swaps_every_float_layer_and_keeps_the_rest():
    rng = np.random.default_rng(3)
    g = float_graph(rng)
    calib = [rng.standard_normal((4, 3, 12, 10)).astype(np.float32) for _ in range(2)]
    q = quantize.quantize_graph(g, calib, backend="reference")
    assert [OPS[n.op].int8 is not None for n in q.nodes] == [False] * 7
    assert [n.name for n in q.nodes] == [n.name for n in g.nodes]
    assert set(q.metadata["int8"]) == {"stem", "short", "fc"}
    assert infer_shapes(q) == infer_shapes(g)
    # the input range of the stem is the calibration data's, widened to hold 0
    lo = min(float(c.min()) for c in calib)
    hi = max(float(c.max()) for c in calib)
    assert q.nodes[1].attrs["x_scale"] == pytest.approx((hi - lo) / 255, rel=1e-6)
    x = rng.standard_normal((3, 3, 12, 10)).astype(np.float32)
    yf, yq = reference_forward(g, x), reference_forward(q, x)
    assert np.abs(yq - yf).max() <= 0.05 * np.abs(yf).max()  # int8 is close to fp32
    assert np.abs(yq - yf).max() > 0  # and is not fp32
    # a layer whose input range is missing stays in float
    part = quantize.quantize(g, {0: (-1.0, 1.0)})
    assert [n.op for n in part.nodes][1] != "conv2d" and part.nodes[3].op == "conv2d"


@needs_core
def test_native_observer_equals_the_reference_one():
    rng = np.random.default_rng(4)
    g = float_graph(rng)
    calib = [rng.standard_normal((2, 3, 12, 10)).astype(np.float32)]
    a = quantize.observe(g, calib, backend="native", num_threads=1)
    b = quantize.observe(g, calib, backend="reference")
    assert a.keys() == b.keys() == {0, 2, 5}
    for t in a:
        np.testing.assert_allclose(a[t], b[t], rtol=1e-5, atol=1e-6)


@needs_core
@pytest.mark.parametrize("impl", impl_params())
def test_engine_runs_the_int8_graph_like_the_reference(impl, monkeypatch):
    rng = np.random.default_rng(5)
    g = float_graph(rng)
    q = quantize.quantize_graph(g, [rng.standard_normal((4, 3, 12, 10)).astype(np.float32)])
    x = rng.standard_normal((3, 3, 12, 10)).astype(np.float32)
    ref = reference_forward(q, x)
    for nt in (1, 2):
        y = Engine(q, nt, impl=impl)(x)
        # the int8 convs are exact; the global pool's float sum may round differently in the
        # engine, which can move the classifier's quantised input by one step at most
        np.testing.assert_allclose(y, ref, atol=2e-2 * float(np.abs(ref).max()))
    monkeypatch.setenv("SBNN_ISA", "scalar")
    eng = Engine(q, 1)
    assert all(li["kernel"].startswith("int8:scalar") for li in eng.layer_info()
               if li["kernel"].startswith("int8"))
    np.testing.assert_allclose(eng(x), ref, atol=2e-2 * float(np.abs(ref).max()))


@needs_core
def test_the_stem_alone_is_exact_in_the_engine():
    rng = np.random.default_rng(6)
    g = float_graph(rng)
    g = Graph(g.nodes[:3], 2, {})
    q = quantize.quantize_graph(g, [rng.standard_normal((4, 3, 12, 10)).astype(np.float32)])
    x = rng.standard_normal((5, 3, 12, 10)).astype(np.float32)
    np.testing.assert_array_equal(Engine(q, 2)(x), reference_forward(q, x))


def test_int8_graph_round_trips_through_the_file(tmp_path):
    rng = np.random.default_rng(7)
    g = float_graph(rng)
    q = quantize.quantize_graph(g, [rng.standard_normal((2, 3, 12, 10)).astype(np.float32)],
                                backend="reference")
    path = tmp_path / "q.sbnn"
    fileformat.save(q, path)
    back = fileformat.load(path)
    assert back.nodes[1].params["weight"].dtype == np.int8
    x = rng.standard_normal((2, 3, 12, 10)).astype(np.float32)
    np.testing.assert_array_equal(reference_forward(back, x), reference_forward(q, x))
    assert back.metadata["int8"] == q.metadata["int8"]
    # int8 weights take a quarter of the bytes of float ones
    assert path.stat().st_size < len(fileformat.dumps(g))


def test_depthwise_dilated_and_nonsquare_convs_quantise_with_their_geometry():
    # the pass keeps every conv attribute (groups, dilation, per-axis stride and pads), so a
    # DS-CNN's depthwise convs become grouped int8 convs the engine runs as the reference does
    rng = np.random.default_rng(11)

    def f(*s):
        return rng.standard_normal(s).astype(np.float32)
    geo = {"stride": [1, 2], "padding": [1, 0, 2, 1], "dilation": [2, 1], "groups": 8}
    g = Graph([Node("input", [], {"shape": [8, 9, 11]}, {}, "input"),
               Node("conv2d", [0], dict(geo), {"weight": f(8, 1, 3, 2), "bias": f(8)}, "dw"),
               Node("relu", [1], {}, {}, "act")], 2, {})
    calib = [f(4, 8, 9, 11) for _ in range(2)]
    q = quantize.quantize_graph(g, calib, backend="reference")
    assert q.nodes[1].op == "qconv2d"
    assert {k: q.nodes[1].attrs[k] for k in geo} == geo
    x = f(3, 8, 9, 11)
    ref = reference_forward(q, x)
    assert ref.shape == reference_forward(g, x).shape
    if core is not None:
        np.testing.assert_array_equal(Engine(q, num_threads=1)(x), ref)


def test_bad_int8_nodes_are_refused():
    rng = np.random.default_rng(8)
    q = quantize.quantize_graph(float_graph(rng), [np.ones((1, 3, 12, 10), np.float32)],
                                backend="reference")
    for attr, val in [("x_zero", 256), ("x_scale", 0.0), ("groups", 3)]:
        bad = Graph([Node(n.op, n.inputs, dict(n.attrs), dict(n.params), n.name)
                     for n in q.nodes], q.output, {})
        bad.nodes[1].attrs[attr] = val
        with pytest.raises(SBNNFormatError):
            infer_shapes(bad)
    bad.nodes[1] = Node(q.nodes[1].op, [0], dict(q.nodes[1].attrs),
                        {"weight": q.nodes[1].params["weight"].astype(np.float32),
                         "w_scale": q.nodes[1].params["w_scale"]}, "stem")
    with pytest.raises(SBNNFormatError, match="i8"):
        infer_shapes(bad)


# -- ONNX QDQ and the C99 kernel --------------------------------------------------------------

def test_onnx_qdq_runs_in_onnxruntime_like_the_reference():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from sbnn_runtime.lower_onnx import to_onnx

    rng = np.random.default_rng(9)
    g = float_graph(rng)
    q = quantize.quantize_graph(g, [rng.standard_normal((4, 3, 12, 10)).astype(np.float32)],
                                backend="reference")
    model = to_onnx(q)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, 3, 12, 10)).astype(np.float32)
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    ref = reference_forward(q, x)
    np.testing.assert_allclose(y, ref, atol=2e-2 * float(np.abs(ref).max()))


COMPILERS = [c for c in ("gcc", "clang") if shutil.which(c)]
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wshadow",
          "-Wdouble-promotion", "-Wconversion", "-O2"]


@pytest.mark.skipif(not COMPILERS, reason="no C compiler")
def test_c99_kernel_equals_the_reference(tmp_path):
    src = tmp_path / "sbnn_qconv.c"
    for name, data in kernel_files().items():
        (tmp_path / name).write_bytes(data)
    for cc in COMPILERS:
        r = subprocess.run([cc, *STRICT, "-c", str(src), "-o", str(tmp_path / f"q_{cc}.o")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    so = tmp_path / "libq.so"
    subprocess.run([COMPILERS[0], "-std=c99", "-O2", "-fPIC", "-shared",
                    *map(str, sorted(tmp_path.glob("*.c"))), "-o", str(so)], check=True)
    lib = ctypes.CDLL(str(so))
    P = ctypes.c_void_p
    lib.sbnn_qconv2d.argtypes = [P, P, P, P, P, ctypes.c_float, ctypes.c_int] + \
        [ctypes.c_int] * 15 + [P, P, ctypes.c_int] + [P] * 4
    lib.sbnn_quantize_u8.argtypes = [P, P, ctypes.c_int, ctypes.c_float, ctypes.c_int]
    xt = np.array([0.25, 0.75, 1.25, -0.25, -0.75, 0, 1e3, -1e3, np.nan, np.inf, -np.inf,
                   1e30], np.float32)
    qt = np.zeros(xt.size, np.uint8)
    lib.sbnn_quantize_u8(xt.ctypes.data, qt.ctypes.data, xt.size, 0.5, 10)
    np.testing.assert_array_equal(qt, qkernels.quantize_reference(xt, 0.5, 10))
    for shape in SHAPES:
        x, wq, ws, b, xs, xz, st, pads, dil, g = _case(shape, 1)
        ref = qkernels.qconv2d_reference(x, wq, ws, b, xs, xz, st, pads, dil, g)
        scale = qkernels.out_scale(xs, ws)
        n, ci, h, w = x.shape
        co, _, kh, kw = wq.shape
        y = np.zeros(ref.shape, np.float32)
        xq = np.zeros(ci * h * w, np.uint8)
        for i in range(n):
            lib.sbnn_qconv2d(x[i].ctypes.data, y[i].ctypes.data, wq.ctypes.data,
                             scale.ctypes.data, None if b is None else b.ctypes.data, xs, xz,
                             ci, h, w, co, kh, kw, st[0], st[1], pads[0], pads[1], dil[0],
                             dil[1], g, ref.shape[2], ref.shape[3], xq.ctypes.data, None, 0,
                             None, None, None, None)
        np.testing.assert_array_equal(y, ref)
        # folded into the binarisation after it: the +-1 map from the int32 sums alone, the
        # thresholds at values the outputs take (on the threshold: +1) and between them
        thr = _hit_thresholds(ref, np.random.default_rng(len(ref.shape) + co))
        t = passes.qconv_thresholds(_qnode(wq, ws, b, xs, xz, st, pads, dil, g), thr)
        for pad in (0, 1, 2):
            oh, ow = ref.shape[2] + 2 * pad, ref.shape[3] + 2 * pad
            m = np.full((n, co, oh, ow), 7, np.int8)
            for i in range(n):
                lib.sbnn_qconv2d(x[i].ctypes.data, m[i].ctypes.data, wq.ctypes.data, None, None,
                                 xs, xz, ci, h, w, co, kh, kw, st[0], st[1], pads[0], pads[1],
                                 dil[0], dil[1], g, ref.shape[2], ref.shape[3], xq.ctypes.data,
                                 t.ctypes.data, pad, None, None, None, None)
            want = np.pad(np.where(ref >= thr[None, :, None, None], 1, -1).astype(np.int8),
                          ((0, 0), (0, 0), (pad, pad), (pad, pad)))
            np.testing.assert_array_equal(m, want)
            assert (ref == thr[None, :, None, None]).any()  # values on the threshold were met


def _qnode(wq, ws, b, xs, xz, st, pads, dil, g) -> Node:
    params = {"weight": wq, "w_scale": ws, **({} if b is None else {"bias": b})}
    return Node("qconv2d", [0], {"stride": list(st), "padding": list(pads),
                                 "dilation": list(dil), "groups": g, "x_scale": xs,
                                 "x_zero": xz}, params)


def _hit_thresholds(y: np.ndarray, rng) -> np.ndarray:
    """Per channel of y (N, C, H, W): a value y takes (every other channel) or one between."""
    co = y.shape[1]
    flat = y.transpose(1, 0, 2, 3).reshape(co, -1)
    pick = flat[np.arange(co), rng.integers(0, flat.shape[1], co)]
    other = (np.median(flat, axis=1) + np.float32(1e-3)).astype(np.float32)
    out = np.where(np.arange(co) % 2 == 0, pick, other).astype(np.float32)
    out[0] = flat[0].min()  # the smallest: every value is on or above it
    return out


def test_int8_thresholds_equal_the_float_binarisation_on_every_sum():
    # the fold of an int8 conv into the binarisation after it (passes.qconv_thresholds):
    # acc >= T_c exactly where float(acc) * scale_c + bias_c >= thr_c, two float32 roundings;
    # checked on every sum near T, on random sums over the whole range and at its ends
    rng = np.random.default_rng(12)
    for shape in SHAPES:
        x, wq, ws, b, xs, xz, st, pads, dil, g = _case(shape, int(rng.integers(0, 4)))
        nd = _qnode(wq, ws, b, xs, xz, st, pads, dil, g)
        co = wq.shape[0]
        k = int(np.prod(wq.shape[1:])) * 255 * 127
        scale = qkernels.out_scale(xs, ws)
        acc = np.concatenate([rng.integers(-k, k + 1, (4096, co)), np.full((1, co), -k),
                              np.full((1, co), k)]).astype(np.int64)
        # thresholds on values the outputs take, between them, and past either end
        y = acc.astype(np.float32) * scale + (0 if b is None else b)
        thr = y[rng.integers(0, len(y), co), np.arange(co)].astype(np.float32)
        thr[::3] += np.float32(0.3)
        if co > 2:
            thr[1], thr[2] = -np.float32(1e30), np.float32(1e30)
        t = passes.qconv_thresholds(nd, thr)
        assert t.dtype == np.int32 and ((-k <= t) & (t <= k + 1)).all()
        near = t[None, :].astype(np.int64) + np.arange(-40, 41)[:, None]
        for a in (acc, np.clip(near, -k, k)):
            yy = a.astype(np.float32) * scale + (np.float32(0) if b is None else b)
            np.testing.assert_array_equal(a >= t, yy >= thr)
        if co > 2:
            assert t[1] == -k and t[2] == k + 1
    # no threshold sure to exist: the float path stays
    x, wq, ws, b, xs, xz, st, pads, dil, g = _case(SHAPES[4], 1)
    for bad_ws, bad_b, bad_t in [(-ws, b, None), (ws * 0, b, None), (ws, b * np.nan, None),
                                 (ws, b, np.full(ws.size, np.inf, np.float32))]:
        nd = _qnode(wq, bad_ws.astype(np.float32), bad_b, xs, xz, st, pads, dil, g)
        assert passes.qconv_thresholds(nd, bad_t) is None
