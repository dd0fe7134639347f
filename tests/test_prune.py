"""Pruning strategies in the {alpha, beta} domain: exact shares, masks kept in training, exact
physical filter removal, Sub-bit patterns, honest statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sbnn import models
from sbnn.method.constraint import SparsityConstraint, sb_layers
from sbnn.method.layers import SBConv2d
from sbnn.verbs.binarize import init_closed_form_
from sbnn.verbs.convert import convert
from sbnn.verbs.prune import (
    LayerMasks,
    PruneConfig,
    assign_patterns,
    attach_,
    compute_masks,
    detach_,
    filter_mask,
    kernel_mask,
    learn_patterns,
    magnitude_mask,
    project_,
    prune_state,
    prune_stats,
    shrink_,
)


def _fp(seed: int = 0, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return models.create("fmnist_cnn_flat_fp", width=width).eval()


def _kernel_zero(bits: torch.Tensor) -> torch.Tensor:
    return ~bits.reshape(bits.shape[0] * bits.shape[1], -1).any(1)


def _train_steps(model, steps=3, ec=0.05):
    model.train()
    cons = SparsityConstraint(model, ec=ec, gamma=0.07)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(8, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        (loss + cons(loss)).backward()
        opt.step()
        cons.clamp_()
    return model


def test_config_validation():
    with pytest.raises(ValueError, match="prune.kernels"):
        PruneConfig(kernels=1.0)
    with pytest.raises(ValueError, match="prune.patterns"):
        PruneConfig(patterns=12)
    assert not PruneConfig().active and PruneConfig(patterns=4).active


def test_masks_exact_counts():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    m = magnitude_mask(w, 0.3)
    assert int(m.sum()) == round(0.3 * w.numel())
    assert w[m].abs().max() <= w[~m].abs().min()
    f = filter_mask(w, 0.25)
    assert int(f.sum()) == 2
    norms = w.reshape(8, -1).norm(dim=1)
    assert norms[f].max() <= norms[~f].min()
    k = kernel_mask(w, 0.5, threshold=1.0)
    kz = k.reshape(32, 9).all(1)
    assert int(kz.sum()) == 16 and torch.equal(k.reshape(32, 9).any(1), kz)


@pytest.mark.parametrize("gran", ["layer", "channel"])
def test_magnitude_pruning_before_conversion(gran):
    fp = _fp()
    model, info = convert(fp, 0.05, gran, prune=PruneConfig(magnitude=0.5), return_info=True)
    for name, m in sb_layers(model):
        w = info["float_weights"][name]
        zero = info["masks"][name].zero
        assert int((w == 0).sum()) >= round(0.5 * w.numel()) and torch.equal(w[zero],
                                                                              torch.zeros_like(w[zero]))
        assert not bool(m.bits()[zero].any())
        per = m.bits().reshape(1 if gran == "layer" else w.shape[0], -1)
        assert ((per.float().mean(1) - 0.05).abs() <= 1 / per.shape[1]).all()
        a, b = m.alpha_beta()
        bits = m.bits()
        if gran == "layer":  # levels are the group means of the pruned float weights
            torch.testing.assert_close(a, w[~bits].mean(), rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(b, w[bits].mean(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("gran", ["layer", "channel"])
def test_kernel_removal_exact_share_and_kept_in_training(gran):
    fp = _fp(1)
    share = 0.85
    model = convert(fp, 0.05, gran, prune=PruneConfig(kernels=share))
    for _, m in sb_layers(model):
        bits = m.bits()
        kz = _kernel_zero(bits)
        assert int(kz.sum()) == round(share * kz.numel())  # exactly the share
        if gran == "layer":
            assert int(bits.sum()) == round(0.05 * bits.numel())  # ones kept at the target
    forced = {n: m._sbnn_prune["masks"].zero.clone() for n, m in sb_layers(model)}
    _train_steps(model)
    for n, m in sb_layers(model):
        assert not bool(m.bits()[forced[n]].any())  # forced kernels stay all-zero
        assert m.weight.grad is None or not bool(m.weight.grad[forced[n]].any())


def test_filter_removal_dead_share_and_batchnorm_zero():
    fp = _fp(2)
    model = convert(fp, 0.05, prune=PruneConfig(filters=0.25))
    bns = {"block1.0": model.block1[1], "block2.0": model.block2[1], "block3.0": model.block3[1]}
    for _, m in sb_layers(model):  # the split spends the whole budget on the living filters
        assert int(m.bits().sum()) == round(0.05 * m.weight.numel())
    _train_steps(model)
    for name, m in sb_layers(model):
        bits = m.bits().reshape(m.weight.shape[0], -1)
        dead = m._sbnn_prune["masks"].dead
        assert int(dead.sum()) == round(0.25 * m.weight.shape[0])
        assert not bool(bits[dead].any())
        assert torch.equal(bns[name].weight[dead], torch.zeros(int(dead.sum())))


def test_physical_filter_removal_keeps_outputs():
    fp = _fp(3)
    model = convert(fp, 0.05, prune=PruneConfig(filters=0.25, kernels=0.8))
    _train_steps(model, steps=2)
    model.eval()
    x = torch.randn(6, 1, 28, 28)
    y0 = model(x)
    stats0 = prune_stats(model, x)
    detach_(model)
    removed = shrink_(model, x)
    # block3's channels reach the classifier through Flatten + BatchNorm1d (exact fold); the
    # padded convs of block2 and block3 cannot absorb a constant channel exactly
    assert removed == {"block3.0": 8}
    assert model.block3[0].out_channels == 24 and model.head[2].in_features == 24 * 9
    torch.testing.assert_close(model(x), y0, rtol=1e-5, atol=1e-5)
    stats1 = prune_stats(model, x)
    assert stats1["total"]["n"] == stats0["total"]["n"] - 8 * 16 * 9
    assert stats1["total"]["ops_dense"] < stats0["total"]["ops_dense"]


def test_physical_filter_removal_into_an_unpadded_conv():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4),
        SBConv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.MaxPool2d(2),
        SBConv2d(8, 6, 3, padding=0, bias=False), nn.BatchNorm2d(6),
        nn.Flatten(), nn.Linear(6 * 3 * 3, 5))
    init_closed_form_(model, 0.2)
    attach_(model, compute_masks(model, PruneConfig(filters=0.25)))
    _train_steps_generic(model)
    model.eval()
    x = torch.randn(5, 1, 10, 10)
    y0 = model(x)
    detach_(model)
    removed = shrink_(model, x)
    assert removed == {"2": 2, "5": 2}
    assert model[5].in_channels == 6 and model[8].in_features == 4 * 9
    torch.testing.assert_close(model(x), y0, rtol=1e-5, atol=1e-5)


def _train_steps_generic(model, steps=3):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        x = torch.randn(8, 1, 10, 10)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # move the BatchNorm statistics away from their defaults so the folds are not trivial
    with torch.no_grad():
        model(torch.randn(16, 1, 10, 10))


def test_learn_and_assign_patterns():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3) - 0.8
    cb = learn_patterns(w, 4)
    assert cb.shape[0] <= 16 and cb.shape[1] == 9 and not bool(cb[0].any())
    assert cb.unique(dim=0).shape[0] == cb.shape[0] or cb.shape[0] <= 16
    # a kernel that is already a pattern is assigned to it at zero cost
    v = torch.where(cb[3], 1.0, -1.0).unsqueeze(0)
    assert int(assign_patterns(v, cb)[0]) == 3


@pytest.mark.parametrize("k", [4, 5, 6])
def test_sub_bit_patterns_with_alpha_beta_and_sparsity(k):
    fp = _fp(4)
    model = convert(fp, 0.05, prune=PruneConfig(patterns=k))
    _train_steps(model, steps=2)
    project_(model)
    x = torch.randn(2, 1, 28, 28)
    stats = prune_stats(model, x)
    for (name, m), row in zip(sb_layers(model), stats["layers"], strict=True):
        cb = m._sbnn_prune["masks"].codebook
        assert cb.shape[0] <= 2**k
        kern = m.bits().reshape(-1, 9)
        # every kernel is one of the codebook's patterns
        match = (kern.unsqueeze(1) == cb.unsqueeze(0)).all(2).any(1)
        assert bool(match.all()), name
        assert row["distinct_patterns"] <= cb.shape[0]
        n_k = kern.shape[0]
        index_bits = math.ceil(math.log2(cb.shape[0]))  # <= k when fewer patterns are in use
        assert index_bits <= k
        assert row["bits_pattern_fixed"] == n_k * index_bits + cb.shape[0] * 9
        assert row["bits_pattern_entropy"] <= row["bits_pattern_fixed"] + 1e-6


def test_sub_bit_patterns_alone_dense_pm1():
    """The authors' Sub-bit baseline: a dense BNN (pm1, ~half ones) with 2**k patterns."""
    fp = _fp(5)
    from sbnn.verbs.binarize import BinarizeConfig

    model = convert(fp, 0.5, prune=PruneConfig(patterns=5), config=BinarizeConfig(domain="pm1"))
    for _, m in sb_layers(model):
        kern = m.bits().reshape(-1, 9)
        assert kern.unique(dim=0).shape[0] <= 32
        assert 0.2 < float(kern.float().mean()) < 0.8


