"""Per-layer statistics and memory accounting of sparse-binary models."""

from __future__ import annotations

import torch
from torch import nn

from sbnn.method.constraint import sb_layers
from sbnn.method.primitives import entropy, kernel_stats

__all__ = ["layer_stats", "model_bits", "kernel_storage_bits"]


def _as_list_or_float(t: torch.Tensor):
    t = t.detach().float().cpu()
    return float(t) if t.dim() == 0 else [float(v) for v in t]


def kernel_storage_bits(bits: torch.Tensor) -> int:
    """Bits of kernel-level storage: a presence bit per kernel plus its taps if any is 1.

    For layers without spatial kernels (1x1 convs, linear) this is one bit per weight
    (:func:`sbnn.method.primitives.kernel_stats`).
    """
    return kernel_stats(bits)["storage_bits"]


def layer_stats(model: nn.Module) -> list[dict]:
    """One dict per sparse-binary layer, in module order.

    Keys: ``name``, ``type``, ``shape``, ``n`` (binary weights), ``ones``, ``ones_fraction``,
    ``entropy`` (H(p) bits per weight), ``zero_kernels`` (share of all-zero k x k kernels, None
    without spatial kernels), ``zero_filters`` (share of output filters with no 1-bit), ``alpha``
    and ``beta`` (floats, or per-channel lists for pm1 and 01), ``domain``.
    """
    rows = []
    for name, m in sb_layers(model):
        bits = m.bits()
        n = bits.numel()
        ones = int(bits.sum())
        p = ones / n
        ks = kernel_stats(bits)
        alpha, beta = m.alpha_beta()
        rows.append(
            {
                "name": name,
                "type": type(m).__name__,
                "shape": list(bits.shape),
                "n": n,
                "ones": ones,
                "ones_fraction": p,
                "entropy": entropy(p),
                "zero_kernels": ks["zero_kernels"] / ks["kernels"] if ks["spatial"] else None,
                "zero_filters": ks["zero_filters"] / ks["filters"],
                "alpha": _as_list_or_float(alpha),
                "beta": _as_list_or_float(beta),
                "domain": m.domain,
            }
        )
    return rows


def model_bits(model: nn.Module) -> dict:
    """Weight memory of ``model`` in bits, binary layers and full-precision parts apart.

    * ``binary_weights``: number of binary weights (latent weights of SB layers).
    * ``full_precision_params``: every other parameter (first conv, shortcuts, classifier,
      BatchNorm, biases, the per-layer alpha/beta or tau/phi), each 32 bits.
    * ``binary_bits_fp32`` / ``binary_bits_dense`` / ``binary_bits_entropy`` /
      ``binary_bits_kernel``: the binary weights stored as float32, as a dense BNN (1 bit each),
      at the per-layer entropy bound sum(n_l H(p_l)), and with kernel-level storage.
    * ``total_*``: the same plus ``full_precision_bits``.
    """
    sb = [m for _, m in sb_layers(model)]
    latent = {id(m.weight) for m in sb}
    n_bin = sum(m.weight.numel() for m in sb)
    fp_params = sum(p.numel() for p in model.parameters() if id(p) not in latent)
    ent = 0.0
    kern = 0
    for m in sb:
        bits = m.bits()
        ent += bits.numel() * entropy(float(bits.float().mean()))
        kern += kernel_storage_bits(bits)
    fp_bits = 32 * fp_params
    out = {
        "binary_weights": n_bin,
        "full_precision_params": fp_params,
        "full_precision_bits": fp_bits,
        "binary_bits_fp32": 32 * n_bin,
        "binary_bits_dense": n_bin,
        "binary_bits_entropy": ent,
        "binary_bits_kernel": kern,
    }
    for key in ("fp32", "dense", "entropy", "kernel"):
        out[f"total_{key}"] = out[f"binary_bits_{key}"] + fp_bits
    if n_bin:
        out["bits_per_binary_weight_entropy"] = ent / n_bin
        out["bits_per_binary_weight_kernel"] = kern / n_bin
    return out
