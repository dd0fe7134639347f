"""Helpers shared by the model definitions (private)."""

from __future__ import annotations

from torch import nn


def binary_conv3x3(binary: bool, cin: int, cout: int, stride: int = 1, *, domain="learned",
                   weight_estimator="ste", act="approx_sign") -> nn.Module:
    """A 3x3 conv, padding 1, no bias: sparse-binary (input binarised by ``act``) or float."""
    if binary:
        from sbnn.method.layers import (
            SBConv2d,  # late import: sbnn.models must not need the layers early
        )

        return SBConv2d(cin, cout, 3, stride, 1, bias=False, domain=domain,
                        weight_estimator=weight_estimator, act=act)
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def binary_conv1x1(binary: bool, cin: int, cout: int, *, domain="learned",
                   weight_estimator="ste", act="approx_sign") -> nn.Module:
    """A 1x1 (pointwise) conv, no bias: sparse-binary (input binarised by ``act``) or float."""
    if binary:
        from sbnn.method.layers import SBConv2d  # late import, as above

        return SBConv2d(cin, cout, 1, bias=False, domain=domain,
                        weight_estimator=weight_estimator, act=act)
    return nn.Conv2d(cin, cout, 1, bias=False)
