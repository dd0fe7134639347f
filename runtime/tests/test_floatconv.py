"""The engine's float conv2d (im2col panels + per-ISA FMA GEMM) against the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from sbnn_runtime import kernels, native
from sbnn_runtime.native import core, native_error

needs_core = pytest.mark.skipif(core is None, reason=f"no native core: {native_error}")

IMPLS = ["ref", "scalar", "avx2", "avx512"]

# (N, Ci, Co, H, W, k, stride, pad): stems, 1x1 shortcuts (stride 2), odd sizes, channel counts
# that are not a multiple of any register tile (12, 6, 4 rows; 8, 16, 32 columns), maps 1x1..32x32
SHAPES = [
    (1, 3, 64, 32, 32, 3, 1, 1),
    (2, 64, 128, 16, 16, 1, 2, 0),
    (1, 256, 512, 8, 8, 1, 2, 0),
    (3, 5, 7, 9, 11, 3, 2, 1),
    (1, 1, 1, 1, 1, 1, 1, 0),
    (2, 13, 25, 4, 4, 3, 1, 1),
    (1, 7, 13, 2, 2, 1, 1, 0),
    (1, 17, 30, 5, 3, 3, 1, 0),
    (2, 4, 9, 7, 7, 5, 2, 2),
    (1, 33, 70, 6, 6, 1, 1, 0),
]


def impl_params():
    avail = native.available_impls()
    return [pytest.param(i, marks=pytest.mark.skipif(i not in avail, reason=f"{i} not on this CPU"))
            for i in IMPLS]


@needs_core
@pytest.mark.parametrize("impl", impl_params())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv2d_matches_reference(impl, shape, with_bias):
    n, ci, co, h, w, k, s, p = shape
    rng = np.random.default_rng(hash(shape) % 2**32)
    x = rng.standard_normal((n, ci, h, w), dtype=np.float32)
    wt = rng.standard_normal((co, ci, k, k), dtype=np.float32)
    b = rng.standard_normal(co, dtype=np.float32) if with_bias else None
    ref = kernels.conv2d_reference(x, wt, b, s, p)
    for nt in (1, 3):
        y = core.conv2d(x, wt, b, s, p, num_threads=nt, impl=impl)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.sqrt(ci * k * k))


@needs_core
def test_conv2d_bad_impl():
    x = np.zeros((1, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="unknown impl"):
        core.conv2d(x, np.zeros((1, 2, 1, 1), np.float32), impl="nope")


@needs_core
@pytest.mark.parametrize("impl", impl_params())
def test_conv2d_is_conv2d_ex_with_a_square_geometry(impl):
    # the two module functions share one body (bindings.cpp float_conv2d): conv2d(stride, pad)
    # is conv2d_ex(sh = sw = stride, every pad = pad, dilation 1, groups 1), bit for bit
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 5, 9, 8), dtype=np.float32)
    wt = rng.standard_normal((6, 5, 3, 3), dtype=np.float32)
    b = rng.standard_normal(6, dtype=np.float32)
    for s, p in ((1, 0), (2, 1), (1, 2)):
        y = core.conv2d(x, wt, b, s, p, num_threads=2, impl=impl)
        np.testing.assert_array_equal(y, core.conv2d_ex(x, wt, b, [s, s, p, p, p, p, 1, 1, 1],
                                                        num_threads=2, impl=impl))


@needs_core
def test_conv2d_errors_name_the_shapes():
    x = np.zeros((1, 6, 5, 5), np.float32)
    w4 = np.zeros((2, 4, 1, 1), np.float32)
    with pytest.raises(ValueError, match="x has 6 channels, weight expects 4$"):
        core.conv2d(x, w4)
    with pytest.raises(ValueError, match="x has 6 channels, weight and groups expect 8$"):
        core.conv2d_ex(x, w4, None, [1, 1, 0, 0, 0, 0, 1, 1, 2])
    with pytest.raises(ValueError, match=r"weight: expected a 4-D array \(Co, Ci, kh, kw\)"):
        core.conv2d(x, w4[0])
    with pytest.raises(ValueError, match=r"weight: .*\(Co, Ci / groups, kh, kw\), got shape"):
        core.conv2d_ex(x, w4[0], None, [1] * 9)
    with pytest.raises(ValueError, match=r"x: expected a 4-D array \(N, Ci, H, W\)"):
        core.conv2d(x[0], w4)
    with pytest.raises(ValueError, match=r"bias: expected shape \(2,\), got \(3,\)"):
        core.conv2d(x[:, :4], w4, np.zeros(3, np.float32))


@needs_core
@pytest.mark.parametrize("impl", impl_params())
def test_conv2d_tap_past_a_short_row(impl):
    # Issue 18 item 1: stride 2, pad 1 on a 1x1 input: the tap kx=2 lands at w = 1 (past the
    # row) for the only output column; (W - 1 + pad - kx) / stride truncated toward zero made it
    # a valid column and read x[1] outside the buffer (gave [3, 2] where the reference says [1, 2])
    x = np.array([[[[1.0]]]], np.float32)
    wt = np.ones((2, 1, 3, 3), np.float32)
    wt[1] *= 2
    ref = kernels.conv2d_reference(x, wt, None, 2, 1)
    np.testing.assert_array_equal(ref.reshape(-1), [1, 2])
    for nt in (1, 3):
        # surround x with junk so that a read past it shows in the result
        buf = np.full((1, 1, 1, 64), 1000.0, np.float32)
        buf[..., 0] = 1.0
        xv = buf[..., :1]
        y = core.conv2d(np.ascontiguousarray(xv), wt, None, 2, 1, num_threads=nt, impl=impl)
        np.testing.assert_array_equal(y.reshape(-1), [1, 2])


# One thread writes and multiplies the column panels a block of pixels at a time (issue 20,
# the cold start); threads splitting the output channels share one block of the whole image.
# The register tiles and their sums are the same, so the outputs must be bit-identical. Shapes
# with several blocks (weights of at most 24 KB), blocks ending inside a row, a last partial
# panel, stride 2 and padding; and one with larger weights, which runs one block.
BLOCK_SHAPES = [
    (1, 3, 64, 32, 32, 3, 1, 1),     # the stem: 110 KB of panels, 5 blocks
    (1, 32, 8, 48, 48, 1, 2, 0),     # 1x1 stride 2: 72 KB of panels
    (1, 20, 13, 13, 13, 3, 1, 1),    # 11 panels of 11.5 KB: blocks of 2 end inside rows
    (2, 9, 31, 27, 23, 3, 2, 1),     # stride 2, a partial last panel
    (1, 12, 9, 19, 17, 5, 1, 2),     # 5x5, blocks of one panel
    (1, 64, 128, 32, 32, 1, 2, 0),   # a ResNet-18 shortcut: 32 KB of weights, one block
]


@needs_core
@pytest.mark.parametrize("impl", [p for p in impl_params() if p.values[0] != "ref"])
@pytest.mark.parametrize("shape", BLOCK_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv2d_pixel_blocks_are_exact(impl, shape):
    n, ci, co, h, w, k, s, p = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((n, ci, h, w), dtype=np.float32)
    wt = rng.standard_normal((co, ci, k, k), dtype=np.float32)
    b = rng.standard_normal(co, dtype=np.float32)
    one = core.conv2d(x[:1], wt, b, s, p, num_threads=1, impl=impl)   # pixel blocks
    split = core.conv2d(x[:1], wt, b, s, p, num_threads=3, impl=impl)  # one block, 3 threads
    np.testing.assert_array_equal(one, split)
    ref = kernels.conv2d_reference(x, wt, b, s, p)
    np.testing.assert_allclose(core.conv2d(x, wt, b, s, p, num_threads=1, impl=impl), ref,
                               rtol=1e-4, atol=1e-4 * np.sqrt(ci * k * k))
