"""DS-CNN for keyword spotting (the MLPerf Tiny reference network), sparse-binary and float.

Layout at the default ``width`` 64 (Zhang et al., "Hello Edge", arXiv:1711.07128; MLPerf Tiny's
``kws_ref_model``)::

    x: (N, 1, 49, 10)  49 frames x 10 MFCCs
    stem   ZeroPad2d (TF 'same': 4/5 rows, 1/1 columns) + float conv 10x4 stride 2 (1 -> w)
           + BN + ReLU                                               -> (N, w, 25, 5)
    4 x    depthwise 3x3 'same' (float) + BN + ReLU
           pointwise 1x1 (w -> w, binary) + BN + ReLU                -> (N, w, 25, 5)
    head   dropout + global average pool + flatten + float linear(w -> 12)  -> (N, 12)

The binary network binarises the pointwise convs' inputs (``act``) and weights; the stem, the
depthwise convs (9 taps per output: binarising them saves nothing and costs accuracy, so
``binarize_`` keeps them float too) and the classifier stay float. Where the float twin has a
ReLU before a binary conv, the binary network has none (a ReLU there would make every binarised
input +1). ``dscnn_fp`` is the float twin with the same layout.
"""

from __future__ import annotations

import torch
from torch import nn

from sbnn.models import register
from sbnn.models._common import binary_conv1x1


class DSCNN(nn.Module):
    """DS-CNN: a 10x4 stride-2 stem, ``blocks`` depthwise-separable blocks, a pooled head."""

    def __init__(self, num_classes: int = 12, in_chans: int = 1, width: int = 64,
                 blocks: int = 4, dropout: float = 0.4, binary: bool = True,
                 domain: str = "learned", weight_estimator="ste", act="approx_sign"):
        super().__init__()
        sb = dict(domain=domain, weight_estimator=weight_estimator, act=act)
        w = width
        # TF 'same' at stride 2 on 49x10 pads 4 rows above, 5 below and 1 column each side
        self.stem = nn.Sequential(nn.ZeroPad2d((1, 1, 4, 5)),
                                  nn.Conv2d(in_chans, w, (10, 4), 2, bias=False),
                                  nn.BatchNorm2d(w), nn.ReLU())
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers += [nn.Conv2d(w, w, 3, padding="same", groups=w, bias=False),
                       nn.BatchNorm2d(w), nn.Identity() if binary else nn.ReLU(),
                       binary_conv1x1(binary, w, w, **sb), nn.BatchNorm2d(w), nn.ReLU()]
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 1, 49, 10) -> (N, classes)
        return self.head(self.blocks(self.stem(x)))


@register()
def dscnn(num_classes: int = 12, in_chans: int = 1, **kw) -> nn.Module:
    """DS-CNN for keyword spotting (MLPerf Tiny), binary pointwise convs."""
    return DSCNN(num_classes, in_chans, binary=True, **kw)


@register()
def dscnn_fp(num_classes: int = 12, in_chans: int = 1, domain=None, weight_estimator=None,
             act=None, **kw) -> nn.Module:
    """Float twin of ``dscnn`` (the MLPerf Tiny reference layout)."""
    return DSCNN(num_classes, in_chans, binary=False, **kw)
