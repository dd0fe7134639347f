"""Every native binary-conv kernel against its numpy reference twin (sbnn_runtime.kernels)."""

from __future__ import annotations

import numpy as np
import pytest

from sbnn_runtime import kernels, native
from sbnn_runtime.native import core, native_error


def assert_close(a, b, rtol, atol):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)

needs_core = pytest.mark.skipif(core is None, reason=f"no native core: {native_error}")

IMPLS = ["ref", "scalar", "avx2", "avx512", "neon"]
KINDS = ["sparse", "dense"]

# (N, Ci, Co, H, W, k, stride, pad)
SHAPES = [
    (1, 1, 3, 5, 5, 3, 1, 1),
    (3, 3, 5, 7, 9, 3, 1, 1),
    (1, 63, 4, 6, 5, 3, 2, 1),
    (1, 64, 7, 5, 7, 3, 1, 0),
    (3, 65, 6, 9, 8, 3, 2, 0),
    (1, 130, 5, 4, 6, 1, 1, 0),
    (1, 65, 9, 7, 7, 1, 2, 0),
    (1, 130, 3, 3, 3, 3, 1, 1),
    (3, 3, 70, 11, 13, 3, 2, 1),
    (2, 20, 5, 6, 24, 3, 2, 1),  # stride-2 rows split 16 then 8 at a time, from registers
    (2, 9, 4, 4, 4, 3, 1, 1),  # the 4x4 map's binarisation straight from registers
]
FRACS = [0.0, 0.05, 0.3, 1.0]


def impl_params():
    avail = native.available_impls()
    return [pytest.param(i, marks=pytest.mark.skipif(i not in avail, reason=f"{i} not on this CPU"))
            for i in IMPLS]


