"""MobileNetV1 for visual wake words (the MLPerf Tiny reference, width 0.25), sparse-binary
and float.

Layout at the default ``width`` 8 (the stem's channels: 32 x 0.25; Howard et al., arXiv:
1704.04861; MLPerf Tiny's ``vww_ref_model`` on 96x96x3 images)::

    x: (N, 3, 96, 96)
    stem   float conv 3x3 stride 2 (TF 'same': pad 0 above/left, 1 below/right) + BN + ReLU
                                                                     -> (N, w, 48, 48)
    13 x   depthwise 3x3 (float; stride 2 with the same TF padding) + BN + ReLU
           pointwise 1x1 (binary) + BN + ReLU    channels 2w, 4w/2, 4w, 8w/2, 8w, 16w/2,
                                                 5 x 16w, 32w/2, 32w (/2: stride 2)
                                                                     -> (N, 32w, 3, 3)
    head   global average pool + flatten + float linear(32w -> 2)    -> (N, 2)

The binary network binarises the pointwise convs (each has >= 8 input channels); the stem,
the depthwise convs and the classifier stay float, and it has no ReLU before a binary conv (it
would make every binarised input +1). ``mobilenet_v1_fp`` is the float twin.
"""

from __future__ import annotations

import torch
from torch import nn

from sbnn.models import register
from sbnn.models._common import binary_conv1x1

# (multiple of width, stride) of the 13 depthwise-separable blocks
_BLOCKS = ((2, 1), (4, 2), (4, 1), (8, 2), (8, 1), (16, 2), (16, 1), (16, 1), (16, 1), (16, 1),
           (16, 1), (32, 2), (32, 1))


def _same(stride: int) -> nn.Module:
    # TF 'same' for a 3x3 kernel: stride 1 pads 1 all round; stride 2 on an even size pads
    # only below and right
    return nn.ZeroPad2d((0, 1, 0, 1)) if stride == 2 else nn.ZeroPad2d(1)


class MobileNetV1(nn.Module):
    """MobileNetV1: a stride-2 stem, 13 depthwise-separable blocks, a pooled classifier."""

    def __init__(self, num_classes: int = 2, in_chans: int = 3, width: int = 8,
                 binary: bool = True, domain: str = "learned", weight_estimator="ste",
                 act="approx_sign"):
        super().__init__()
        sb = dict(domain=domain, weight_estimator=weight_estimator, act=act)
        self.stem = nn.Sequential(_same(2), nn.Conv2d(in_chans, width, 3, 2, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        layers: list[nn.Module] = []
        c = width
        for mult, stride in _BLOCKS:
            co = mult * width
            layers += [_same(stride), nn.Conv2d(c, c, 3, stride, groups=c, bias=False),
                       nn.BatchNorm2d(c), nn.Identity() if binary else nn.ReLU(),
                       binary_conv1x1(binary, c, co, **sb), nn.BatchNorm2d(co), nn.ReLU()]
            c = co
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, 96, 96) -> (N, classes)
        return self.head(self.blocks(self.stem(x)))


@register()
def mobilenet_v1(num_classes: int = 2, in_chans: int = 3, **kw) -> nn.Module:
    """MobileNetV1 (width 0.25 at the default ``width`` 8) for visual wake words, binary
    pointwise convs."""
    return MobileNetV1(num_classes, in_chans, binary=True, **kw)


@register()
def mobilenet_v1_fp(num_classes: int = 2, in_chans: int = 3, domain=None, weight_estimator=None,
                    act=None, **kw) -> nn.Module:
    """Float twin of ``mobilenet_v1`` (the MLPerf Tiny reference layout)."""
    return MobileNetV1(num_classes, in_chans, binary=False, **kw)
