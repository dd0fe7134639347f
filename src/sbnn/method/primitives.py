"""Pure tensor functions of the {alpha, beta} binary domain: no state, no modules.

Conventions pinned here and used everywhere in sbnn:

* ``sign(0) = +1`` (``torch.sign(0)`` is 0, which is not a binary value).
* A weight's bit is ``b = (sign(w) + 1) / 2``: bit 1 where ``w >= 0``, bit 0 elsewhere.
* A quantised weight is ``q = alpha + (beta - alpha) * b``: bit 0 means alpha, bit 1 means beta.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "sign",
    "to_bits",
    "ones_fraction",
    "entropy",
    "group_means",
    "closed_form",
    "dequantize",
    "fold_levels",
    "kernel_stats",
    "pack_bits",
    "unpack_bits",
    "check_tensor",
]


def check_tensor(w: torch.Tensor, name: str = "w", allow_empty: bool = False) -> None:
    """Raise a clear TypeError/ValueError unless ``w`` is a finite floating tensor."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(
            f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {w.dtype}"
        )
    if w.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (shape {tuple(w.shape)}); expected at least one value")
    if w.numel() and not bool(torch.isfinite(w).all()):
        bad = int((~torch.isfinite(w)).sum())
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s); expected finite values")


def sign(x: torch.Tensor) -> torch.Tensor:
    """Binary sign with ``sign(0) = +1``: ``+1 if x >= 0 else -1``, in the dtype of ``x``."""
    return torch.where(to_bits(x), 1.0, -1.0).to(x.dtype)


def to_bits(w):
    """Bits of latent weights: ``True`` where ``w >= 0`` (the sign convention above).

    The one place sbnn writes the rule. A torch tensor gives a bool tensor (no gradient), a
    numpy array a bool array, of the same shape.
    """
    return w >= 0