def test_compute_masks_for_training_from_scratch():
    """The train-time path: closed-form init at EC, then masks, then training keeps them."""
    torch.manual_seed(0)
    model = models.create("fmnist_cnn_flat", width=16)
    init_closed_form_(model, 0.05)
    masks = compute_masks(model, PruneConfig(magnitude=0.3, kernels=0.9, filters=0.125,
                                             patterns=5))
    attach_(model, masks)
    _train_steps(model)
    for name, m in sb_layers(model):
        lm = masks[name]
        assert not bool(m.bits()[lm.zero].any())
        kz = _kernel_zero(m.bits())
        assert int(kz.sum()) >= round(0.9 * kz.numel())
    state = prune_state(model)
    assert set(state) == {"block1.0", "block2.0", "block3.0"}
    restored = {n: LayerMasks.from_dict(d) for n, d in state.items()}
    detach_(model)
    attach_(model, restored)
    assert set(prune_state(model)) == set(state)
    # the state_dict keys are those of a fresh model: evaluate/export load it unchanged
    assert set(model.state_dict()) == set(models.create("fmnist_cnn_flat", width=16).state_dict())


def test_prune_stats_count_removed_kernels():
    fp = _fp(6)
    model = convert(fp, 0.05, prune=PruneConfig(kernels=0.9))
    x = torch.randn(2, 1, 28, 28)
    st = prune_stats(model, x)
    for row in st["layers"]:
        assert row["zero_kernels"] == round(0.9 * row["kernels"])
        assert row["bits_kernel"] == row["kernels"] + 9 * (row["kernels"] - row["zero_kernels"])
        assert row["ops_sparse"] < row["ops_dense"]
    tot = st["total"]
    assert tot["bits_kernel"] == sum(r["bits_kernel"] for r in st["layers"])


