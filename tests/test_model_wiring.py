"""Pin the paper networks' wiring to the authors' code (robustml-eurecom/SBNN): residual adds,
where hardtanh and max-pool sit, the map size before the pool, and the parameter counts."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from sbnn import models
from sbnn.method.constraint import sb_layers
from sbnn.method.layers import LearnableBias, RPReLU, RSign, SBLayer


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        leaf = isinstance(m, (SBLayer, RSign, RPReLU, LearnableBias))
        return leaf or super().is_leaf_module(m, qualname)


def _graph(model: nn.Module) -> fx.Graph:
    return _Tracer().trace(model.eval())


def _adds(g: fx.Graph) -> int:
    return sum(1 for n in g.nodes
               if n.op == "call_function" and n.target in (operator.add, torch.add))


def _is_hardtanh(n: fx.Node, mods: dict) -> bool:
    if n.op == "call_function":
        return n.target in (F.hardtanh, torch.nn.functional.hardtanh)
    return n.op == "call_module" and isinstance(mods[n.target], nn.Hardtanh)


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())




@pytest.mark.parametrize("name,adds,hardtanh", [("resnet18_irnet", 8, 16),
                                                ("resnet18_irnet_percv", 16, 17)])
def test_resnet18_residual_adds_and_hardtanh(name, adds, hardtanh):
    m = models.create(name, num_classes=10)
    g = _graph(m)
    mods = dict(m.named_modules())
    assert _adds(g) == adds
    assert sum(_is_hardtanh(n, mods) for n in g.nodes) == hardtanh


def test_resnet18_authors_block_order():
    """conv1 -> bn1 -> hardtanh -> conv2 -> bn2 -> add(shortcut) -> hardtanh; no stem hardtanh."""
    m = models.create("resnet18_irnet", num_classes=10)
    g = _graph(m)
    mods = dict(m.named_modules())
    seq = []
    for n in g.nodes:
        if n.op == "call_module":
            t = mods[n.target]
            if not isinstance(t, nn.Identity):
                seq.append("sb" if isinstance(t, SBLayer) else type(t).__name__)
        elif _is_hardtanh(n, mods):
            seq.append("ht")
        elif n.op == "call_function" and n.target in (operator.add, torch.add):
            seq.append("add")
    # the stem conv + BN go straight into the first binary conv
    assert seq[:3] == ["Conv2d", "BatchNorm2d", "sb"]
    first_block = seq[2:10]
    assert first_block == ["sb", "BatchNorm2d", "ht", "sb", "BatchNorm2d", "add", "ht", "sb"]
    # every add sums bn2's output and a shortcut of the block input: the shortcut branch holds
    # no binary conv and starts at a hardtanh (or the stem's BN for the first block)
    for n in g.nodes:
        if n.op == "call_function" and n.target is operator.add:
            main, short = n.args
            assert isinstance(mods[main.target], nn.BatchNorm2d)
            node = short
            while node.op == "call_module" and isinstance(mods[node.target],
                                                          (nn.Identity, nn.BatchNorm2d, nn.Conv2d)):
                assert not isinstance(mods[node.target], SBLayer)
                if node.target in ("bn1",):
                    break
                node = node.args[0]
            assert node.target == "bn1" or _is_hardtanh(node, mods)


def test_resnet18_parameter_counts_and_pool_size():
    m = models.create("resnet18_irnet", num_classes=10)
    n_bin = sum(layer.weight.numel() for _, layer in sb_layers(m))
    # 16 binary 3x3 convs of ResNet-18 (CIFAR): 64*64*9*4 + 64*128*9 + 128*128*9*3 + ...
    expect_bin = 9 * (4 * 64 * 64 + 64 * 128 + 3 * 128 * 128 + 128 * 256 + 3 * 256 * 256
                      + 256 * 512 + 3 * 512 * 512)
    assert n_bin == expect_bin == 10_985_472
    # the float twin has exactly the binary net's parameters minus tau/phi (2 per binary conv)
    fp = models.create("resnet18_irnet_fp", num_classes=10)
    assert _params(m) - _params(fp) == 2 * 16
    assert _params(fp) == 11_173_962 + 2 * 512  # torchvision-style CIFAR ResNet-18 + BN1d(512)
    # the map before the average pool is 4x4 for a 32x32 input
    seen = []
    h = m.layers.register_forward_hook(lambda mod, i, o: seen.append(tuple(o.shape)))
    with torch.no_grad():
        m.eval()(torch.randn(1, 3, 32, 32))
    h.remove()
    assert seen == [(1, 512, 4, 4)]


def test_reactnet18_maxpool_after_stem_and_stage_sizes():
    m = models.create("reactnet18", num_classes=100).eval()
    g = _graph(m)
    mods = dict(m.named_modules())
    pools = [n for n in g.nodes if n.op == "call_module" and isinstance(mods[n.target],
                                                                        nn.MaxPool2d)]
    assert len(pools) == 1
    p = mods[pools[0].target]
    assert (p.kernel_size, p.stride, p.padding) == (3, 2, 1)
    # its input is the stem's BN output
    src = pools[0].args[0]
    assert src.op == "call_module" and src.target == "stem.1"
    sizes = []
    hooks = [b.register_forward_hook(lambda mod, i, o: sizes.append(o.shape[-1]))
             for b in m.blocks]
    with torch.no_grad():
        m(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert sizes == [16] * 4 + [8] * 4 + [4] * 4 + [2] * 4  # the map before the pool is 2x2
    assert _adds(g) == 16  # one Bi-Real shortcut per binary conv
    n_bin = sum(layer.weight.numel() for _, layer in sb_layers(m))
    assert n_bin == 9 * (4 * 64 * 64 + 64 * 128 + 3 * 128 * 128 + 128 * 256 + 3 * 256 * 256
                         + 256 * 512 + 3 * 512 * 512)
    fp = models.create("reactnet18_fp", num_classes=100)
    # binary: tau/phi per binary conv; RSign bias == LearnableBias bias, so the rest is equal
    assert _params(m) - _params(fp) == 2 * 16


def test_fmnist_cnn_binary_layers_hold_most_weights():
    m = models.create("fmnist_cnn")
    n_bin = sum(layer.weight.numel() for _, layer in sb_layers(m))
    n_fp = _params(m) - n_bin
    assert n_bin == 9 * (16 * 32 + 32 * 64 + 64 * 128 + 128 * 128) == 244_224
    assert n_fp == 7_042  # stem 144, BN 2*(16+32+64+128+128), BN1d 2*512, fc 5130, tau/phi 8
    assert n_bin > 30 * n_fp
    with torch.no_grad():
        assert m.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
