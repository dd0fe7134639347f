"""Two of the MLPerf Tiny reference networks (arXiv 2106.07597), with their float twins.

``resnet8`` (image classification, CIFAR-10)::

    x: (N, 3, 32, 32)
    float conv3x3(3 -> 16) + BN + act                                   -> (N, 16, 32, 32)
    3 stages x 1 basic block, 16/32/64 channels, strides 1/2/2          -> (N, 64, 8, 8)
    global average pool + flatten + float linear                        -> (N, classes)

    block: out = act(BN(conv3x3(x)));  out = act(BN(conv3x3(out)) + shortcut(x))
    shortcut: identity in the first stage, a float 1x1 conv of the stride (with bias, no BN, as
    in the reference) in the downsampling ones

``fc_autoencoder`` (anomaly detection, ToyADMOS: 5 frames x 128 mel bins = 640 features)::

    x: (N, 640)
    linear(640 -> 128) + BN1d + act, then 3 x linear(128 -> 128) + BN1d + act
    linear(128 -> 8) + BN1d + act                                       (the bottleneck)
    linear(8 -> 128) + BN1d + act, then 3 x linear(128 -> 128) + BN1d + act
    linear(128 -> 640)                                                  -> (N, 640)

The sparse-binary versions binarise the inner 3x3 convs / linears with binary activations, and
keep the first and last layer and the 1x1 shortcuts in float (the paper's layout). They use
``hardtanh`` where the reference uses ReLU: a ReLU output fed to a binary activation is all +1
(``sign(0) = +1``), so the float twins keep ReLU and the binary ones clip to [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbnn.models import register
from sbnn.models._common import binary_conv3x3


def _act(binary: bool):
    return F.hardtanh if binary else F.relu


class Resnet8Block(nn.Module):
    """One MLPerf Tiny ResNet-8 block: two 3x3 convs and a shortcut (1x1 conv when it strides)."""

    def __init__(self, cin: int, cout: int, stride: int, binary: bool, sb: dict):
        super().__init__()
        self.act = _act(binary)
        self.conv1 = binary_conv3x3(binary, cin, cout, stride, **sb)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = binary_conv3x3(binary, cout, cout, 1, **sb)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, C_in, H, W) -> (N, C_out, H/stride, W/stride)
        out = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet8(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 16,
                 binary: bool = True, domain: str = "learned", weight_estimator="ste",
                 act="approx_sign"):
        super().__init__()
        sb = dict(domain=domain, weight_estimator=weight_estimator, act=act)
        self.act = _act(binary)
        self.conv1 = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.stages = nn.Sequential(
            Resnet8Block(width, width, 1, binary, sb),
            Resnet8Block(width, 2 * width, 2, binary, sb),
            Resnet8Block(2 * width, 4 * width, 2, binary, sb))
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 3, 32, 32) -> (N, classes)
        out = self.stages(self.act(self.bn1(self.conv1(x))))  # (N, 4w, 8, 8)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class FCAutoencoder(nn.Module):
    """The MLPerf Tiny anomaly-detection autoencoder; ``forward`` returns the reconstruction."""

    def __init__(self, in_features: int = 640, width: int = 128, bottleneck: int = 8,
                 depth: int = 4, binary: bool = True, domain: str = "learned",
                 weight_estimator="ste", act="approx_sign"):
        super().__init__()
        sizes = [in_features] + [width] * depth + [bottleneck] + [width] * depth
        self.act = _act(binary)
        layers, norms = [], []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            if binary and i > 0:
                from sbnn.method.layers import SBLinear  # late: models need no layers early

                layers.append(SBLinear(a, b, domain=domain, weight_estimator=weight_estimator,
                                       act=act))
            else:
                layers.append(nn.Linear(a, b))
            norms.append(nn.BatchNorm1d(b))
        self.layers = nn.ModuleList(layers)
        self.norms = nn.ModuleList(norms)
        self.out = nn.Linear(width, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, F) -> (N, F)
        for lin, bn in zip(self.layers, self.norms, strict=True):
            x = self.act(bn(lin(x)))
        return self.out(x)


@register()
def resnet8(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
    """MLPerf Tiny's ResNet-8 (16/32/64 channels) with sparse-binary 3x3 convs."""
    return ResNet8(num_classes, in_chans, binary=True, **kw)


@register()
def resnet8_fp(num_classes: int = 10, in_chans: int = 3, domain=None, weight_estimator=None,
               act=None, **kw) -> nn.Module:
    """Full-precision twin of ``resnet8`` (the MLPerf Tiny reference, ReLU)."""
    return ResNet8(num_classes, in_chans, binary=False, **kw)


@register()
def fc_autoencoder(num_classes: int = 640, in_chans: int = 1, **kw) -> nn.Module:
    """MLPerf Tiny's FC autoencoder (640 -> 128x4 -> 8 -> 128x4 -> 640) with sparse-binary
    inner linears on binary activations. ``num_classes`` and ``in_chans`` are ignored (the
    output is the input's reconstruction; ``in_features`` sets its size)."""
    return FCAutoencoder(binary=True, **kw)


@register()
def fc_autoencoder_fp(num_classes: int = 640, in_chans: int = 1, domain=None,
                      weight_estimator=None, act=None, **kw) -> nn.Module:
    """Full-precision twin of ``fc_autoencoder`` (the MLPerf Tiny reference, ReLU)."""
    return FCAutoencoder(binary=False, **kw)
