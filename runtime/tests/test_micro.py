"""The C99 micro kernels (runtime/csrc/micro) against the numpy reference, kernel by kernel.

Every file compiles alone under the strict flags; then all of them are built into one shared
library that ctypes calls on many shapes (odd sizes, stride 2, padding, every weight
encoding). Skipped when there is no C compiler.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sbnn_runtime import kernels
from sbnn_runtime.lower_c import kernel_files
from sbnn_runtime.ops import OPS, Node
from sbnn_runtime.passes import choose_encoding

STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wshadow",
          "-Wdouble-promotion", "-Wconversion", "-O2"]
COMPILERS = [c for c in ("gcc", "clang") if shutil.which(c)]
pytestmark = pytest.mark.skipif(not COMPILERS, reason="no C compiler (gcc/clang) on PATH")
RTOL = 1e-5

F = ctypes.POINTER(ctypes.c_float)
I32 = ctypes.POINTER(ctypes.c_int32)
I8 = ctypes.POINTER(ctypes.c_int8)


class SBLayer(ctypes.Structure):  # sbnn_sb_layer
    _fields_ = [(k, ctypes.c_int) for k in
                ("ci", "h", "w", "co", "kh", "kw", "s", "p", "oh", "ow", "fmt", "start_bytes")] + \
               [(k, ctypes.c_void_p) for k in
                ("idx", "start", "bits", "eta", "xi", "bias", "thr")]


class Epi(ctypes.Structure):  # sbnn_epi
    _fields_ = [(k, ctypes.c_int) for k in
                ("pool", "k", "s", "p", "oh", "ow", "is_max", "cip", "add", "bin", "pad")] + \
               [("thr", ctypes.c_void_p)]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    d = tmp_path_factory.mktemp("micro")
    for name, data in kernel_files().items():
        (d / name).write_bytes(data)
    srcs = sorted(d.glob("*.c"))
    assert {s.name for s in srcs} >= {"sbnn_eltwise.c", "sbnn_pool.c", "sbnn_conv2d.c",
                                      "sbnn_linear.c", "sbnn_sbdecode.c", "sbnn_sbconv.c",
                                      "sbnn_epilogue.c"}
    for cc in COMPILERS:  # each file on its own, warnings as errors
        for src in srcs:
            r = subprocess.run([cc, *STRICT, "-c", str(src), "-o", str(d / f"{src.stem}.o")],
                               capture_output=True, text=True)
            assert r.returncode == 0, f"{cc} {src.name}:\n{r.stderr}"
    so = d / "libmicro.so"
    subprocess.run([COMPILERS[0], "-std=c99", "-O2", "-fPIC", "-shared", "-ffp-contract=off",
                    *map(str, srcs), "-o", str(so)], check=True)
    return ctypes.CDLL(str(so))


def fp(a: np.ndarray):
    assert a.flags.c_contiguous
    return a.ctypes.data_as(F)


def addr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def close(got, want, rtol=RTOL):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape
    scale = max(float(np.abs(want).max()), 1e-6)
    assert float(np.abs(got - want).max()) <= rtol * scale, float(np.abs(got - want).max())


def f32(rng, *shape, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, shape).astype(np.float32)


def test_eltwise(lib):
    rng = np.random.default_rng(0)
    for c, hw in [(1, 1), (3, 7), (16, 25), (5, 1)]:
        x, y = f32(rng, c, hw, lo=-2, hi=2), np.zeros((c, hw), np.float32)
        x[0, 0] = 0.0  # the comparisons' edges
        sc, sh, sl = f32(rng, c), f32(rng, c), f32(rng, c, lo=0, hi=0.5)
        x4 = x.reshape(1, c, hw, 1)

        def ref(op, params=None, attrs=None, xs=(x4,), shape=(c, hw)):
            nd = Node(op, [], attrs or {}, params or {})
            return OPS[op].reference(nd, list(xs)).reshape(shape)

        lib.sbnn_affine(fp(x), fp(y), fp(sc), fp(sh), c, hw)
        np.testing.assert_array_equal(y, ref("affine", {"scale": sc, "shift": sh}))
        lib.sbnn_hardtanh(fp(x), fp(y), ctypes.c_float(-0.5), ctypes.c_float(0.75), c * hw)
        np.testing.assert_array_equal(y, ref("hardtanh", attrs={"lo": -0.5, "hi": 0.75}))
        lib.sbnn_relu(fp(x), fp(y), c * hw)
        np.testing.assert_array_equal(y, ref("relu"))
        lib.sbnn_rprelu(fp(x), fp(y), fp(sc), fp(sl), fp(sh), c, hw)
        np.testing.assert_array_equal(y, ref("rprelu", {"shift_in": sc, "slope": sl,
                                                        "shift_out": sh}))
        x2 = f32(rng, c, hw)
        lib.sbnn_add(fp(x), fp(x2), fp(y), c * hw)
        np.testing.assert_array_equal(y, ref("add", xs=(x4, x2.reshape(x4.shape))))
        lib.sbnn_relu(fp(x), fp(x), c * hw)  # in place
        np.testing.assert_array_equal(x, np.maximum(x4.reshape(c, hw), 0))


POOLS = [(1, 1, 1, 1, 1, 0), (3, 7, 9, 3, 2, 1), (2, 8, 8, 2, 2, 0), (4, 5, 6, 3, 1, 1),
         (2, 6, 5, 2, 1, 1), (1, 9, 4, 4, 3, 2)]


@pytest.mark.parametrize("c,h,w,k,s,p", POOLS)
def test_pools(lib, c, h, w, k, s, p):
    rng = np.random.default_rng(c * 100 + h)
    x = f32(rng, c, h, w, lo=-3, hi=1)  # mostly negative: a max over padding would show
    for op, cip in (("maxpool", 1), ("avgpool", 1), ("avgpool", 0)):
        attrs = {"k": k, "stride": s, "pad": p}
        if op == "avgpool":
            attrs["count_include_pad"] = bool(cip)
        nd = Node(op, [], attrs)
        want = OPS[op].reference(nd, [x[None]])[0]
        y = np.zeros(want.shape, np.float32)
        lib.sbnn_pool(fp(x), fp(y), c, h, w, k, s, p, want.shape[1], want.shape[2],
                      int(op == "maxpool"), cip)
        close(y, want, 1e-6)
    y = np.zeros(c, np.float32)
    lib.sbnn_global_avgpool(fp(x), fp(y), c, h * w)
    close(y, OPS["global_avgpool"].reference(Node("global_avgpool"), [x[None]]).reshape(c), 1e-6)


CONVS = [(1, 1, 1, 1, 1, 1, 0), (3, 7, 9, 4, 3, 1, 1), (5, 8, 8, 6, 3, 2, 1), (2, 6, 5, 3, 1, 1, 0),
         (4, 9, 7, 2, 2, 2, 0), (3, 5, 5, 7, 5, 1, 2), (2, 4, 7, 3, 3, 3, 2)]


@pytest.mark.parametrize("ci,h,w,co,k,s,p", CONVS)
def test_conv2d_and_linear(lib, ci, h, w, co, k, s, p):
    rng = np.random.default_rng(ci * 7 + h)
    x, wt, b = f32(rng, ci, h, w), f32(rng, co, ci, k, k), f32(rng, co)
    for bias in (b, None):
        want = kernels.conv2d_reference(x[None], wt, bias, s, p)[0]
        y = np.zeros(want.shape, np.float32)
        lib.sbnn_conv2d(fp(x), fp(y), fp(wt), addr(bias) and fp(bias), ci, h, w, co, k, k, s, p,
                        want.shape[1], want.shape[2], None, None, None, None)
        close(y, want)
    n, o = ci * h * w, co
    wl = f32(rng, o, n)
    y = np.zeros(o, np.float32)
    lib.sbnn_linear(fp(x), fp(y), fp(wl), fp(b), o, n)
    close(y, OPS["linear"].reference(Node("linear", [], {}, {"weight": wl, "bias": b}),
                                     [x.reshape(1, -1)])[0])


def random_bits(rng, co, ci, k, ones):
    bits = (rng.random((co, ci, k, k)) < ones).astype(np.uint8)
    bits[0] = 0  # an all-zero output channel
    return bits


def layer_struct(bits, fmt, keep, **shape) -> SBLayer:
    """An sbnn_sb_layer over ``bits`` encoded as ``fmt`` (arrays kept alive in ``keep``)."""
    enc = choose_encoding(bits, fmt)  # the encoder: sbnn_runtime.passes
    dt = {1: np.uint8, 2: np.uint16, 4: np.uint32}
    stream = np.ascontiguousarray(enc.data, dt[enc.data_bytes])
    keep.append(stream)
    code = {"packed": 0, "idx8": 1, "idx16": 2, "idx32": 4, "gap8": 8}[enc.kind]
    L = SBLayer(**shape, fmt=code, start_bytes=2)
    if enc.starts is None:
        L.bits = stream.ctypes.data
    else:
        start = np.ascontiguousarray(enc.starts, dt[enc.start_bytes])
        keep.append(start)
        L.idx = addr(stream) if stream.size else None
        L.start, L.start_bytes = addr(start), enc.start_bytes
    return L, enc


@pytest.mark.parametrize("co,ci,k,ones", [(3, 2, 3, 0.3), (5, 64, 3, 0.01), (4, 3, 1, 0.9),
                                          (2, 40, 5, 0.002), (6, 5, 2, 0.5)])
@pytest.mark.parametrize("fmt", ["packed", "sparse"])
def test_weight_decoders(lib, co, ci, k, ones, fmt):
    # taps of every channel, from each encoding, equal np.nonzero of the bits
    rng = np.random.default_rng(co * ci + k)
    bits = random_bits(rng, co, ci, k, ones)
    if co > 4:  # long gaps: 255 escapes, a gap of exactly 255
        flat = bits.reshape(co, -1)
        flat[1] = 0
        flat[1, [min(255, flat.shape[1] - 1)]] = 1
    keep: list = []
    h = w = 4
    L, enc = layer_struct(bits, fmt, keep, ci=ci, h=h, w=w, co=co, kh=k, kw=k, s=1, p=1, oh=1,
                          ow=1)
    taps = np.zeros(ci * k * k + 1, np.int32)
    wp, plane = w + 2, (h + 2) * (w + 2)
    for o in range(co):
        want = np.nonzero(bits[o].reshape(-1))[0]
        n = lib.sbnn_sb_offsets(ctypes.byref(L), o, taps.ctypes.data_as(I32))
        t = want
        offs = (t // (k * k)) * plane + (t % (k * k)) // k * wp + (t % (k * k)) % k
        np.testing.assert_array_equal(taps[:n], offs, err_msg=f"{enc.kind} channel {o}")
        if enc.kind == "packed":
            n = lib.sbnn_taps_packed(ctypes.c_void_p(L.bits), o * ci * k * k, ci * k * k,
                                     taps.ctypes.data_as(I32))
            np.testing.assert_array_equal(taps[:n], want)


def test_window_sums(lib):
    rng = np.random.default_rng(3)
    from numpy.lib.stride_tricks import sliding_window_view
    for hp, wp, kh, kw, s in [(5, 6, 3, 3, 1), (9, 9, 3, 3, 2), (4, 7, 1, 1, 1), (6, 5, 2, 4, 2)]:
        cs = rng.integers(-8, 9, (hp, wp)).astype(np.float32)
        want = sliding_window_view(cs, (kh, kw))[::s, ::s].sum((2, 3))
        ws = np.zeros(want.shape, np.float32)
        lib.sbnn_window_sums(fp(cs), fp(ws), wp, kh, kw, s, *want.shape)
        np.testing.assert_array_equal(ws, want)


SBCONVS = [(2, 5, 6, 3, 3, 1, 1), (6, 7, 9, 4, 3, 2, 1), (3, 4, 4, 5, 1, 1, 0),
           (8, 6, 5, 3, 2, 2, 0), (1, 3, 3, 2, 3, 1, 1), (64, 4, 5, 4, 3, 1, 1)]


@pytest.mark.parametrize("ci,h,w,co,k,s,p", SBCONVS)
@pytest.mark.parametrize("fmt", ["packed", "sparse"])
def test_sbconv(lib, ci, h, w, co, k, s, p, fmt):
    rng = np.random.default_rng(ci + 10 * h + co)
    bits = random_bits(rng, co, ci, k, 0.3)
    eta, xi, bias, thr = (f32(rng, co, lo=0.5, hi=1.5), f32(rng, co, lo=-.3, hi=.3),
                          f32(rng, co), f32(rng, ci, lo=-.2, hi=.2))
    x = f32(rng, ci, h, w)
    x[:, 0, 0] = thr  # sign at the threshold: +1
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    hp, wp = h + 2 * p, w + 2 * p
    keep: list = []
    L, _ = layer_struct(bits, fmt, keep, ci=ci, h=h, w=w, co=co, kh=k, kw=k, s=s, p=p, oh=oh,
                        ow=ow)
    L.eta, L.xi, L.bias = addr(eta), addr(xi), addr(bias)
    offs = np.zeros(ci * k * k, np.int32)
    ws = np.zeros(oh * ow + hp * wp, np.float32)
    for binary in (True, False):
        L.thr = addr(thr) if binary else None
        prm = {"bits": bits, "eta": eta, "xi": xi, "bias": bias}
        if binary:
            prm["thr"] = thr
        nd = Node("sbconv2d", [0], {"stride": s, "padding": p, "binary_input": binary}, prm)
        want = OPS["sbconv2d"].reference(nd, [x[None]])[0]
        y = np.full((co, oh, ow), np.nan, np.float32)
        if binary:
            xp = np.zeros(ci * hp * wp, np.int8)
            lib.sbnn_sbconv_bin(ctypes.byref(L), fp(x), fp(y), xp.ctypes.data_as(I8), fp(ws),
                                offs.ctypes.data_as(I32), None, None, None, None)
            close(y, want)
            # again from the int8 map alone (x = 0): what a producer's epilogue writes
            y2 = np.full_like(y, np.nan)
            lib.sbnn_sbconv_bin(ctypes.byref(L), None, fp(y2), xp.ctypes.data_as(I8), fp(ws),
                                offs.ctypes.data_as(I32), None, None, None, None)
            np.testing.assert_array_equal(y2, y)
        else:
            xp = np.zeros(ci * hp * wp, np.float32)
            lib.sbnn_sbconv_real(ctypes.byref(L), fp(x), fp(y), fp(xp), fp(ws),
                                 offs.ctypes.data_as(I32), None, None, None, None)
            close(y, want, 1e-4 * max(1, ci * k * k / 100))


# (ci, h, w, co, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, groups): grouped, depthwise,
# dilated, non-square (a Conv1d is 1 x k), per-axis strides and pads
BITCONVS = [(4, 7, 6, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2), (8, 1, 20, 8, 1, 5, 1, 2, 0, 2, 0, 2,
            1, 1, 1), (6, 9, 8, 6, 3, 3, 2, 1, 1, 2, 1, 2, 2, 2, 6),
            (16, 5, 7, 12, 3, 1, 1, 1, 1, 0, 1, 0, 1, 1, 4), (3, 1, 13, 5, 1, 3, 1, 1, 0, 1, 0, 1,
            1, 3, 1)]


@pytest.mark.parametrize("geo", BITCONVS)
def test_binary_conv_of_any_geometry_from_its_bits(lib, geo):
    # sbnn_conv2d_bits (1 bit a weight in flash) gives the very floats of sbnn_conv2d_ex on the
    # folded weight eta * b + xi, and the sbconv2d reference within RTOL
    ci, h, w, co, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, g = geo
    rng = np.random.default_rng(sum(geo))
    bits = (rng.random((co, ci // g, kh, kw)) < 0.4).astype(np.uint8)
    bits[0] = 0
    eta, xi, bias = f32(rng, co, lo=.5, hi=1.5), f32(rng, co, lo=-.3, hi=.3), f32(rng, co)
    x = np.sign(f32(rng, ci, h, w)).astype(np.float32)  # the +-1 planes sbnn_sign_planes writes
    attrs = {"stride": [sh, sw], "padding": [pt, pl, pb, pr], "dilation": [dh, dw],
             "groups": g, "binary_input": False}
    nd = Node("sbconv2d", [0], attrs, {"bits": bits, "eta": eta, "xi": xi, "bias": bias})
    want = OPS["sbconv2d"].reference(nd, [x[None]])[0]
    oh, ow = want.shape[1:]
    gv = np.array([sh, sw, pt, pl, dh, dw, g], np.int32)
    packed = np.packbits(bits.reshape(-1), bitorder="little")
    w01 = kernels.dequantized_weight(np.tile(np.array([0, 1], np.uint8), (co, 1)), eta, xi)
    y = np.full(want.shape, np.nan, np.float32)
    lib.sbnn_conv2d_bits(fp(x), fp(y), ctypes.c_void_p(packed.ctypes.data), fp(w01), fp(bias),
                         ci, h, w, co, kh, kw, gv.ctypes.data_as(I32), oh, ow, None, None, None,
                         None)
    wf = kernels.dequantized_weight(bits, eta, xi)
    y2 = np.full(want.shape, np.nan, np.float32)
    lib.sbnn_conv2d_ex(fp(x), fp(y2), fp(wf), fp(bias), ci, h, w, co, kh, kw,
                       gv.ctypes.data_as(I32), oh, ow, None, None, None, None)
    np.testing.assert_array_equal(y, y2)
    close(y, want)


@pytest.mark.parametrize("pool", ["none", "maxpool", "avgpool"])
@pytest.mark.parametrize("add,binmap", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_conv_epilogue(lib, pool, add, binmap):
    # conv -> (+ residual) -> (pool) -> float output or the padded int8 map of its readers
    rng = np.random.default_rng(5)
    ci, h, w, co, k, pad = 3, 7, 6, 4, 3, 1
    if pool != "none" and add:
        pytest.skip("the plan fuses one reader: a pool or an add")
    x, wt, b = f32(rng, ci, h, w), f32(rng, co, ci, k, k), f32(rng, co)
    res, thr = f32(rng, co, h, w), f32(rng, co, lo=-.2, hi=.2)
    want = kernels.conv2d_reference(x[None], wt, b, 1, 1)
    if add:
        want = want + res[None]
    e = Epi(add=add, bin=binmap, pad=pad, thr=addr(thr) if binmap else None)
    oh, ow = h, w
    if pool != "none":
        attrs = {"k": 3, "stride": 2, "pad": 1}
        if pool == "avgpool":
            attrs["count_include_pad"] = False
        want = OPS[pool].reference(Node(pool, [], attrs), [want])
        oh, ow = want.shape[2:]
        e.pool, e.k, e.s, e.p, e.oh, e.ow, e.is_max, e.cip = 1, 3, 2, 1, oh, ow, \
            int(pool == "maxpool"), 0
    want = want[0]
    plane, tmp = np.zeros(h * w, np.float32), np.zeros(oh * ow, np.float32)
    if binmap:
        y = np.zeros((co, oh + 2 * pad, ow + 2 * pad), np.int8)
        want_map = np.zeros_like(y)
        want_map[:, pad:-pad, pad:-pad] = np.where(want >= thr[:, None, None], 1, -1)
    else:
        y = np.zeros(want.shape, np.float32)
    lib.sbnn_conv2d(fp(x), ctypes.cast(y.ctypes.data, F), fp(wt), fp(b), ci, h, w, co, k, k, 1,
                    1, h, w, fp(plane), fp(tmp), fp(res) if add else None, ctypes.byref(e))
    if binmap:
        far = np.abs(want - thr[:, None, None]) > 1e-4  # rounding may flip a value at thr
        np.testing.assert_array_equal(y[:, pad:-pad, pad:-pad][far], want_map[:, pad:-pad,
                                                                              pad:-pad][far])
        assert (y[:, :pad] == 0).all() and (y[:, :, :pad] == 0).all()
    else:
        close(y, want)


def test_kernel_files_ship_as_sources():
    files = kernel_files()
    assert "sbnn_micro.h" in files
    for name, data in files.items():
        text = data.decode()
        assert name.endswith((".c", ".h")) and name.startswith("sbnn_")
        # nothing includes a .c file; the kernels need only stdint.h
        assert '.c"' not in text and "#include <stdlib.h>" not in text
        if name.endswith(".c"):
            assert Path(name).stem in {"sbnn_eltwise", "sbnn_pool", "sbnn_conv2d",
                                       "sbnn_linear", "sbnn_sbdecode", "sbnn_sbconv",
                                       "sbnn_epilogue", "sbnn_qconv", "sbnn_shape"}


@pytest.fixture(scope="module")
def libm_kernels(tmp_path_factory):
    """The kernels that need libm, which travel in the model file (the op's ``c_source``), built
    under the strict flags with callable wrappers."""
    d = tmp_path_factory.mktemp("libm")
    (d / "sbnn_micro.h").write_bytes(kernel_files()["sbnn_micro.h"])
    src = d / "k.c"
    src.write_text('#include <math.h>\n#include "sbnn_micro.h"\n' + OPS["activation"].c_source
                   + OPS["softmax"].c_source + """
void t_activation(const float *x, float *y, int kind, float alpha, int n);
void t_softmax(const float *x, float *y, int c, int hw);
void t_activation(const float *x, float *y, int kind, float alpha, int n)
{ sbnn_activation(x, y, kind, alpha, n); }
void t_softmax(const float *x, float *y, int c, int hw) { sbnn_softmax(x, y, c, hw); }
""")
    so = d / "libk.so"
    r = subprocess.run([COMPILERS[0], *STRICT, "-fPIC", "-shared", "-ffp-contract=off", str(src),
                        "-o", str(so), "-lm"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return ctypes.CDLL(str(so))


@pytest.mark.parametrize("c,hw", [(1, 1), (3, 7), (16, 25), (5, 1), (7, 33)])
def test_activations_softmax_eltwise_concat(lib, libm_kernels, c, hw):
    """The C kernels of issue 19's common ops against the op table's numpy references."""
    from sbnn_runtime.ops import ACTIVATION_KINDS, ELTWISE_KINDS

    rng = np.random.default_rng(c * 100 + hw)
    x = f32(rng, c, hw, lo=-6, hi=6)
    x.flat[:3] = [0.0, -3.0, 3.0][: x.size]  # the kinks of hardswish/hardsigmoid
    y = np.zeros((c, hw), np.float32)
    x4 = x.reshape(1, c, hw, 1)

    def ref(op, attrs, *xs):
        return OPS[op].reference(Node(op, [], attrs, {}), list(xs))

    for k, kind in enumerate(ACTIVATION_KINDS):
        libm_kernels.t_activation(fp(x), fp(y), k, ctypes.c_float(0.125), c * hw)
        close(y, ref("activation", {"kind": kind, "alpha": 0.125}, x4).reshape(c, hw))
    libm_kernels.t_softmax(fp(x), fp(y), c, hw)
    close(y, ref("softmax", {}, x4).reshape(c, hw))
    for k, kind in enumerate(ELTWISE_KINDS):
        for b in (f32(rng, c, hw), f32(rng, c, 1)):
            lib.sbnn_eltwise(fp(x), fp(b), fp(y), k, c, hw, b.shape[1])
            close(y, ref("eltwise", {"kind": kind}, x4, b.reshape(1, c, -1, 1)).reshape(c, hw))
    b = f32(rng, 2, hw)
    yc = np.zeros((c + 2, hw), np.float32)
    lib.sbnn_concat(fp(x), fp(b), fp(yc), c * hw, 2 * hw)
    np.testing.assert_array_equal(yc, ref("concat", {}, x4, b.reshape(1, 2, hw, 1))
                                  .reshape(c + 2, hw))
