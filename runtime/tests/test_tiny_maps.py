"""Issue 20: the channel-vectorised binary conv for tiny output maps (``core/bconv_tiny.h``,
``_core.bconv2d_tiny``) against the reference kernel, on every ISA this machine runs.

* exact integer counts and window sums against ``bconv2d_counts(impl="ref")`` on 2x2, 3x3, 4x4,
  1x1 and odd maps, filter counts over and under one block (256 / 512 bits) and not multiples
  of 64, stride 1 and 2, pad 0 and 1, ones from none to all, 1 and 3 threads;
* the float outputs equal to the sparse kernel's bit for bit (the same epilogue), and close
  to the float reference, with and without the fused residual add, clamp and RPReLU;
* the largest fan-in it takes (32760 rows into the int16 counts), and what it refuses;
* in the engine, forced everywhere it fits (``SBNN_TINY_MAPS=only``): outputs equal to the
  engine without it (``SBNN_TINY_MAPS=0``), bit for bit.
numpy only.
"""

from __future__ import annotations

import numpy as np
import pytest

from sbnn_runtime import Engine, native
from sbnn_runtime.kernels import bconv2d_reference
from sbnn_runtime.native import core, native_error

pytestmark = pytest.mark.skipif(core is None, reason=f"no native core: {native_error}")

IMPLS = native.available_impls() if core is not None else []
FAST = [i for i in IMPLS if i != "ref"]

SHAPES = [  # N, Ci, H, W, Co, k, stride, pad
    (1, 512, 2, 2, 40, 3, 1, 1),     # ReActNet-18's 2x2 stage (fewer filters)
    (1, 64, 2, 2, 600, 3, 1, 1),     # more than one block of filters, a partial last one
    (3, 256, 4, 4, 24, 3, 2, 1),     # ReActNet-18's stride-2 entry, 4x4 -> 2x2
    (2, 96, 4, 4, 70, 3, 1, 1),      # ResNet-18's 4x4 stage (fewer channels)
    (6, 7, 3, 3, 9, 3, 1, 1),
    (2, 33, 1, 1, 5, 1, 1, 0),       # 1x1 map, 1x1 kernel
    (2, 33, 1, 1, 65, 3, 1, 1),      # 1x1 map: one valid tap of nine
    (1, 130, 3, 3, 257, 3, 1, 0),    # pad 0 to a 1x1 output, 257 filters
    (2, 5, 4, 4, 3, 3, 1, 0),        # pad 0, 4x4 -> 2x2
    (9, 10, 2, 3, 6, 2, 1, 1),
    (4, 3, 5, 5, 4, 3, 2, 0),
    (2, 20, 7, 7, 11, 3, 2, 1),      # stride 2 onto 4x4
]


def _params(rng, co, ci):
    eta, xi, bias = (rng.standard_normal(co).astype(np.float32) for _ in range(3))
    thr = rng.standard_normal(ci).astype(np.float32) * 0.1
    return eta, xi, bias, thr


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("ones", [0.0, 0.05, 0.5, 1.0])
def test_tiny_kernel_exact(impl, ones):
    rng = np.random.default_rng(int(ones * 100) + 1)
    for n, ci, h, w, co, k, s, p in SHAPES:
        x = rng.standard_normal((n, ci, h, w)).astype(np.float32)
        x[0, 0, 0, 0] = 0.0  # sign(0) = +1
        bits = (rng.random((co, ci, k, k)) < ones).astype(np.uint8)
        bits[0] = 0  # an all-zero filter
        eta, xi, bias, thr = _params(rng, co, ci)
        c_ref, w_ref = core.bconv2d_counts(x, bits, s, p, thr, impl="ref")
        y_sp = core.bconv2d(x, bits, eta, xi, bias, s, p, thr, impl=impl, kind="sparse")
        want = bconv2d_reference(x, bits, eta, xi, bias, s, p, thr)
        for t in (1, 3):
            y, cnt, ws = core.bconv2d_tiny(x, bits, eta, xi, bias, s, p, thr, impl=impl,
                                           num_threads=t)
            shape = (n, ci, h, w, co, k, s, p, t)
            np.testing.assert_array_equal(cnt, c_ref, err_msg=str(shape))
            np.testing.assert_array_equal(ws, w_ref, err_msg=str(shape))
            np.testing.assert_array_equal(y, y_sp, err_msg=str(shape))  # the same epilogue
            np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("impl", FAST)
