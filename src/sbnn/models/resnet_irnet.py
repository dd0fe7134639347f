"""ResNet-18 for CIFAR as in the authors' code (robustml-eurecom/SBNN, CIFAR-10/resnet_learn.py):
the paper's CIFAR-10 network.

    x: (N, 3, 32, 32)
    float conv3x3(3 -> 64) + BN (no activation)                         -> (N, 64, 32, 32)
    4 stages x 2 BasicBlocks, 64/128/256/512 channels, strides 1/2/2/2  -> (N, 512, 4, 4)
    avgpool + flatten + BN1d + float linear                              -> (N, classes)

BasicBlock (``resnet18_irnet``; one residual add per block, 8 in all, 16 hardtanh)::

    out = hardtanh(BN(bconv3x3(x)))
    out = hardtanh(BN(bconv3x3(out)) + shortcut(x))   # shortcut: identity, or float 1x1 conv + BN

``resnet18_irnet_percv`` keeps IR-Net's ResNet-20 habit of one shortcut around every binary conv
(16 residual adds) and a hardtanh after the stem; sbnn's earlier benchmarks (docs/DEPLOY.md,
docs/ENGINE.md) were measured on it::

    out = hardtanh(BN(bconv3x3(x)) + shortcut(x))
    out = hardtanh(BN(bconv3x3(out)) + out)

``bconv3x3`` binarises its input with ``act`` (EDE in the paper's recipe) and its weights into
{alpha, beta}. The ``*_fp`` builders are the float twins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbnn.models import register
from sbnn.models._common import binary_conv3x3


class IRBasicBlock(nn.Module):
    """The authors' BasicBlock: one residual add after the second conv."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, binary: bool, sb: dict):
        super().__init__()
        self.conv1 = binary_conv3x3(binary, cin, cout, stride, **sb)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = binary_conv3x3(binary, cout, cout, 1, **sb)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, C_in, H, W) -> (N, C_out, H/stride, W/stride)
        out = F.hardtanh(self.bn1(self.conv1(x)))
        return F.hardtanh(self.bn2(self.conv2(out)) + self.shortcut(x))


class IRPerConvBlock(IRBasicBlock):
    """IR-Net's ResNet-20 unit twice: a shortcut around each binary conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, C_in, H, W) -> (N, C_out, H/stride, W/stride)
        out = F.hardtanh(self.bn1(self.conv1(x)) + self.shortcut(x))
        return F.hardtanh(self.bn2(self.conv2(out)) + out)


class ResNetIRNet(nn.Module):
    block = IRBasicBlock
    stem_act = False  # the authors feed bn1(conv1 x) straight into the first stage

    def __init__(self, num_classes: int = 10, in_chans: int = 3, layers=(2, 2, 2, 2),
                 width: int = 64, binary: bool = True, domain: str = "learned",
                 weight_estimator="ede", act="ede"):
        super().__init__()
        sb = dict(domain=domain, weight_estimator=weight_estimator, act=act)
        self.conv1 = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks, cin = [], width
        for i, n in enumerate(layers):
            cout = width * 2**i
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(self.block(cin, cout, stride, binary, sb))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.bn_fc = nn.BatchNorm1d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, 32, 32) -> (N, classes)
        out = self.bn1(self.conv1(x))
        if self.stem_act:
            out = F.hardtanh(out)
        out = self.layers(out)  # (N, 8w, 4, 4) for a 32x32 input
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(self.bn_fc(out))


class ResNetIRNetPerConv(ResNetIRNet):
    block = IRPerConvBlock
    stem_act = True


@register()
def resnet18_irnet(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
    """The paper's CIFAR-10 network: the authors' ResNet-18 with sparse-binary 3x3 convs."""
    return ResNetIRNet(num_classes, in_chans, binary=True, **kw)


@register()
def resnet18_irnet_fp(num_classes: int = 10, in_chans: int = 3, domain=None,
                      weight_estimator=None, act=None, **kw) -> nn.Module:
    """Full-precision twin of ``resnet18_irnet``."""
    return ResNetIRNet(num_classes, in_chans, binary=False, **kw)


@register()
def resnet18_irnet_percv(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
    """ResNet-18 with IR-Net's shortcut around every binary conv (16 residual adds)."""
    return ResNetIRNetPerConv(num_classes, in_chans, binary=True, **kw)


@register()
def resnet18_irnet_percv_fp(num_classes: int = 10, in_chans: int = 3, domain=None,
                            weight_estimator=None, act=None, **kw) -> nn.Module:
    """Full-precision twin of ``resnet18_irnet_percv``."""
    return ResNetIRNetPerConv(num_classes, in_chans, binary=False, **kw)
