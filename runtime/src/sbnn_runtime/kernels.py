"""Binary-convolution kernels: numpy wrappers over the native core and their reference twins.

Math (per output channel c), activations binarised per input channel and zero padding:
``x = +1 if input >= thr[ci] else -1`` (sign(0) = +1), padded taps are 0, bits b in {0, 1}:

    y_c = eta_c * conv(x, b_c) + xi_c * conv(x, 1) + bias_c

``conv(x, 1)`` is the window sum of the binarised input over all input channels, computed once
per layer. Folding ``q = alpha + (beta - alpha) * b`` and BatchNorm gives ``eta = s * (beta -
alpha)``, ``xi = s * alpha``: the layer equals ``conv2d(x, eta[:, None, None, None] * b +
xi[:, None, None, None]) + bias``, which the tests pin.

The ``*_reference`` functions are numpy-only twins (no native code): the tests hold every native
kernel to them, and the engine's reference backend runs them when the extension is missing
(:data:`sbnn_runtime.native.native_error` says why).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from sbnn_runtime.native import core, native_error

__all__ = [
    "IMPLS",
    "KINDS",
    "bconv2d",
    "bconv2d_counts",
    "bconv2d_counts_reference",
    "bconv2d_reference",
    "binarize_reference",
    "conv2d_reference",
    "dequantized_weight",
]

IMPLS = ("auto", "ref", "scalar", "avx2", "avx512", "neon")
KINDS = ("sparse", "dense")


def _f32(a) -> np.ndarray | None:
    if a is None:
        return None
    return np.ascontiguousarray(np.asarray(a), dtype=np.float32)


def _bits(bits) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(bits), dtype=np.uint8)


def _pair(v, n: int) -> tuple[int, ...]:
    return (int(v),) * n if np.isscalar(v) else tuple(int(u) for u in v)


def conv2d_reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None,
                     stride=1, padding=0, dilation=1, groups: int = 1) -> np.ndarray:
    """Plain float32 conv2d (zero padding), numpy only.
    x: (N, Ci, H, W), w: (Co, Ci / groups, kh, kw) -> (N, Co, Ho, Wo).

    ``stride``: int or (sh, sw); ``padding``: int or (top, left, bottom, right);
    ``dilation``: int or (dh, dw); ``groups``: input and output channels split into that
    many groups, group g's outputs reading only group g's inputs (depthwise: groups = Ci)."""
    x = np.asarray(x, dtype=np.float32)
    w = np.asarray(w, dtype=np.float32)
    sh, sw = _pair(stride, 2)
    pt, pl, pb, pr = _pair(padding, 4)
    dh, dw = _pair(dilation, 2)
    if groups > 1:  # a grouped conv is the channel concat of its groups' convs
        cig, cog = x.shape[1] // groups, w.shape[0] // groups
        return np.concatenate([
            conv2d_reference(x[:, g * cig:(g + 1) * cig], w[g * cog:(g + 1) * cog],
                             None if bias is None else np.asarray(bias)[g * cog:(g + 1) * cog],
                             (sh, sw), (pt, pl, pb, pr), (dh, dw))
            for g in range(groups)], axis=1)
    if pt or pl or pb or pr:
        x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    kh, kw = w.shape[2:]
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    win = sliding_window_view(x, (ekh, ekw), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    # win: (N, Ci, Ho, Wo, kh, kw); contract (Ci, kh, kw) with the weight
    y = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))  # (N, Ho, Wo, Co)
    y = np.ascontiguousarray(y.transpose(0, 3, 1, 2), dtype=np.float32)
    if bias is not None:
        y += np.asarray(bias, dtype=np.float32)[None, :, None, None]
    return y


def binarize_reference(x: np.ndarray, thr: np.ndarray | None = None) -> np.ndarray:
    """x: (N, C, H, W) float -> +1 where x >= thr[c] else -1 (float32), sign(0) = +1."""
    x = np.asarray(x, dtype=np.float32)
    t = 0.0 if thr is None else np.asarray(thr, dtype=np.float32)[None, :, None, None]
    return np.where(x >= t, np.float32(1), np.float32(-1))


def bconv2d_counts_reference(x, bits, stride=1, padding=0, thr=None, dilation=1,
                             groups: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The exact integer parts, numpy only. x: (N, Ci, H, W), bits: (Co, Ci / groups, kh, kw)
    -> (conv(x, b) int32 (N, Co, Ho, Wo), conv(x, 1) int32 (N, Ho, Wo), or (N, groups, Ho, Wo)
    when grouped: each group's window sum over its own input channels). float64 holds these
    integers exactly (|count| <= Ci*kh*kw). Geometry arguments as :func:`conv2d_reference`."""
    sx = binarize_reference(x, thr).astype(np.float64)
    b = np.asarray(bits, dtype=np.float64)
    cnt = conv2d_reference(sx, b, None, stride, padding, dilation, groups)
    ones = np.ones((groups,) + b.shape[1:])
    ws = conv2d_reference(sx, ones, None, stride, padding, dilation, groups)
    ws = ws[:, 0] if groups == 1 else ws
    return cnt.round().astype(np.int32), ws.round().astype(np.int32)


