"""Exact sparsity (``sparsity.mode: exact``) and the ``abr`` domain (r = alpha / (beta - alpha)
fixed at -EC): exact counts after optimiser steps in every domain, the tie rule, the abr levels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sbnn.method.constraint import SparsityConstraint, exact_count, exact_ones_
from sbnn.method.layers import DOMAINS, SBConv2d, SBLinear, set_fixed_r_


def _net(domain: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(SBConv2d(3, 8, 3, bias=False, domain=domain), nn.BatchNorm2d(8),
                         nn.Flatten(), SBLinear(8 * 6 * 6, 10, domain=domain))


def test_exact_ones_hits_the_count_and_breaks_ties_by_index():
    w = torch.tensor([0.3, -0.2, 0.3, 0.3, 0.1, -0.5, 0.3])
    exact_ones_(w, 2)  # four weights tie at 0.3: the two with the lowest index win
    assert (w >= 0).tolist() == [True, False, True, False, False, False, False]
    w = torch.zeros(10)  # all equal
    exact_ones_(w, 3)
    assert (w >= 0).tolist() == [True] * 3 + [False] * 7
    g = torch.Generator().manual_seed(1)
    for n, k in ((5, 1), (100, 37), (1000, 999)):
        w = torch.randn(n, generator=g).round(decimals=1)  # many ties
        order = sorted(range(n), key=lambda i: (-float(w[i]), i))
        exact_ones_(w, k)
        assert int((w >= 0).sum()) == k
        assert set(torch.nonzero(w >= 0).flatten().tolist()) == set(order[:k])
    with pytest.raises(ValueError, match="0 < k < n"):
        exact_ones_(torch.zeros(4), 4)


def test_exact_ones_keeps_the_order_of_untied_weights():
    w = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    before = torch.argsort(w.flatten())
    exact_ones_(w, 17)
    assert torch.equal(torch.argsort(w.flatten()), before)
    assert int((w >= 0).sum()) == 17


@pytest.mark.parametrize("domain", DOMAINS)
def test_exact_mode_holds_the_count_after_every_step(domain):
    net = _net(domain)
    set_fixed_r_(net, -0.1)
    c = SparsityConstraint(net, ec=0.1, gamma=0.07, mode="exact")
    assert not c.active  # no penalty in exact mode
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(3)
    counts = [exact_count(0.1, m.weight.numel()) for m in c.layers]
    assert counts == [22, 288]  # floor(0.1 * 216 + 0.5), floor(0.1 * 2880 + 0.5)
    c.project_()
    for _ in range(5):
        x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
        loss = nn.functional.cross_entropy(net(x), y)
        pen = c(loss)
        assert float(pen) == 0.0
        opt.zero_grad()
        (loss + pen).backward()
        opt.step()
        c.clamp_()
        c.project_()
        assert [int(m.bits().sum()) for m in c.layers] == counts
    assert c.last["ones_fraction"] == pytest.approx(sum(counts) / c.num_weights, abs=0.02)


def test_penalty_mode_is_the_default_and_does_not_project():
    net = _net("learned")
    c = SparsityConstraint(net, ec=0.1, gamma=0.07)
    assert c.mode == "penalty" and c.active
    w = c.layers[0].weight.detach().clone()
    c.project_()
    assert torch.equal(c.layers[0].weight.detach(), w)
    with pytest.raises(ValueError, match="unknown sparsity mode"):
        SparsityConstraint(net, ec=0.1, gamma=0.07, mode="soft")
    with pytest.raises(ValueError, match="one 1-bit"):
        SparsityConstraint(net, ec=0.001, gamma=0.0, mode="exact")  # 216 * 0.001 rounds to 0


def test_abr_levels_have_the_fixed_ratio_and_least_squares_tau():
    layer = SBConv2d(4, 6, 3, domain="abr")
    assert float(layer.r) == pytest.approx(-0.05)  # the default until set
    assert set_fixed_r_(layer, -0.05) == 1
    w = torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(4))
    bits = w > 1.0
    layer.fit_levels_(w, bits)
    a, b = layer.alpha_beta()
    assert float(a / (b - a)) == pytest.approx(-0.05, rel=1e-5)
    # tau minimises |w - (alpha + (beta - alpha) b)|^2 with alpha = -0.05 (beta - alpha)
    u = (bits.float() - 0.05).reshape(-1, 1)  # q = (beta - alpha) * u
    scale = torch.linalg.lstsq(u.double(), w.reshape(-1, 1).double()).solution.item()
    assert float(b - a) == pytest.approx(scale, rel=1e-5)
    with pytest.raises(ValueError, match="must be in"):
        set_fixed_r_(layer, 0.5)


def test_abr_restores_r_from_a_state_dict():
    a = SBLinear(5, 3, domain="abr")
    set_fixed_r_(a, -0.25)
    b = SBLinear(5, 3, domain="abr")
    b.load_state_dict(a.state_dict())
    assert float(b.r) == -0.25
    assert torch.equal(b.quantized_weight(), a.quantized_weight())


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    from sbnn.pipeline.data import write_synthetic_idx

    return str(write_synthetic_idx(tmp_path_factory.mktemp("fmnist"), n_train=128, n_test=64))


@pytest.mark.parametrize("domain", ["abr", "01"])
def test_trainer_exact_mode_end_to_end(toy_root, tmp_path, domain):
    from sbnn.method.constraint import sb_layers
    from sbnn.pipeline.config import load_config
    from sbnn.pipeline.train import Trainer

    cfg = load_config(None, [f"data.root={toy_root}", "data.batch_size=32",
                             "model.kwargs={width: 8}", "epochs=1", "progress=false",
                             "device=cpu", "sparsity.mode=exact",
                             f"model.domain='{domain}'", "sparsity.ec=0.1", "optim.lr=0.05"])
    t = Trainer(cfg, out=tmp_path / "run")
    taus = [float(m.tau) for _, m in sb_layers(t.model)]
    report = t.fit()
    layers = [m for _, m in sb_layers(t.model)]
    assert [int(m.bits().sum()) for m in layers] == [exact_count(0.1, m.weight.numel())
                                                     for m in layers]
    assert report["steps"] == 4 and report["threads"] >= 1 and report["cpu_model"]
    assert [float(m.tau) for m in layers] == taus  # the scale of a fixed-ratio domain is frozen
    if domain == "abr":
        for m in layers:
            a, b = m.alpha_beta()
            assert float(a / (b - a)) == pytest.approx(-0.1, rel=1e-5)


def test_config_knows_the_mode():
    from sbnn.pipeline.config import ConfigError, load_config, validate

    assert load_config(None, []).sparsity.mode == "penalty"
    with pytest.raises(ConfigError, match="sparsity.mode"):
        validate(load_config(None, ["sparsity.mode=hard"]))
