"""int8 kernels of the layers kept in float: numpy reference twins and the native wrappers.

The arithmetic, written once here and followed bit for bit by the engine (``runtime/csrc/core/
int8.cpp`` and its per-ISA kernels) and the C99 kernel (``runtime/csrc/micro/sbnn_qconv.c``):

* activations: per tensor, asymmetric uint8 with a zero point ``z`` in [0, 255] and a float32
  scale ``s``: ``q = clamp(rint(x / s) + z, 0, 255)`` in float32 (``rint``: to nearest, ties to
  even; NaN gives 0), so ``x = 0`` is exactly ``q = z`` and zero padding is ``z``;
* weights: per output channel, symmetric int8 in [-127, 127] with float32 scales ``w_scale``;
* the sum is exact in int32: ``acc_c = sum (q - z) * w_c`` (|acc| <= K * 255 * 127, so at
  most :data:`MAX_K` taps per output);
* the output stays float32, so the rest of the graph is unchanged:
  ``y_c = float(acc_c) * scale_c + bias_c``, with ``scale_c = float32(s * w_scale_c)``, two
  float32 roundings and no fused multiply-add.

The ``*_reference`` functions are numpy only; the native wrappers run the engine's kernels
(``impl`` picks the ISA: ``"ref"``/``"scalar"``, ``"avx2"``, ``"avx512"`` (VNNI where the CPU
has it), ``"neon"``).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from sbnn_runtime.native import core, native_error

__all__ = [
    "MAX_K",
    "quantize_reference",
    "qparams",
    "quantize_weight",
    "out_scale",
    "qconv2d_reference",
    "qlinear_reference",
    "qconv2d",
    "qlinear",
]

MAX_K = (2**31 - 1) // (255 * 127)  # taps per output whose int32 sum cannot overflow


def qparams(lo: float, hi: float) -> tuple[float, int]:
    """The uint8 scale and zero point of an activation range [lo, hi] (widened to hold 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError(f"activation range [{lo}, {hi}] is not finite")
    scale = float(np.float32((hi - lo) / 255.0)) if hi > lo else 1.0
    if scale <= 0.0 or not np.isfinite(scale):  # a range below float32's smallest step
        scale = 1.0
    zero = int(np.clip(np.rint(-lo / scale), 0, 255))
    return scale, zero


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8: ``w (Co, ...) -> (int8 (Co, ...), float32 (Co,))``
    with ``w ~ q * scale[c]`` and q in [-127, 127]."""
    w = np.asarray(w, np.float32)
    m = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) if w.size else np.zeros(w.shape[0])
    scale = np.where(m > 0, m / np.float32(127), np.float32(1)).astype(np.float32)
    view = (-1,) + (1,) * (w.ndim - 1)
    q = np.clip(np.rint(w / scale.reshape(view)), -127, 127).astype(np.int8)
    return q, scale


def out_scale(x_scale: float, w_scale: np.ndarray) -> np.ndarray:
    """``float32(x_scale * w_scale_c)``: the factor of the int32 sum of output channel c."""
    return (np.float32(x_scale) * np.asarray(w_scale, np.float32)).astype(np.float32)


def quantize_reference(x: np.ndarray, scale: float, zero: int) -> np.ndarray:
    """``x float32 -> uint8``: ``clamp(rint(x / scale) + zero, 0, 255)``, NaN -> 0."""
    t = np.rint(np.asarray(x, np.float32) / np.float32(scale)) + np.float32(zero)
    with np.errstate(invalid="ignore"):
        t = np.where(t > 0, np.minimum(t, np.float32(255)), np.float32(0))
    return t.astype(np.uint8)


def _epilogue(acc: np.ndarray, scale: np.ndarray, bias: np.ndarray | None, axis_view) -> np.ndarray:
    y = acc.astype(np.float32) * np.asarray(scale, np.float32).reshape(axis_view)
    if bias is not None:
        y = y + np.asarray(bias, np.float32).reshape(axis_view)
    return y.astype(np.float32)


def qconv2d_counts_reference(xq: np.ndarray, zero: int, w: np.ndarray, stride=(1, 1),
                             pads=(0, 0, 0, 0), dilation=(1, 1), groups: int = 1) -> np.ndarray:
    """The exact int32 sums: ``xq uint8 (N, Ci, H, W)``, ``w int8 (Co, Ci/groups, kh, kw)`` ->
    ``(N, Co, Ho, Wo)`` int32. Padding is ``zero`` (x = 0); pads are (top, left, bottom, right).
    """
    sh, sw = stride
    pt, pl, pb, pr = pads
    dh, dw = dilation
    xc = np.asarray(xq, np.int64) - int(zero)  # centred: padding is 0
    xc = np.pad(xc, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    co, cig, kh, kw = w.shape
    win = sliding_window_view(xc, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, Ci, Ho, Wo, kh, kw)
    cog = co // groups
    outs = []
    w64 = np.asarray(w, np.int64)
    for g in range(groups):
        wg = w64[g * cog:(g + 1) * cog]
        # float64 holds these sums exactly (|acc| < 2^31)
        part = np.tensordot(win[:, g * cig:(g + 1) * cig].astype(np.float64),
                            wg.astype(np.float64), axes=([1, 4, 5], [1, 2, 3]))
        outs.append(part)  # (N, Ho, Wo, cog)
    acc = np.concatenate(outs, axis=3).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(np.rint(acc).astype(np.int32))


def qconv2d_reference(x: np.ndarray, w: np.ndarray, w_scale: np.ndarray,
                      bias: np.ndarray | None, x_scale: float, x_zero: int, stride=(1, 1),
                      pads=(0, 0, 0, 0), dilation=(1, 1), groups: int = 1) -> np.ndarray:
    """int8 conv, numpy only: ``x float32 (N, Ci, H, W) -> float32 (N, Co, Ho, Wo)``."""
    xq = quantize_reference(x, x_scale, x_zero)
    acc = qconv2d_counts_reference(xq, x_zero, w, stride, pads, dilation, groups)
    return _epilogue(acc, out_scale(x_scale, w_scale), bias, (1, -1, 1, 1))


def qlinear_reference(x: np.ndarray, w: np.ndarray, w_scale: np.ndarray,
                      bias: np.ndarray | None, x_scale: float, x_zero: int) -> np.ndarray:
    """int8 linear, numpy only: ``x float32 (N, I) -> float32 (N, O)``; ``w int8 (O, I)``."""
    xq = quantize_reference(x, x_scale, x_zero).astype(np.int64) - int(x_zero)
    acc = xq.astype(np.float64) @ np.asarray(w, np.float64).T  # exact: |acc| < 2^31
    return _epilogue(np.rint(acc).astype(np.int32), out_scale(x_scale, w_scale), bias, (1, -1))


def _native(impl: str):
    if core is None or not hasattr(core, "qconv2d"):
        raise RuntimeError(native_error or "sbnn_runtime._core has no int8 kernels; rebuild it")
    return core


def qconv2d(x, w, w_scale, bias, x_scale: float, x_zero: int, stride=(1, 1), pads=(0, 0, 0, 0),
            dilation=(1, 1), groups: int = 1, impl: str = "auto",
            num_threads: int = 1) -> np.ndarray:
    """The engine's int8 conv (native): same arguments and result as
    :func:`qconv2d_reference`, bit for bit."""
    c = _native(impl)
    return c.qconv2d(np.ascontiguousarray(x, np.float32), np.ascontiguousarray(w, np.int8),
                     out_scale(x_scale, w_scale),
                     None if bias is None else np.ascontiguousarray(bias, np.float32),
                     float(np.float32(x_scale)), int(x_zero), list(stride), list(pads),
                     list(dilation), int(groups), impl, num_threads)


def qlinear(x, w, w_scale, bias, x_scale: float, x_zero: int, impl: str = "auto",
            num_threads: int = 1) -> np.ndarray:
    """The engine's int8 linear (native), bit for bit :func:`qlinear_reference`."""
    x = np.ascontiguousarray(x, np.float32)
    w = np.ascontiguousarray(w, np.int8)
    y = qconv2d(x.reshape(x.shape[0], x.shape[1], 1, 1), w.reshape(w.shape[0], w.shape[1], 1, 1),
                w_scale, bias, x_scale, x_zero, impl=impl, num_threads=num_threads)
    return y.reshape(x.shape[0], w.shape[0])