def test_pruned_model_exports_with_the_removed_kernels_skipped():
    export = pytest.importorskip("sbnn.deploy.export")
    engine = pytest.importorskip("sbnn.engine")
    fp = _fp(7)
    model = convert(fp, 0.05, prune=PruneConfig(kernels=0.85, filters=0.25)).eval()
    x = torch.randn(3, 1, 28, 28)
    graph = export.to_graph(model, (1, 28, 28))
    from sbnn_runtime.summary import summarize

    rows = [r for r in summarize(graph)["nodes"] if r["op"] == "sbconv2d"]
    for row, (_, m) in zip(rows, sb_layers(model), strict=True):
        n_k = m.weight.shape[0] * m.weight.shape[1]
        assert row["zero_kernels"] == round(0.85 * n_k) and row["kernels"] == n_k
    with torch.no_grad():
        want = model(x).numpy()
    got = engine.reference_forward(graph, x.numpy())
    assert abs(got - want).max() <= 1e-3 * (1 + abs(want).max())
    # the physically shrunk model exports too, with fewer filters
    detach_(model)
    shrink_(model, x)
    small = export.to_graph(model, (1, 28, 28))
    assert [nd.params["bits"].shape[0] for nd in small.nodes
            if nd.op == "sbconv2d"][-1] == 24
