"""ReActNet-18 (Liu et al., arXiv:2003.03488) in the Bi-Real layout: the paper's CIFAR-100 net.

    x: (N, 3, 32, 32)
    float conv3x3(3 -> 64) + BN                                    -> (N, 64, 32, 32)
    maxpool 3x3, stride 2, pad 1                                   -> (N, 64, 16, 16)
    4 stages x 4 blocks, 64/128/256/512 channels, strides 1/2/2/2  -> (N, 512, 2, 2)
    avgpool + flatten + float linear                               -> (N, classes)

The max-pool after the stem is the authors' (robustml-eurecom/SBNN, CIFAR-100/birealnetBNN.py):
the stages run at 16/8/4/2 for a 32x32 input.

Block (one binary 3x3 conv each, Bi-Real-Net's per-conv shortcut)::

    out = RPReLU(BN(bconv3x3(RSign(x))) + shortcut(x))
    shortcut: identity, or avgpool2 + float conv1x1 + BN when the shape changes

``RSign`` is the learnable-shift binary activation (ApproxSign gradient by default); the binary conv
takes the already-binarised input. ``reactnet18_fp`` keeps the layout with float convs and a plain
learnable shift in place of RSign.
"""

from __future__ import annotations

import torch
from torch import nn

from sbnn.models import register
from sbnn.models._common import binary_conv3x3


class ReActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, binary: bool, sb: dict):
        super().__init__()
        from sbnn.method.layers import LearnableBias, RPReLU, RSign

        act = sb.get("act")
        if binary and act is not None:
            self.move = RSign(cin, estimator=act)
        else:
            self.move = LearnableBias(cin)
        # The input is binarised by RSign above, so the conv itself takes it as is.
        self.conv = binary_conv3x3(binary, cin, cout, stride, **{**sb, "act": None})
        self.bn = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            layers: list[nn.Module] = [nn.AvgPool2d(2)] if stride != 1 else []
            layers += [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.shortcut = nn.Sequential(*layers)
        self.prelu = RPReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, C_in, H, W) -> (N, C_out, H/stride, W/stride)
        return self.prelu(self.bn(self.conv(self.move(x))) + self.shortcut(x))


class ReActNet18(nn.Module):
    def __init__(self, num_classes: int = 100, in_chans: int = 3, layers=(4, 4, 4, 4),
                 width: int = 64, binary: bool = True, domain: str = "learned",
                 weight_estimator="ste", act="approx_sign"):
        super().__init__()
        sb = dict(domain=domain, weight_estimator=weight_estimator, act=act)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks, cin = [], width
        for i, n in enumerate(layers):
            cout = width * 2**i
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(ReActBlock(cin, cout, stride, binary, sb))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, 32, 32) -> (N, classes)
        out = self.blocks(self.maxpool(self.stem(x)))  # (N, 8w, 2, 2) for a 32x32 input
        return self.fc(torch.flatten(self.pool(out), 1))


@register()
def reactnet18(num_classes: int = 100, in_chans: int = 3, **kw) -> nn.Module:
    """The paper's CIFAR-100 network: ReActNet-18 with sparse-binary 3x3 convs."""
    return ReActNet18(num_classes, in_chans, binary=True, **kw)


@register()
def reactnet18_fp(num_classes: int = 100, in_chans: int = 3, domain=None, weight_estimator=None,
                  act=None, **kw) -> nn.Module:
    """Full-precision twin of ``reactnet18``."""
    return ReActNet18(num_classes, in_chans, binary=False, **kw)