def make_case(shape, frac, seed):
    N, Ci, Co, H, W, k, s, p = shape
    g = np.random.default_rng(seed)
    x = g.standard_normal((N, Ci, H, W), dtype=np.float32)
    x[:, :, 0, 0] = 0.0  # sign(0) = +1, pinned
    bits = (g.random((Co, Ci, k, k)) < frac).astype(np.uint8)
    if Co > 2 and 0 < frac < 1:
        bits[1] = 0  # an all-zero filter
        bits[2, : Ci // 2] = 0  # all-zero kernels
    eta = (g.random(Co) + 0.5).astype(np.float32)
    xi = (g.standard_normal(Co) * 0.1).astype(np.float32)
    bias = g.standard_normal(Co).astype(np.float32)
    thr = (g.standard_normal(Ci) * 0.3).astype(np.float32)
    return x, bits, eta, xi, bias, thr, s, p


@needs_core
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("impl", impl_params())
@pytest.mark.parametrize("shape", SHAPES)
def test_counts_exact(shape, impl, kind):
    for j, frac in enumerate(FRACS):
        x, bits, _, _, _, thr, s, p = make_case(shape, frac, seed=j)
        for t in (None, thr):
            rc, rw = kernels.bconv2d_counts_reference(x, bits, s, p, t)
            c, w = kernels.bconv2d_counts(x, bits, s, p, t, impl=impl, kind=kind)
            assert c.dtype == np.int32 and w.dtype == np.int32
            assert np.array_equal(c, rc), (shape, frac, impl, kind)
            assert np.array_equal(w, rw), (shape, frac, impl, kind)


@needs_core
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("impl", impl_params())
@pytest.mark.parametrize("shape", SHAPES[::2])
def test_float_matches_dequantized_conv(shape, impl, kind):
    """The binarised layer equals a float conv fed sign(x) and the dequantized weights."""
    x, bits, eta, xi, bias, thr, s, p = make_case(shape, 0.2, seed=7)
    y = kernels.bconv2d(x, bits, eta, xi, bias, s, p, thr, impl=impl, kind=kind)
    sx = kernels.binarize_reference(x, thr)
    ref = kernels.conv2d_reference(sx.astype(np.float64),
                                   kernels.dequantized_weight(bits, eta, xi).astype(np.float64),
                                   bias, stride=s, padding=p)
    Ci, k = shape[1], shape[5]
    assert_close(y, ref, rtol=1e-5, atol=1e-5 * Ci * k * k)


@needs_core
@pytest.mark.parametrize("kind", KINDS)
def test_threads_and_batches_agree(kind):
    x, bits, eta, xi, bias, thr, s, p = make_case((5, 70, 40, 9, 9, 3, 1, 1), 0.1, seed=3)
    y1 = kernels.bconv2d(x, bits, eta, xi, bias, s, p, thr, kind=kind, num_threads=1)
    for n in (1, 5):  # batch < threads (channels split) and batch >= threads (images split)
        y2 = kernels.bconv2d(x[:n], bits, eta, xi, bias, s, p, thr, kind=kind, num_threads=3)
        assert np.array_equal(y1[:n], y2)


@needs_core
def test_sparse_and_dense_agree_and_prepared_layer():
    x, bits, eta, xi, bias, thr, s, p = make_case((2, 33, 8, 6, 6, 3, 1, 1), 0.4, seed=5)
    layer = core.BConv2d(bits, eta, xi, bias, 6, 6, s, p, thr, "sparse")
    assert layer.ones == int(bits.sum())
    assert list(layer.out_shape) == [8, 6, 6]
    ys = layer(x)
    yd = kernels.bconv2d(x, bits, eta, xi, bias, s, p, thr, kind="dense")
    assert_close(ys, yd, rtol=1e-6, atol=1e-4)
    # the dense layer builds no sparse plan, and still counts its 1-bits
    dense = core.BConv2d(bits, eta, xi, bias, 6, 6, s, p, thr, "dense")
    assert dense.ones == int(bits.sum())
    assert np.array_equal(dense(x), yd)


@needs_core
def test_non_contiguous_input_is_copied_not_misread():
    x, bits, eta, xi, bias, _, s, p = make_case((2, 5, 4, 7, 6, 3, 1, 1), 0.3, seed=2)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # other strides
    assert not xt.flags.c_contiguous
    ref = kernels.bconv2d(x, bits, eta, xi, bias, s, p)
    args = (bits, eta, xi, bias, s, p)
    assert np.array_equal(core.bconv2d(xt, *args), ref)
    xn = np.asfortranarray(x)
    assert np.array_equal(core.bconv2d(xn, *args), ref)
    wide = np.zeros((2, 5, 7, 12), np.float32)
    wide[..., ::2] = x
    assert np.array_equal(core.bconv2d(wide[..., ::2], *args), ref)


@needs_core
def test_errors_are_clear():
    x, bits, eta, xi, bias, _, s, p = make_case((1, 4, 3, 5, 5, 3, 1, 1), 0.3, seed=1)
    xn, bn, en = x, bits, eta
    with pytest.raises(ValueError, match="eta"):
        core.bconv2d(xn, bn, en[:2], en, en, s, p)
    with pytest.raises(ValueError, match="x: expected"):
        core.BConv2d(bn, en, en, en, 5, 5, s, p)(xn[:, :3])
    with pytest.raises(ValueError, match="4-D"):
        core.bconv2d(xn[0], bn, en, en, en, s, p)
    with pytest.raises(ValueError, match="thr"):
        core.bconv2d(xn, bn, en, en, en, s, p, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="0 or 1"):
        core.bconv2d(xn, bn * 2 + 1, en, en, en, s, p)
    with pytest.raises(ValueError, match="impl"):
        core.bconv2d(xn, bn, en, en, en, s, p, impl="sse9")
    with pytest.raises(ValueError, match="kind"):
        core.bconv2d(xn, bn, en, en, en, s, p, kind="medium")
    with pytest.raises(ValueError, match="larger than"):
        core.bconv2d(xn[..., :2, :2], bn, en, en, en, 1, 0)
    with pytest.raises(TypeError):
        core.bconv2d(xn.astype(np.complex64), bn, en, en, en, s, p)


@needs_core
def test_env_var_forces_isa(monkeypatch):
    monkeypatch.setenv("SBNN_ISA", "scalar")
    assert core.default_impl() == "scalar"
    monkeypatch.setenv("SBNN_ISA", "avx512" if "avx512" not in core.available_impls() else "x")
    with pytest.raises(ValueError):
        core.default_impl()
    monkeypatch.delenv("SBNN_ISA")
    assert core.default_impl() in core.available_impls()


def test_reference_fallback_without_core(monkeypatch):
    x, bits, eta, xi, bias, thr, s, p = make_case((2, 3, 4, 5, 5, 3, 2, 1), 0.3, seed=4)
    monkeypatch.setattr(kernels, "core", None)
    y = kernels.bconv2d(x, bits, eta, xi, bias, s, p, thr)
    ref = kernels.conv2d_reference(kernels.binarize_reference(x, thr),
                                   kernels.dequantized_weight(bits, eta, xi), bias, s, p)
    assert_close(y, ref, rtol=1e-5, atol=1e-4)
    with pytest.raises(RuntimeError):
        kernels.bconv2d(x, bits, eta, xi, bias, s, p, impl="scalar")
    counts = kernels.bconv2d_counts(x, bits, s, p, thr)
    for got, want in zip(counts, kernels.bconv2d_counts_reference(x, bits, s, p, thr), strict=True):
        assert np.array_equal(got, want)
    with pytest.raises(RuntimeError):
        kernels.bconv2d_counts(x, bits, s, p, impl="scalar")
    with pytest.raises(ValueError, match="impl must be one of"):  # checked before the core
        kernels.bconv2d_counts(x, bits, s, p, impl="nope")


def test_reference_pins_sign_zero_and_padding():
    x = np.zeros((1, 1, 2, 2), np.float32)
    bits = np.ones((1, 1, 3, 3), np.uint8)
    c, w = kernels.bconv2d_counts_reference(x, bits, 1, 1)
    # sign(0) = +1 and the padded taps count 0: every window sees the 4 pixels
    assert np.array_equal(c, np.full((1, 1, 2, 2), 4, dtype=np.int32))
    assert np.array_equal(w, np.full((1, 2, 2), 4, dtype=np.int32))


@needs_core
def test_pack_bits_kept():
    bits = np.array([1, 0, 1, 1, 0, 0, 0, 0, 1], np.uint8)
    assert np.array_equal(core.pack_bits(bits), np.packbits(bits, bitorder="little"))


@needs_core
@pytest.mark.parametrize("impl", impl_params())
def test_stacked_small_maps_exact(impl):
    """Small maps are stacked several images to a grid (a partial group at the end of the batch,
    int8 and int32 counts, stride 2, 1x1, channel counts off the word widths): exact counts and
    the same floats with 1 and 3 threads (whole groups per thread, or channel blocks)."""
    if impl == "ref":
        pytest.skip("the reference has no grids")
    n_case = 0
    for N in (1, 2, 3, 5):
        for H, W in ((1, 1), (2, 3), (3, 3), (4, 4), (5, 4), (8, 8), (9, 7)):
            for k, s, p in ((3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0), (1, 1, 1)):
                Ci = (33, 70, 5)[n_case % 3]
                frac = (0.05, 1.0, 0.3)[n_case % 3]
                n_case += 1
                x, bits, eta, xi, bias, thr, _, _ = make_case((N, Ci, 19, H, W, k, s, p), frac,
                                                              seed=n_case)
                rc, rw = kernels.bconv2d_counts_reference(x, bits, s, p, thr)
                c, w = kernels.bconv2d_counts(x, bits, s, p, thr, impl=impl, kind="sparse")
                case = (N, Ci, H, W, k, s, p, frac)
                assert np.array_equal(c, rc), case
                assert np.array_equal(w, rw), case
                y1 = kernels.bconv2d(x, bits, eta, xi, bias, s, p, thr, impl=impl)
                y3 = kernels.bconv2d(x, bits, eta, xi, bias, s, p, thr, impl=impl, num_threads=3)
                assert np.array_equal(y1, y3), case
                ref = eta.reshape(1, -1, 1, 1) * rc + xi.reshape(1, -1, 1, 1) * rw[:, None] + \
                    bias.reshape(1, -1, 1, 1)
                assert_close(y1, ref, rtol=1e-5, atol=1e-4)


def _fma32(a, b, c):
    # float32 fused multiply-add, exact: the float64 sum is exact for the magnitudes used below
    # (spans of at most ~40 bits), so one rounding to float32 is the FMA's
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


@needs_core
@pytest.mark.parametrize("impl", impl_params())
def test_epilogue_rounding_pinned(impl):
    """The sparse float epilogue is eta*count + (xi*wsum + bias), bit for bit, with the ISA's
    rounding: two fused multiply-adds in the x86 SIMD tables, a rounding per operation in the
    scalar, NEON and reference ones. Narrow maps (4 <= Wo < 8: rows packed into one flat run,
    issue 20), wide rows, stacked images, int8 counts (<= 127 1-bits) and int32 ones."""
    fused = impl in ("avx2", "avx512")
    g = np.random.default_rng(11)
    n_case = 0
    for H, W, s in ((4, 4, 1), (5, 5, 1), (6, 7, 1), (7, 4, 1), (8, 8, 1), (9, 12, 1), (9, 9, 2),
                    (13, 8, 2)):
        for Ci, frac in ((19, 0.05), (70, 0.3)):  # int8 counts; filters past 127 1-bits
            for N in (1, 3):
                n_case += 1
                x = g.standard_normal((N, Ci, H, W), dtype=np.float32)
                bits = (g.random((6, Ci, 3, 3)) < frac).astype(np.uint8)
                sign = lambda n: np.where(g.random(n) < 0.5, -1.0, 1.0)  # noqa: E731
                eta = (sign(6) * g.uniform(0.5, 1.5, 6)).astype(np.float32)
                xi = (sign(6) * g.uniform(0.05, 0.5, 6)).astype(np.float32)
                bias = (sign(6) * g.uniform(0.5, 2.0, 6)).astype(np.float32)
                thr = (g.standard_normal(Ci) * 0.3).astype(np.float32)
                c, w = kernels.bconv2d_counts_reference(x, bits, s, 1, thr)
                cf, wf = c.astype(np.float32), w[:, None].astype(np.float32)
                e, xv, b = (v.reshape(1, -1, 1, 1) for v in (eta, xi, bias))
                if fused:
                    want = _fma32(e, cf, _fma32(xv, wf, b))
                else:
                    want = e * cf + (xv * wf + b)
                y = core.BConv2d(bits, eta, xi, bias, H, W, s, 1, thr, "sparse", impl)(x)
                assert np.array_equal(y, want), (H, W, s, Ci, frac, N)
    assert n_case == 32


@needs_core
def test_small_maps_share_a_grid():
    ones = np.ones(8, np.float32)
    bits = np.zeros((8, 8, 3, 3), np.uint8)
    assert core.BConv2d(bits, ones, ones, ones, 4, 4, 1, 1).images_per_group > 1
    assert core.BConv2d(bits, ones, ones, ones, 32, 32, 1, 1).images_per_group == 1


@needs_core
@pytest.mark.parametrize("impl", impl_params())
def test_wrapped_grids_exact(impl):
    """Wrapped grids (issue 20: stride-1 rows at pitch W with no padding columns, the terms of
    taps kx != pad masked where they read the neighbouring row): exact counts and window sums
    on maps where the layout is chosen (8x8 at batch 1, 16x8, stacked 4x4, 7x7, non-square,
    5x5 kernels with pad 1 and 2), int8 and int32 counts, 1-bits on one kx column only (empty
    segments), batches with partial groups, 1 and 3 threads."""
    if impl == "ref":
        pytest.skip("the reference has no grids")
    geom = core.bconv_geometry
    assert geom(256, 8, 8, 3, 3, 1, 1, 32, 1)["wrap"] == 1  # the ResNet-18 8x8 stage, batch 1
    assert geom(512, 4, 4, 3, 3, 1, 1)["wrap"] == 1  # stacked 4x4: 11 images, not 8
    assert geom(256, 14, 14, 3, 3, 1, 1)["wrap"] == 0  # no vector saved
    assert geom(128, 16, 16, 3, 3, 1, 1)["wrap"] == 0  # one of 9 saved: not worth the masks
    assert geom(64, 8, 8, 3, 3, 2, 1)["wrap"] == 0  # stride 2 never wraps
    n_case = 0
    for N in (1, 2, 3):
        for H, W, k, p in ((8, 8, 3, 1), (16, 8, 3, 1), (4, 4, 3, 1), (7, 7, 3, 1),
                           (5, 8, 3, 1), (8, 3, 3, 1), (1, 1, 3, 1), (2, 2, 3, 1),
                           (8, 8, 5, 2), (6, 6, 5, 1), (9, 9, 5, 2)):
            for cols in (None, (0,), (k - 1,), (0, k - 1)):
                Ci = (33, 70, 5, 16)[n_case % 4]
                frac = (0.05, 1.0, 0.3, 0.6)[n_case % 4]
                n_case += 1
                x, bits, eta, xi, bias, thr, _, _ = make_case((N, Ci, 9, H, W, k, 1, p), frac,
                                                              seed=100 + n_case)
                if cols is not None:  # 1-bits on these kx columns only
                    keep = np.zeros(k, bool)
                    keep[list(cols)] = True
                    bits = bits * keep.astype(np.uint8)
                rc, rw = kernels.bconv2d_counts_reference(x, bits, 1, p, thr)
                c, w = kernels.bconv2d_counts(x, bits, 1, p, thr, impl=impl, kind="sparse")
                case = (N, Ci, H, W, k, p, frac, cols)
                assert np.array_equal(c, rc), case
                assert np.array_equal(w, rw), case
                y1 = kernels.bconv2d(x, bits, eta, xi, bias, 1, p, thr, impl=impl)
                y3 = kernels.bconv2d(x, bits, eta, xi, bias, 1, p, thr, impl=impl, num_threads=3)
                assert np.array_equal(y1, y3), case
                ref = eta.reshape(1, -1, 1, 1) * rc + xi.reshape(1, -1, 1, 1) * rw[:, None] + \
                    bias.reshape(1, -1, 1, 1)
                assert_close(y1, ref, rtol=1e-5, atol=1e-4)
    wrapped = sum(geom(9, H, W, k, k, 1, p, 32, 1)["wrap"]
                  for H, W, k, p in ((8, 8, 3, 1), (16, 8, 3, 1), (8, 8, 5, 2), (9, 9, 5, 2)))
    wrapped += sum(geom(9, H, W, k, k, 1, p, 32, 3)["wrap"]  # batch 3: stacked
                   for H, W, k, p in ((4, 4, 3, 1), (7, 7, 3, 1), (5, 8, 3, 1), (6, 6, 5, 1)))
    assert wrapped == 8, "the cases above must exercise the wrapped layout"