def bconv2d_reference(x, bits, eta, xi, bias, stride=1, padding=0, thr=None, dilation=1,
                      groups: int = 1) -> np.ndarray:
    """Float output from the integer parts, numpy only: (N, Co, Ho, Wo) float32, computed as
    ``eta * count + (xi * wsum + bias)`` in float32, as the native kernels do (``wsum``: the
    window sum of the output channel's group)."""
    cnt, ws = bconv2d_counts_reference(x, bits, stride, padding, thr, dilation, groups)
    if groups == 1:
        ws = ws[:, None]
    ws = np.repeat(ws, cnt.shape[1] // groups, axis=1)  # (N, Co, Ho, Wo)
    eta = np.asarray(eta, dtype=np.float32)[None, :, None, None]
    xi = np.asarray(xi, dtype=np.float32)[None, :, None, None]
    bias = np.asarray(bias, dtype=np.float32)[None, :, None, None]
    return (eta * cnt.astype(np.float32) + (xi * ws.astype(np.float32) + bias)
            ).astype(np.float32)


def dequantized_weight(bits, eta, xi) -> np.ndarray:
    """The float weight a folded binary conv is equivalent to: ``eta_c * b + xi_c``,
    (Co, Ci, kh, kw) float32."""
    b = np.asarray(bits, dtype=np.float32)
    view = (-1,) + (1,) * (b.ndim - 1)
    w = np.asarray(eta, np.float32).reshape(view) * b + np.asarray(xi, np.float32).reshape(view)
    return np.ascontiguousarray(w, dtype=np.float32)


def _native(impl: str, kind: str) -> bool:
    """Checks ``impl`` and ``kind``; False where the numpy reference runs instead of the native
    core (the extension is missing and ``impl="auto"``); a named impl without it is an error."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if core is None and impl != "auto":
        raise RuntimeError(native_error)
    return core is not None


def bconv2d(x, bits, eta, xi, bias, stride: int = 1, padding: int = 0, thr=None,
            impl: str = "auto", kind: str = "sparse", num_threads: int = 1) -> np.ndarray:
    """Binary conv. x: (N, Ci, H, W) float32 -> (N, Co, Ho, Wo) float32.

    ``impl`` picks the native kernel ("auto" = best for this CPU, or the SBNN_ISA environment
    variable); without the extension only the numpy reference runs ("auto" falls back to it).
    ``kind="sparse"`` visits only the 1-bits; ``"dense"`` is the XNOR/popcount BNN baseline.
    """
    if not _native(impl, kind):
        return bconv2d_reference(x, bits, eta, xi, bias, stride, padding, thr)
    return core.bconv2d(_f32(x), _bits(bits), _f32(eta), _f32(xi), _f32(bias), stride, padding,
                        _f32(thr), impl, kind, num_threads)


def bconv2d_counts(x, bits, stride: int = 1, padding: int = 0, thr=None, impl: str = "auto",
                   kind: str = "sparse") -> tuple[np.ndarray, np.ndarray]:
    """The exact integer parts (conv(x, b), conv(x, 1)) as int32 arrays."""
    if not _native(impl, kind):
        return bconv2d_counts_reference(x, bits, stride, padding, thr)
    return core.bconv2d_counts(_f32(x), _bits(bits), stride, padding, _f32(thr), impl, kind)
