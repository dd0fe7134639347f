"""What :mod:`sbnn.deploy.export` takes from a torch model, layer by layer, so that layers of
this package (``binarize_``) can say so before training without importing the exporter: the
torch layers it traces (:data:`MODULES`), :func:`module_problem` for one module, and the error
text (:data:`SUPPORTED`, :func:`suggest`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbnn.method.layers import LearnableBias, RPReLU, RSign, SBLayer

__all__ = ["ExportError", "pair", "hw_pair", "check_conv", "module_problem", "suggest", "SUPPORTED",
           "MODULES", "ACT_MODULES", "ACT_FUNCTIONS", "ACT_METHODS"]


class ExportError(ValueError):
    """The model holds a layer or an operation the sbnn engine does not support."""


def pair(v, where: str, what: str) -> int:
    """``v`` of a square (kernel, stride, padding) argument, one int; else :class:`ExportError`."""
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise ExportError(f"layer {where!r}: non-square {what} {tuple(v)} is not supported")
        v = v[0]
    if not isinstance(v, int):
        raise ExportError(f"layer {where!r}: {what} {v!r} is not supported")
    return int(v)


def hw_pair(v, where: str, what: str) -> tuple[int, int]:
    """``(h, w)`` of a (kernel, stride, padding, dilation) argument: an int or two ints."""
    if isinstance(v, int) and not isinstance(v, bool):
        return int(v), int(v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(
            isinstance(e, int) and not isinstance(e, bool) for e in v):
        return int(v[0]), int(v[1])
    raise ExportError(f"layer {where!r}: {what} {v!r} is not supported (an int or (h, w))")


def check_conv(m: nn.Conv2d, where: str) -> tuple[int, int]:
    """``(stride, padding)`` of a conv the exporter takes; else :class:`ExportError` naming it
    and its arguments, with the nearest supported form."""
    args = f"{type(m).__name__}({m.extra_repr()})"
    if m.groups != 1:
        raise ExportError(f"layer {where!r} ({args}): grouped and depthwise convs are not "
                          "supported yet; nearest supported form: groups=1 (a dense nn.Conv2d)")
    if pair(m.dilation, where, "dilation") != 1:
        raise ExportError(f"layer {where!r} ({args}): dilated convs are not supported yet; "
                          "nearest supported form: dilation=1 with a larger kernel")
    if m.padding_mode != "zeros":
        raise ExportError(f"layer {where!r} ({args}): padding_mode {m.padding_mode!r} is not "
                          "supported; nearest supported form: padding_mode='zeros'")
    return pair(m.stride, where, "stride"), pair(m.padding, where, "padding")


ACT_MODULES = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.SiLU: "silu", nn.Hardswish: "hardswish",
               nn.Hardsigmoid: "hardsigmoid"}
ACT_FUNCTIONS = {torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh",
                 F.tanh: "tanh", F.silu: "silu", F.hardswish: "hardswish",
                 F.hardsigmoid: "hardsigmoid"}
ACT_METHODS = {"sigmoid": "sigmoid", "tanh": "tanh"}

# What the tracer takes, for error messages (the layers; functions and methods alike)
SUPPORTED = (
    "Conv2d (square stride and padding, groups=1, no dilation; a BatchNorm2d after it is "
    "folded), Linear, SBConv2d, SBLinear (with or without binary activations), BatchNorm2d, "
    "BatchNorm1d (on features or (N, C, L)), "
    "ReLU, ReLU6, Hardtanh, LeakyReLU, PReLU, RPReLU, SiLU, Hardswish, Hardsigmoid, Sigmoid, "
    "Tanh, Softmax(dim=1), RSign, LearnableBias, MaxPool2d, AvgPool2d (any window, stride, "
    "padding, ceil_mode), AdaptiveAvgPool2d(1), "
    "Flatten, Dropout, Identity, x + y, x * y (same shape, or (N, C, 1, 1) against "
    "(N, C, H, W)), torch.cat(dim=1), x.mean((2, 3)), x.view / x.reshape / torch.flatten "
    "keeping the batch (x.view(x.size(0), -1)), ChannelShuffle (or x.view(N, g, C // g, H, "
    "W).transpose(1, 2).reshape(N, C, H, W)), Upsample / F.interpolate (nearest or bilinear, "
    "scale_factor=2)")

# The nearest supported form of what users reach for (by torch class or function name)
_NEAREST = {
    "Conv1d": "no 1-D convs yet: give the model (C, 1, L) inputs and use nn.Conv2d, or keep "
              "this part of the model outside sbnn",
    "Conv3d": "use nn.Conv2d",
    "ConvTranspose2d": "use nn.Upsample(scale_factor=2) followed by nn.Conv2d",
    "Upsample": "nn.Upsample(scale_factor=2, mode='nearest' or 'bilinear')",
    "interpolate": "F.interpolate(x, scale_factor=2, mode='nearest' or 'bilinear')",
    "GELU": "use nn.SiLU or nn.Hardswish", "ELU": "use nn.LeakyReLU or nn.SiLU",
    "SELU": "use nn.LeakyReLU or nn.SiLU", "Mish": "use nn.SiLU", "Softplus": "use nn.SiLU",
    "LayerNorm": "use nn.BatchNorm2d / nn.BatchNorm1d (folded into the layer before it)",
    "GroupNorm": "use nn.BatchNorm2d (folded into the conv before it)",
    "InstanceNorm2d": "use nn.BatchNorm2d (folded into the conv before it)",
    "AdaptiveMaxPool2d": "use nn.AdaptiveAvgPool2d(1) or nn.MaxPool2d",
    "view": "x.view(x.size(0), ...) keeping the batch, or torch.flatten(x, 1)",
    "reshape": "x.reshape(x.size(0), ...) keeping the batch, or torch.flatten(x, 1)",
    "permute": "permutes and transposes only as a channel shuffle: nn.ChannelShuffle(g)",
    "transpose": "permutes and transposes only as a channel shuffle: nn.ChannelShuffle(g)",
    "unsqueeze": "x.view(x.size(0), ...) with the new shape",
    "squeeze": "x.view(x.size(0), ...) with the new shape",
    "sub": "fold the constant into a layer (e.g. a BatchNorm)",
}


def suggest(kind: str, full: bool = True) -> str:
    """The nearest supported form of a torch layer or function named ``kind`` (and, with
    ``full``, the list of what is supported)."""
    import difflib

    hint = _NEAREST.get(kind)
    if hint is None:
        names = [w.split("(")[0].strip() for w in SUPPORTED.split(", ")]
        close = difflib.get_close_matches(kind, names, n=2, cutoff=0.5)
        hint = f"nearest supported: {', '.join(close)}" if close else "no close supported form"
    return f"{hint}. Supported: {SUPPORTED}" if full else hint


# the torch layers the tracer takes (a container is traced through)
MODULES = (SBLayer, RSign, LearnableBias, RPReLU, nn.Conv2d, nn.Linear, nn.BatchNorm1d,
            nn.BatchNorm2d, nn.Hardtanh, nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Softmax,
            *ACT_MODULES, nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d,
            nn.AdaptiveAvgPool2d, nn.Flatten, nn.Upsample, nn.ChannelShuffle)


def module_problem(m: nn.Module, where: str = "") -> str | None:
    """Why :func:`sbnn.deploy.export.export` cannot take the layer ``m`` whatever its input, or
    ``None`` (a layer of a kind the tracer takes, a container, or a module of the user's own that
    it traces through). Checks only the module itself: ``export_problems`` traces the model."""
    kind = type(m).__name__
    try:
        if isinstance(m, nn.Upsample) and (
                m.mode not in ("nearest", "bilinear") or
                (m.scale_factor is not None and m.scale_factor not in (2, 2.0, (2, 2),
                                                                         (2.0, 2.0)))):
            raise ExportError(f"layer {where!r} ({kind}({m.extra_repr()})) is not supported; "
                              "supported: nn.Upsample(scale_factor=2, mode='nearest' or "
                              "'bilinear')")
        if isinstance(m, nn.MaxPool2d) and (hw_pair(m.dilation, where, "dilation") != (1, 1)
                                             or m.return_indices):
            raise ExportError(f"layer {where!r} ({kind}({m.extra_repr()})): dilated pooling or "
                              "return_indices; nearest supported form: dilation=1")
        if isinstance(m, nn.AvgPool2d) and m.divisor_override is not None:
            raise ExportError(f"layer {where!r} ({kind}({m.extra_repr()})): divisor_override; "
                              "nearest supported form: divisor_override=None")
        if isinstance(m, nn.Conv2d):
            check_conv(m, where)
    except ExportError as exc:
        return str(exc)
    if isinstance(m, MODULES) or next(m.children(), None) is not None:
        return None
    if not type(m).__module__.startswith("torch.nn"):
        return None
    return f"layer {where!r} ({kind}) is not supported; {suggest(kind, full=False)}"
