"""Small sparse-binary CNNs for 28x28 grey images (Fashion-MNIST / MNIST).

``fmnist_cnn`` is the main job's network. Its binary convs hold most of the weights (244,224
binary against 7,042 float parameters at the default ``width`` 32), so the sparse binary weights
are most of the exported file. Layout (``w`` = ``width``, ``extra`` = 1, ``head_pool`` = 2)::

    x: (N, 1, 28, 28)
    stem   float conv3x3(1 -> w/2) + BN + maxpool2                -> (N, w/2, 14, 14)
    block1 binary conv3x3(w/2 -> w) + BN + maxpool2               -> (N, w, 7, 7)
    block2 binary conv3x3(w -> 2w)  + BN                          -> (N, 2w, 7, 7)
    block3 binary conv3x3(2w -> 4w, stride ``last_stride`` = 2) + BN  -> (N, 4w, 4, 4)
           ``extra`` x [binary conv3x3(4w -> 4w) + BN]            -> (N, 4w, 4, 4)
    head   avgpool2 to 2x2 + flatten + BN1d + float linear(16w -> classes)  -> (N, classes)

``head_pool=1`` pools globally instead (a 4w -> classes classifier): measured 86.17 % against
87.34 % for the 2x2 head in the main job's 4 epochs, so the 2x2 map stays.

``fmnist_cnn_flat`` is the earlier main-job network (a flattened 3x3 map into a float
``18w -> classes`` classifier, which then holds most of the weights); it is kept so that runs made
with it can still be rebuilt and compared::

    stem   float conv3x3(1 -> w/2) + BN + maxpool2           -> (N, w/2, 14, 14)
    block1 binary conv3x3(w/2 -> w) + BN                     -> (N, w, 14, 14)
    block2 binary conv3x3(w -> w)   + BN + maxpool2          -> (N, w, 7, 7)
    block3 binary conv3x3(w -> 2w)  + BN + maxpool2          -> (N, 2w, 3, 3)
    head   flatten + BN1d + float linear(18w -> classes)     -> (N, classes)

Each binary conv binarises its input (``act``) and its weights into {alpha, beta}; the stem and the
classifier stay full precision, as in the paper's networks. The full-precision twins (``*_fp``)
have the same layouts with float convs and a hardtanh where the binary network has its sign.
"""

from __future__ import annotations

import torch
from torch import nn

from sbnn.models import register
from sbnn.models._common import binary_conv3x3


class FmnistCNN(nn.Module):
    """The main job's network: binary convs up to 4w channels, then a global-pooling head.
    ``extra`` binary 4w -> 4w convs follow block3 (the main job has one)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 32,
                 last_stride: int = 2, extra: int = 1, head_pool: int = 2,
                 binary: bool = True, domain: str = "learned", weight_estimator="ste",
                 act="approx_sign"):
        super().__init__()
        sb = dict(domain=domain, weight_estimator=weight_estimator, act=act)
        c0, c1, c2, c3 = max(width // 2, 1), width, 2 * width, 4 * width
        # FP twin: hardtanh where the binary net has its sign (inside the next SBConv2d).
        nl = nn.Identity if binary else nn.Hardtanh
        self.stem = nn.Sequential(nn.Conv2d(in_chans, c0, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(c0), nn.MaxPool2d(2), nl())
        self.block1 = nn.Sequential(binary_conv3x3(binary, c0, c1, **sb), nn.BatchNorm2d(c1),
                                    nn.MaxPool2d(2), nl())
        self.block2 = nn.Sequential(binary_conv3x3(binary, c1, c2, **sb), nn.BatchNorm2d(c2),
                                    nl())
        b3: list[nn.Module] = [binary_conv3x3(binary, c2, c3, last_stride, **sb),
                               nn.BatchNorm2d(c3)]
        for _ in range(extra):
            b3 += [nl(), binary_conv3x3(binary, c3, c3, 1, **sb), nn.BatchNorm2d(c3)]
        self.block3 = nn.Sequential(*b3)
        if head_pool not in (1, 2):
            raise ValueError(f"head_pool must be 1 (global pool) or 2 (2x2 map), got {head_pool}")
        feat = c3 * head_pool * head_pool
        # 2: average 2x2 windows of the 4x4 map (a fixed pool, which the exporter lowers)
        pool = nn.AdaptiveAvgPool2d(1) if head_pool == 1 else nn.AvgPool2d(2)
        self.head = nn.Sequential(pool, nn.Flatten(), nn.BatchNorm1d(feat),
                                  nn.Linear(feat, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, C, 28, 28) -> (N, classes)
        return self.head(self.block3(self.block2(self.block1(self.stem(x)))))


class FmnistFlatCNN(nn.Module):
    """The earlier main-job network: a flattened 3x3 map into a float classifier."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 32,
                 binary: bool = True, domain: str = "learned", weight_estimator="ste",
                 act="approx_sign"):
        super().__init__()
        sb = dict(domain=domain, weight_estimator=weight_estimator, act=act)
        c0, c1, c2 = max(width // 2, 1), width, 2 * width
        nl = nn.Identity if binary else nn.Hardtanh
        self.stem = nn.Sequential(nn.Conv2d(in_chans, c0, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(c0), nn.MaxPool2d(2), nl())
        self.block1 = nn.Sequential(binary_conv3x3(binary, c0, c1, **sb), nn.BatchNorm2d(c1), nl())
        self.block2 = nn.Sequential(binary_conv3x3(binary, c1, c1, **sb), nn.BatchNorm2d(c1),
                                    nn.MaxPool2d(2), nl())
        self.block3 = nn.Sequential(binary_conv3x3(binary, c1, c2, **sb), nn.BatchNorm2d(c2),
                                    nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(c2 * 9),
                                  nn.Linear(c2 * 9, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, C, 28, 28) -> (N, classes)
        return self.head(self.block3(self.block2(self.block1(self.stem(x)))))


@register()
def fmnist_cnn(num_classes: int = 10, in_chans: int = 1, **kw) -> nn.Module:
    """The main job's sparse-binary CNN (FP stem and classifier, three binary 3x3 convs, global
    pooling head)."""
    return FmnistCNN(num_classes, in_chans, binary=True, **kw)


@register()
def fmnist_cnn_fp(num_classes: int = 10, in_chans: int = 1, domain=None, weight_estimator=None,
                  act=None, **kw) -> nn.Module:
    """Full-precision twin of ``fmnist_cnn`` (same layout, float convs)."""
    return FmnistCNN(num_classes, in_chans, binary=False, **kw)


@register()
def fmnist_cnn_flat(num_classes: int = 10, in_chans: int = 1, **kw) -> nn.Module:
    """The earlier main-job CNN, whose float classifier holds most of the weights."""
    return FmnistFlatCNN(num_classes, in_chans, binary=True, **kw)


@register()
def fmnist_cnn_flat_fp(num_classes: int = 10, in_chans: int = 1, domain=None,
                       weight_estimator=None, act=None, **kw) -> nn.Module:
    """Full-precision twin of ``fmnist_cnn_flat``."""
    return FmnistFlatCNN(num_classes, in_chans, binary=False, **kw)
