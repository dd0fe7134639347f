"""Binary-convolution kernels: wrappers over the native core and their plain reference twins.

Math (per output channel c), activations binarised per input channel and zero padding:
``x = +1 if input >= thr[ci] else -1`` (sign(0) = +1), padded taps are 0, bits b in {0, 1}:

    y_c = eta_c * conv(x, b_c) + xi_c * conv(x, 1) + bias_c

``conv(x, 1)`` is the window sum of the binarised input over all input channels, computed once
per layer. Folding ``q = alpha + (beta - alpha) * b`` and BatchNorm gives ``eta = s * (beta -
alpha)``, ``xi = s * alpha``: the layer equals ``F.conv2d(x, eta[:, None, None, None] * b +
xi[:, None, None, None]) + bias``, which the tests pin.

The ``*_reference`` functions are torch-only twins (no native code), used by the tests and as the
fallback when the extension is missing (``sbnn._native.native_error`` says why).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sbnn._native import core, native_error

__all__ = [
    "available_impls",
    "bconv2d",
    "bconv2d_counts",
    "bconv2d_counts_reference",
    "bconv2d_reference",
    "binarize_reference",
    "cpu_features",
    "dequantized_weight",
    "native_available",
    "native_error",
]

IMPLS = ("auto", "ref", "scalar", "avx2", "avx512")
KINDS = ("sparse", "dense")


def native_available() -> bool:
    return core is not None


def available_impls() -> list[str]:
    """Native implementations this CPU runs (``[]`` without the extension)."""
    return list(core.available_impls()) if core is not None else []


def cpu_features() -> dict[str, bool]:
    return dict(core.cpu_features()) if core is not None else {}


def _as_tensor(a, dtype) -> torch.Tensor:
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
    return t.to(dtype)


def binarize_reference(x: torch.Tensor, thr: torch.Tensor | None = None) -> torch.Tensor:
    """x: (N, C, H, W) float -> +1 where x >= thr[c] else -1 (float32)."""
    x = _as_tensor(x, torch.float32)
    if thr is None:
        return torch.where(x >= 0, 1.0, -1.0)
    return torch.where(x >= _as_tensor(thr, torch.float32)[None, :, None, None], 1.0, -1.0)


def bconv2d_counts_reference(x, bits, stride: int = 1, padding: int = 0, thr=None):
    """Integer parts, torch only. x: (N, Ci, H, W), bits: (Co, Ci, kh, kw) ->
    (conv(x, b) int32 (N, Co, Ho, Wo), conv(x, 1) int32 (N, Ho, Wo)). Exact: float32 holds these
    integers exactly far beyond any real layer (|count| <= Ci*kh*kw < 2**24)."""
    sx = binarize_reference(x, thr)
    b = _as_tensor(bits, torch.float64)
    cnt = F.conv2d(sx.double(), b, stride=stride, padding=padding)
    ones = torch.ones((1,) + tuple(b.shape[1:]), dtype=torch.float64)
    ws = F.conv2d(sx.double(), ones, stride=stride, padding=padding)[:, 0]
    return cnt.round().to(torch.int32), ws.round().to(torch.int32)


def bconv2d_reference(x, bits, eta, xi, bias, stride: int = 1, padding: int = 0, thr=None):
    """Float output from the integer parts, torch only: (N, Co, Ho, Wo) float32."""
    cnt, ws = bconv2d_counts_reference(x, bits, stride, padding, thr)
    eta = _as_tensor(eta, torch.float32)[None, :, None, None]
    xi = _as_tensor(xi, torch.float32)[None, :, None, None]
    bias = _as_tensor(bias, torch.float32)[None, :, None, None]
    return eta * cnt.float() + (xi * ws[:, None].float() + bias)


def dequantized_weight(bits, eta, xi) -> torch.Tensor:
    """The float weight the layer is equivalent to: eta_c * b + xi_c, (Co, Ci, kh, kw)."""
    b = _as_tensor(bits, torch.float32)
    return (_as_tensor(eta, torch.float32)[:, None, None, None] * b
            + _as_tensor(xi, torch.float32)[:, None, None, None])


def _np_f32(a):
    if a is None:
        return None
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(a, dtype=np.float32)


def _np_bits(bits):
    if isinstance(bits, torch.Tensor):
        bits = bits.detach().cpu().numpy()
    return np.ascontiguousarray(bits, dtype=np.uint8)


def _check(impl: str, kind: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def bconv2d(x, bits, eta, xi, bias, stride: int = 1, padding: int = 0, thr=None,
            impl: str = "auto", kind: str = "sparse", num_threads: int = 1) -> torch.Tensor:
    """Binary conv. x: (N, Ci, H, W) float -> (N, Co, Ho, Wo) float32 tensor.

    ``impl`` picks the native kernel ("auto" = best for this CPU, or the SBNN_ISA environment
    variable); without the extension only the torch reference runs ("auto" falls back to it).
    ``kind="sparse"`` visits only the 1-bits; ``"dense"`` is the XNOR/popcount BNN baseline.
    """
    _check(impl, kind)
    if core is None:
        if impl != "auto":
            raise RuntimeError(native_error)
        return bconv2d_reference(x, bits, eta, xi, bias, stride, padding, thr)
    y = core.bconv2d(_np_f32(x), _np_bits(bits), _np_f32(eta), _np_f32(xi), _np_f32(bias),
                     stride, padding, _np_f32(thr), impl, kind, num_threads)
    return torch.from_numpy(y)


def bconv2d_counts(x, bits, stride: int = 1, padding: int = 0, thr=None, impl: str = "auto",
                   kind: str = "sparse") -> tuple[torch.Tensor, torch.Tensor]:
    """The exact integer parts (conv(x, b), conv(x, 1)) as int32 tensors."""
    _check(impl, kind)
    if core is None:
        if impl != "auto":
            raise RuntimeError(native_error)
        return bconv2d_counts_reference(x, bits, stride, padding, thr)
    cnt, ws = core.bconv2d_counts(_np_f32(x), _np_bits(bits), stride, padding, _np_f32(thr),
                                  impl, kind)
    return torch.from_numpy(cnt), torch.from_numpy(ws)
