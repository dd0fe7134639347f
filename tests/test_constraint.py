import pytest
import torch
from torch import nn

import sbnn
from sbnn import BinarizeConfig, SparsityConstraint, binarize_, init_closed_form_


def toy_model(domain="learned"):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 64), nn.BatchNorm1d(64), nn.Hardtanh(),
        nn.Linear(64, 64), nn.BatchNorm1d(64), nn.Hardtanh(),
        nn.Linear(64, 4),
    )
    return binarize_(model, BinarizeConfig(domain=domain))


def toy_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 16, generator=g)
    y = (x[:, :4].argmax(1)).long()
    return x, y


def test_penalty_is_gamma_share_of_total_loss():
    model = toy_model()
    x, y = toy_data()
    c = SparsityConstraint(model, ec=0.05, gamma=0.07)
    loss = nn.functional.cross_entropy(model(x), y)
    pen = c(loss)
    assert c.last["ones_fraction"] > 0.4  # fresh init: about half the bits are 1
    assert float((pen / (loss + pen)).detach()) == pytest.approx(0.07, rel=1e-5)


def test_no_penalty_at_ec_half_or_gamma_zero_or_below_target():
    model = toy_model()
    x, y = toy_data()
    loss = nn.functional.cross_entropy(model(x), y)
    assert float(SparsityConstraint(model, 0.5, 0.1)(loss).detach()) == 0.0
    assert float(SparsityConstraint(model, 0.05, 0.0)(loss).detach()) == 0.0
    assert float(SparsityConstraint(model, 0.9, 0.1)(loss).detach()) == 0.0


@pytest.mark.parametrize("domain", ["learned", "closed_form"])
def test_training_reaches_target_ones_fraction(domain):
    model = toy_model(domain)
    x, y = toy_data()
    ec, gamma = 0.10, 0.5
    c = SparsityConstraint(model, ec=ec, gamma=gamma)
    p0 = float(c.ones_fraction().detach())
    assert 0.4 < p0 < 0.6
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(250):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        total = loss + c(loss)
        if c.last["h"] > c.threshold:
            assert float(((total - loss) / total).detach()) == pytest.approx(gamma, rel=1e-4)
        total.backward()
        opt.step()
        c.clamp_()
    p = float(c.ones_fraction().detach())
    assert p <= ec + 0.01, p
    for m in c.layers:
        assert float(m.weight.abs().max()) <= 1.5
    # the network still learns the task above chance (4 classes)
    with torch.no_grad():
        acc = (model.eval()(x).argmax(1) == y).float().mean()
    assert acc > 0.4


def test_ones_fraction_gradient_is_half_per_weight():
    model = toy_model()
    c = SparsityConstraint(model, ec=0.05, gamma=0.1)
    c.ones_fraction().backward()
    for m in c.layers:
        torch.testing.assert_close(m.weight.grad, torch.full_like(m.weight, 0.5 / c.num_weights))


def test_constraint_bad_input():
    with pytest.raises(ValueError, match="no sparse-binary layers"):
        SparsityConstraint(nn.Linear(2, 2), 0.1, 0.1)
    with pytest.raises(ValueError, match="ec"):
        SparsityConstraint(toy_model(), 0.0, 0.1)
    with pytest.raises(ValueError, match="gamma"):
        SparsityConstraint(toy_model(), 0.1, 1.0)


def test_binarize_keeps_first_and_last_and_copies_weights():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, bias=False), nn.Flatten(), nn.Linear(4, 8),
        nn.Linear(8, 2),
    )
    w = model[1].weight.detach().clone()
    binarize_(model, BinarizeConfig(domain="pm1"))
    assert type(model[0]) is nn.Conv2d and type(model[4]) is nn.Linear
    assert isinstance(model[1], sbnn.SBConv2d) and isinstance(model[3], sbnn.SBLinear)
    assert model[1].bias is None and model[1].domain == "pm1"
    assert torch.equal(model[1].weight, w)
    # filter_fn vetoes, keep_first=False swaps the stem
    model2 = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4, 2))
    binarize_(model2, BinarizeConfig(keep_first=False), filter_fn=lambda n, m: n != "1")
    assert isinstance(model2[0], sbnn.SBConv2d) and type(model2[1]) is nn.Conv2d


def test_binarize_config_rejects_bad_names():
    with pytest.raises(ValueError, match="valid domains"):
        BinarizeConfig(domain="x")
    with pytest.raises(ValueError, match="valid names"):
        BinarizeConfig(act="tanh")


@pytest.mark.parametrize("domain", ["learned", "closed_form", "pm1", "01"])
def test_init_closed_form_hits_target_exactly(domain):
    model = toy_model(domain)
    originals = {id(m): m.weight.detach().clone() for m in SparsityConstraint(model, .1, 0).layers}
    init_closed_form_(model, 0.05)
    for m in SparsityConstraint(model, 0.1, 0).layers:
        n = m.weight.numel()
        assert int(m.bits().sum()) == int(0.05 * n + 0.5)
        alpha, beta, bits = sbnn.closed_form(originals[id(m)], ones=0.05)
        assert torch.equal(m.bits(), bits)
        if domain == "learned":
            a, b = m.alpha_beta()
            torch.testing.assert_close(a, alpha)
            torch.testing.assert_close(b, beta)
    with pytest.raises(ValueError, match="rounds to 0"):
        init_closed_form_(toy_model(), 1e-6)


def test_layer_stats_and_bits():
    model = nn.Sequential(sbnn.SBConv2d(2, 3, 3, bias=False), nn.Flatten(), nn.Linear(3, 1))
    with torch.no_grad():
        w = -torch.ones(3, 2, 3, 3)
        w[0, 0, 1, 1] = 1.0  # one 1-bit: kernel (0, 0) non-zero, filters 1 and 2 empty
        model[0].weight.copy_(w)
    (row,) = sbnn.layer_stats(model)
    assert row["ones"] == 1 and row["n"] == 54
    assert row["zero_kernels"] == pytest.approx(5 / 6)
    assert row["zero_filters"] == pytest.approx(2 / 3)
    assert row["entropy"] == pytest.approx(sbnn.entropy(1 / 54))
    bits = sbnn.model_bits(model)
    assert bits["binary_weights"] == 54 and bits["binary_bits_dense"] == 54
    assert bits["binary_bits_kernel"] == 6 + 9  # 6 presence bits + one stored kernel
    assert bits["full_precision_params"] == 2 + 3 + 1  # tau, phi, classifier weight and bias
    assert bits["total_dense"] == 54 + 32 * 6