def test_tiny_kernel_largest_fan_in(impl):
    # 3640 channels x 9 taps = 32760 rows on one pixel: the int16 counts' edge, every counter
    # plane of the Harley-Seal tree in use
    rng = np.random.default_rng(3)
    ci, co = 3640, 3
    x = rng.standard_normal((1, ci, 3, 3)).astype(np.float32)
    bits = (rng.random((co, ci, 3, 3)) < 0.5).astype(np.uint8)
    bits[1] = 1
    x[0, :, :, :] = np.abs(x[0]) + 0.5  # every input +1
    eta, xi, bias, thr = _params(rng, co, ci)
    _, cnt, ws = core.bconv2d_tiny(x, bits, eta, xi, bias, 1, 0, impl=impl)
    c_ref, w_ref = core.bconv2d_counts(x, bits, 1, 0, impl="ref")
    np.testing.assert_array_equal(cnt, c_ref)
    np.testing.assert_array_equal(ws, w_ref)
    assert cnt[0, 1, 0, 0] == 32760
    x[0, ::2] = -1.0
    _, cnt, _ = core.bconv2d_tiny(x, bits, eta, xi, bias, 1, 0, impl=impl)
    np.testing.assert_array_equal(cnt, core.bconv2d_counts(x, bits, 1, 0, impl="ref")[0])
    with pytest.raises(ValueError, match="fan-in 32769"):
        core.bconv2d_tiny(np.zeros((1, 3641, 3, 3), np.float32), np.zeros((1, 3641, 3, 3),
                          np.uint8), *(np.zeros(1, np.float32),) * 3, 1, 0, impl=impl)


@pytest.mark.parametrize("impl", FAST)
def test_tiny_kernel_fused_post_ops(impl):
    rng = np.random.default_rng(9)
    for n, ci, h, w, co in ((3, 96, 2, 2, 20), (2, 40, 4, 4, 300)):
        x = rng.standard_normal((n, ci, h, w)).astype(np.float32)
        bits = (rng.random((co, ci, 3, 3)) < 0.1).astype(np.uint8)
        eta, xi, bias, _ = _params(rng, co, ci)
        res = rng.standard_normal((n, co, h, w)).astype(np.float32)
        s1, a, s2 = (rng.standard_normal(co).astype(np.float32) for _ in range(3))
        base = bconv2d_reference(x, bits, eta, xi, bias, 1, 1) + res
        v = base - s1[None, :, None, None]
        want_rp = np.where(v >= 0, v, a[None, :, None, None] * v) + s2[None, :, None, None]
        y, _, _ = core.bconv2d_tiny(x, bits, eta, xi, bias, 1, 1, res=res, rp_in=s1,
                                    rp_slope=a, rp_out=s2, impl=impl)
        np.testing.assert_allclose(y, want_rp, rtol=1e-5, atol=1e-4)
        y, _, _ = core.bconv2d_tiny(x, bits, eta, xi, bias, 1, 1, res=res, clamp=True,
                                    impl=impl)
        np.testing.assert_allclose(y, np.clip(base, -1, 1), rtol=1e-5, atol=1e-4)


def test_tiny_kernel_refuses_what_it_does_not_fit():
    x = np.zeros((1, 4, 8, 8), np.float32)
    bits = np.ones((2, 4, 3, 3), np.uint8)
    v = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match="output map of 64 pixels"):
        core.bconv2d_tiny(x, bits, v, v, v, 1, 1)
    with pytest.raises(ValueError, match="no kernel for impl 'ref'"):
        core.bconv2d_tiny(x[:, :, :2, :2], bits, v, v, v, 1, 1, impl="ref")


def test_engine_with_the_tiny_kernel_forced_is_bit_exact(monkeypatch):
    from test_small_maps_threads import _net  # stem, residual + RPReLU, 5x5 and 3x3 maps

    rng = np.random.default_rng(21)
    g = _net(rng, c=40, h=6)  # binary convs on 3x3, 3x3 and 2x2 maps
    for n in (1, 3):
        x = rng.standard_normal((n, 3, 12, 12)).astype(np.float32)
        monkeypatch.setenv("SBNN_TINY_MAPS", "0")
        want = Engine(g, 1, backend="native").run(x)
        monkeypatch.setenv("SBNN_TINY_MAPS", "only")
        for t in (1, 2):
            eng = Engine(g, t, backend="native")
            np.testing.assert_array_equal(eng.run(x), want)
            kernels = [d["kernel"] for d in eng.layer_info()
                       if d["kernel"] in ("sparse", "dense", "tiny")]
            assert kernels == ["tiny"] * 3