def group_means(values: torch.Tensor, bits: torch.Tensor, dtype: torch.dtype | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares levels of a fixed split, per row: ``mean(v[~b])`` and ``mean(v[b])``.

    For a fixed split of ``values`` into a 1-set and a 0-set, ``||v - q||^2`` over
    ``q = alpha + (beta - alpha) * b`` is smallest at the two group means (Schiavone et al.,
    arXiv:2306.13515). No gradient flows through the levels' use here (callers detach).

    Args:
        values: ``(R, n)`` rows (or a 1-D tensor: one row) of real values.
        bits: bool or 0/1 of the same shape: the split.
        dtype: the accumulation and result dtype (default float64; the layers pass their
            weight's dtype, so the forward stays in it).

    Returns:
        ``(alpha, beta)``, each ``(R,)`` (0-dim for 1-D input). An empty group takes the other
        group's mean (the mean of the whole row), so ``alpha == beta`` exactly and the error is
        still minimal.
    """
    if values.shape != bits.shape:
        raise ValueError(f"values {tuple(values.shape)} and bits {tuple(bits.shape)} differ in "
                         "shape")
    if values.dim() not in (1, 2):
        raise ValueError(f"group_means takes rows (R, n) or one row (n,), got {values.dim()}-D")
    one = values.dim() == 1
    dt = torch.float64 if dtype is None else dtype
    v = values.reshape(1, -1).to(dt) if one else values.to(dt)
    b = bits.reshape(1, -1).to(dt) if one else bits.to(dt)
    n1 = b.sum(1)
    n0 = b.shape[1] - n1
    s1 = (v * b).sum(1)
    s0 = v.sum(1) - s1
    alpha = s0 / n0.clamp(min=1)
    beta = torch.where(n1 > 0, s1 / n1.clamp(min=1), alpha)  # no 1-bit: beta = alpha
    alpha = torch.where(n0 > 0, alpha, beta)  # no 0-bit: alpha = beta
    if one:
        return alpha.reshape(()), beta.reshape(())
    return alpha, beta


def ones_fraction(bits: torch.Tensor) -> float:
    """Share of 1-bits ``p`` in a bit tensor (bool or 0/1). Sparsity is ``1 - p``."""
    if bits.numel() == 0:
        raise ValueError("ones_fraction of an empty tensor is undefined")
    return float(bits.float().mean())


def entropy(p: float) -> float:
    """Binary entropy ``H(p) = -p log2 p - (1-p) log2 (1-p)`` in bits, with ``H(0) = H(1) = 0``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"entropy expects a probability in [0, 1], got {p}")
    if p in (0.0, 1.0):
        return 0.0
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def dequantize(alpha: torch.Tensor, beta: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """``q = alpha + (beta - alpha) * bits``; per-channel alpha/beta broadcast over dim 0."""
    alpha = torch.as_tensor(alpha)
    beta = torch.as_tensor(beta)
    if alpha.dim() == 1:
        view = (-1,) + (1,) * (bits.dim() - 1)
        alpha, beta = alpha.view(view), beta.view(view)
    return alpha + (beta - alpha) * bits.to(alpha.dtype)


def fold_levels(alpha: torch.Tensor, beta: torch.Tensor, bias: torch.Tensor | None = None,
                bn_scale: torch.Tensor | None = None, bn_shift: torch.Tensor | None = None,
                *, channels: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold a binary layer's levels, its bias and an eval-mode BatchNorm ``y = s * x + t``
    into the per-channel ``(eta, xi, bias')`` of the engine's binary conv.

    Because ``conv(x, q) = (beta - alpha) conv(x, b) + alpha conv(x, 1)`` for
    ``q = alpha + (beta - alpha) * b``::

        s * (conv(x, q) + bias) + t = eta * conv(x, b) + xi * conv(x, 1) + bias'
        eta = s * (beta - alpha),  xi = s * alpha,  bias' = s * bias + t

    Args:
        alpha, beta: 0-dim or ``(C,)`` levels (a scalar is broadcast to every channel).
        bias: ``(C,)`` layer bias, or None (0).
        bn_scale, bn_shift: ``(C,)`` the BatchNorm as ``s`` and ``t``, or None (1 and 0).
        channels: ``C`` (default: the largest length given).

    Returns:
        ``(eta, xi, bias')``, each ``(C,)`` float64 on the CPU (inputs may be on any device).
    """
    parts = [torch.as_tensor(t).detach().reshape(-1)
             for t in (alpha, beta, bias, bn_scale, bn_shift) if t is not None]
    c = channels if channels is not None else max(t.numel() for t in parts)
    for t in parts:
        if t.numel() not in (1, c):
            raise ValueError(f"fold_levels: per-channel lengths differ ({t.numel()} vs {c})")

    def vec(t, fill: float) -> torch.Tensor:
        if t is None:
            return torch.full((c,), fill, dtype=torch.float64)
        return torch.as_tensor(t).detach().cpu().double().reshape(-1).expand(c)

    a, b = vec(alpha, 0.0), vec(beta, 0.0)
    s, t = vec(bn_scale, 1.0), vec(bn_shift, 0.0)
    return s * (b - a), s * a, s * vec(bias, 0.0) + t


def kernel_stats(bits) -> dict:
    """Kernel-level accounting of a binary weight (bool or 0/1, torch or numpy).

    For a conv weight ``(C_out, C_in, kh, kw)``: ``kernels = C_out * C_in``, ``zero_kernels``
    (kernels with no 1-bit), ``taps = kh * kw`` and ``spatial = taps > 1``. ``storage_bits``
    is kernel-level storage: one presence bit per kernel plus its ``taps`` bits if any is 1,
    for spatial kernels; one bit per weight otherwise (1x1 convs, linear). Other shapes have
    ``kernels = zero_kernels = None``, ``taps = 1``. Every shape with a first dimension also
    gets ``filters = C_out`` and ``zero_filters`` (output filters with no 1-bit).
    """
    b = torch.as_tensor(bits)
    b = b if b.dtype == torch.bool else b != 0
    filters = {}
    if b.dim() >= 1:
        filters = {"filters": b.shape[0],
                   "zero_filters": int((~b.reshape(b.shape[0], -1).any(1)).sum())}
    if b.dim() != 4:
        return {"kernels": None, "zero_kernels": None, "taps": 1, "spatial": False,
                "storage_bits": b.numel(), **filters}
    taps = b.shape[2] * b.shape[3]
    nonzero = b.reshape(b.shape[0] * b.shape[1], taps).any(1)
    kernels = nonzero.numel()
    zero = kernels - int(nonzero.sum())
    spatial = taps > 1
    storage = kernels + taps * (kernels - zero) if spatial else b.numel()
    return {"kernels": kernels, "zero_kernels": zero, "taps": taps, "spatial": spatial,
            "storage_bits": storage, **filters}


def closed_form(
    w: torch.Tensor, ones: float | None = None, dim: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares quantisation of ``w`` into a two-value domain {alpha, beta}.

    Minimises ``||w - q||^2`` over ``q in {alpha, beta}^n`` (Schiavone et al., ECML-PKDD 2023,
    arXiv:2306.13515). For a fixed split the optimal levels are the group means
    ``alpha = mean(w[bits == 0])`` and ``beta = mean(w[bits == 1])``, and the optimal split is a
    tail of the sorted values, so only ``n - 1`` splits need checking (prefix sums, O(n log n)).

    Args:
        w: floating tensor (CPU or CUDA), finite, non-empty.
        ones: target ones fraction ``p`` in (0, 1): the ``k = floor(p * n + 0.5)`` largest entries
            become 1. ``None``: the exact least-squares optimum over all splits (1-D two-means).
        dim: ``None`` fits the whole tensor; ``0`` fits each slice ``w[c]`` (output channel)
            separately, so alpha and beta have shape ``(w.shape[0],)``.

    Returns:
        ``(alpha, beta, bits)``: alpha and beta in ``w``'s dtype (0-dim, or ``(C,)`` for
        ``dim=0``),
        and ``bits`` a bool tensor of ``w``'s shape. ``beta >= alpha`` always.

    Ties and degenerate cases (deterministic):
        * With ``ones=p``, equal values are split by position: among equal values, the later ones
          in flattened order become 1 (a stable sort).
        * With ``ones=None``, a split never separates equal values; among splits of equal error the
          one with fewer 1-bits wins (sparser is the point of the domain).
        * An empty group (``k = 0``, ``k = n``, or a constant tensor with ``ones=None``, which gives
          all bits 0) takes the other group's mean, so ``alpha == beta`` and the error is still
          minimal.
    """
    check_tensor(w)
    if ones is not None:
        if isinstance(ones, bool) or not isinstance(ones, (int, float)):
            raise TypeError(f"ones must be a float in (0, 1) or None, got {type(ones).__name__}")
        if not 0.0 < float(ones) < 1.0 or math.isnan(ones):
            raise ValueError(f"ones must be a fraction in the open interval (0, 1), got {ones}")
    if dim not in (None, 0):
        raise ValueError(f"dim must be None (whole tensor) or 0 (per output channel), got {dim}")
    if dim == 0 and w.dim() == 0:
        raise ValueError("dim=0 needs a tensor with at least one dimension")

    rows = w.reshape(1, -1) if dim is None else w.reshape(w.shape[0], -1)
    r, n = rows.shape
    acc = torch.float64
    sorted_vals, order = torch.sort(rows, dim=1, stable=True)

    if ones is not None:
        k = int(math.floor(float(ones) * n + 0.5))
        split = torch.full((r, 1), n - k, dtype=torch.long, device=w.device)
    else:
        if n > 1:
            # csum[:, j] = sum of the j smallest values, j = 0..n
            csum = torch.cat([torch.zeros(r, 1, dtype=acc, device=w.device),
                              sorted_vals.to(acc).cumsum(1)], dim=1)
            total = csum[:, -1:]
            j = torch.arange(1, n, device=w.device, dtype=acc)  # zero-set sizes 1..n-1
            s0 = csum[:, 1:n]
            s1 = total - s0
            # SSE = sum(w^2) - s0^2/j - s1^2/(n-j): maximise the subtracted part
            gain = s0 * s0 / j + s1 * s1 / (n - j)
            valid = sorted_vals[:, 1:] > sorted_vals[:, :-1]  # never split equal values
            gain = torch.where(valid, gain, torch.full_like(gain, -math.inf))
            # prefer the largest zero-set among ties in gain: argmax over the reversed gains
            best = (n - 2) - torch.argmax(gain.flip(1), dim=1, keepdim=True)
            split = torch.where(valid.any(1, keepdim=True), best + 1, torch.full_like(best, n))
        else:
            split = torch.full((r, 1), n, dtype=torch.long, device=w.device)

    pos = torch.arange(n, device=w.device).expand(r, n)
    sorted_bits = pos >= split
    bits = torch.empty_like(sorted_bits)
    bits.scatter_(1, order, sorted_bits)
    alpha, beta = group_means(rows, bits)  # the least-squares levels of this split
    bits = bits.reshape(w.shape)
    alpha, beta = alpha.to(w.dtype), beta.to(w.dtype)
    if dim is None:
        alpha, beta = alpha.reshape(()), beta.reshape(())
    return alpha, beta, bits


def pack_bits(bits: torch.Tensor | np.ndarray) -> np.ndarray:
    """Pack a flat sequence of 0/1 values into bytes, little-endian within each byte.

    Element ``i`` goes to bit ``i % 8`` of byte ``i // 8`` (``numpy.packbits(bitorder="little")``).
    Uses the native core when it is built, else numpy; both give the same bytes.
    """
    arr = bits.detach().cpu().numpy() if isinstance(bits, torch.Tensor) else np.asarray(bits)
    arr = np.ascontiguousarray(arr.reshape(-1) != 0, dtype=np.uint8)
    from sbnn_runtime.native import core

    if core is not None:
        return core.pack_bits(arr)
    return np.packbits(arr, bitorder="little")


def unpack_bits(packed: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``n`` bits as a uint8 0/1 array."""
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.size * 8 < n:
        raise ValueError(f"{packed.size} bytes hold {packed.size * 8} bits, fewer than n={n}")
    return np.unpackbits(packed, bitorder="little", count=n)
