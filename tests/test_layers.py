import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sbnn
from sbnn import DOMAINS, SBConv1d, SBConv2d, SBLinear


def reference_weight(layer):
    """The quantised weight computed directly from the domain's definition."""
    w = layer.weight.detach()
    b = (w >= 0).to(w.dtype)
    s = 2 * b - 1
    if layer.domain == "learned":
        return layer.tau.detach() * s + layer.phi.detach()
    if layer.domain == "closed_form":
        beta = w[b.bool()].mean() if b.any() else w.mean()
        alpha = w[~b.bool()].mean() if (~b.bool()).any() else w.mean()
        return alpha + (beta - alpha) * b
    if layer.domain == "pm1":  # tied phi = 0
        return layer.tau.detach() * s
    if layer.domain == "pm1c":  # per output channel mean |w| times the sign
        return w.abs().reshape(w.shape[0], -1).mean(1).view((-1,) + (1,) * (w.dim() - 1)) * s
    if layer.domain == "abr":  # alpha = r (beta - alpha), beta - alpha = 2 tau
        step = 2 * layer.tau.detach()
        return float(layer.r) * step + step * b
    return 2 * layer.tau.detach() * b  # 01: tied phi = tau


def test_signatures_match_torch():
    for ours, theirs in ((SBConv2d, nn.Conv2d), (SBConv1d, nn.Conv1d), (SBLinear, nn.Linear)):
        p_ours = list(inspect.signature(ours.__init__).parameters.values())
        p_theirs = list(inspect.signature(theirs.__init__).parameters.values())
        assert [(p.name, p.default, p.kind) for p in p_ours[: len(p_theirs)]] == [
            (p.name, p.default, p.kind) for p in p_theirs
        ]
        extra = {p.name for p in p_ours[len(p_theirs) :]}
        assert extra == {"domain", "weight_estimator", "act"}
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in p_ours[len(p_theirs) :])


# state_dict keys and extra entries per domain, pinned as they were before SBConv1d/SBConv2d
# shared their body (_SBConvNd): a refactor must not rename, add or drop one
_SB_KEYS = {"learned": ["tau", "phi"], "closed_form": [], "pm1": ["tau"], "01": ["tau"],
            "abr": ["tau", "r"], "pm1c": []}


@pytest.mark.parametrize("cls,x_shape,k,st,pad", [
    (SBConv1d, (2, 6, 9), "(3,)", "(2,)", "(1,)"),
    (SBConv2d, (2, 6, 9, 7), "(3, 3)", "(2, 2)", "(1, 1)"),
])
@pytest.mark.parametrize("domain", DOMAINS)
def test_conv_state_dict_and_repr_are_pinned(cls, x_shape, k, st, pad, domain):
    torch.manual_seed(0)
    layer = cls(6, 4, 3, stride=2, padding=1, groups=2, domain=domain)
    sd = layer.state_dict()
    assert list(sd) == ["weight", "bias"] + _SB_KEYS[domain]
    assert sd["weight"].shape == (4, 3) + (3,) * (len(x_shape) - 2)
    assert all(sd[key].shape == () for key in _SB_KEYS[domain])
    # the saved state loads into a fresh layer and gives the same output
    x = torch.randn(x_shape)
    fresh = cls(6, 4, 3, stride=2, padding=1, groups=2, domain=domain)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh(x), layer(x))
    assert repr(layer) == (
        f"{cls.__name__}(\n  6, 4, kernel_size={k}, stride={st}, padding={pad}, groups=2, "
        f"domain={domain}, weight_estimator=ste, act=approx_sign\n"
        "  (weight_estimator): STE(ste)\n  (act): ApproxSign(approx_sign)\n)"
    )


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("act", ["approx_sign", None])
def test_conv_equals_float_conv_on_quantised_inputs(domain, stride, padding, bias, act):
    torch.manual_seed(0)
    layer = SBConv2d(5, 7, 3, stride=stride, padding=padding, bias=bias, domain=domain, act=act)
    with torch.no_grad():
        if domain in ("learned", "pm1", "01"):
            layer.tau.fill_(0.7)
        if domain == "learned":
            layer.phi.fill_(-0.2)
    x = torch.randn(2, 5, 9, 8)
    xq = x if act is None else sbnn.sign(x)
    expected = F.conv2d(xq, reference_weight(layer), layer.bias, stride, padding)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    a, b = layer.alpha_beta()
    q = sbnn.dequantize(a, b, layer.bits())
    torch.testing.assert_close(q, reference_weight(layer), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_equals_float_linear(domain, bias):
    torch.manual_seed(1)
    layer = SBLinear(6, 4, bias=bias, domain=domain)
    x = torch.randn(3, 6)
    expected = F.linear(sbnn.sign(x), reference_weight(layer), layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_padding_pads_binarised_input_with_zero():
    layer = SBConv2d(1, 1, 3, padding=1, bias=False, domain="learned")
    with torch.no_grad():
        layer.weight.fill_(1.0)  # all bits 1 -> q = tau + phi = 1
    y = layer(-torch.ones(1, 1, 3, 3))
    # corner sees 4 valid taps of -1, centre 9
    assert y[0, 0, 0, 0].item() == -4.0 and y[0, 0, 1, 1].item() == -9.0


@pytest.mark.parametrize("domain", DOMAINS)
def test_gradients_reach_latent_weights_and_levels(domain):
    torch.manual_seed(2)
    layer = SBConv2d(3, 4, 3, padding=1, domain=domain)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    layer(x).square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert x.grad is not None
    if domain == "learned":
        assert layer.tau.grad is not None and layer.phi.grad is not None
    if domain in ("pm1", "01"):
        assert layer.tau.grad is not None and not hasattr(layer, "phi")


def test_tied_domains_are_one_parametrisation():
    """pm1 is learned with phi = 0 and 01 is learned with phi = tau, output for output."""
    torch.manual_seed(3)
    ref = SBConv2d(4, 6, 3, padding=1, domain="learned")
    x = torch.randn(2, 4, 7, 7)
    for domain, phi_of in (("pm1", lambda t: 0.0), ("01", lambda t: t)):
        tied = SBConv2d(4, 6, 3, padding=1, domain=domain)
        with torch.no_grad():
            tied.weight.copy_(ref.weight)
            tied.bias.copy_(ref.bias)
            tied.tau.fill_(0.37)
            ref.tau.fill_(0.37)
            ref.phi.fill_(phi_of(0.37))
        torch.testing.assert_close(tied(x), ref(x), rtol=0, atol=0)
        a, b = tied.alpha_beta()
        assert float(a) == pytest.approx(-0.37 if domain == "pm1" else 0.0)
        assert float(b) == pytest.approx(0.37 if domain == "pm1" else 0.74)


@pytest.mark.parametrize("domain", ["learned", "pm1", "01"])
def test_fit_levels_is_least_squares_under_the_tie(domain):
    torch.manual_seed(4)
    layer = SBConv2d(3, 5, 3, domain=domain)
    w = layer.weight.detach()
    layer.fit_levels_()
    s = torch.where(w >= 0, 1.0, -1.0)
    # brute force over a grid of (tau, phi) satisfying the tie: the fit is no worse than any
    tau, phi = (t.detach() for t in layer.tau_phi())
    best = ((w - (tau * s + phi)) ** 2).sum()
    for dt in torch.linspace(-0.05, 0.05, 11):
        for dp in torch.linspace(-0.05, 0.05, 11):
            t2 = tau + dt
            p2 = {"learned": phi + dp, "pm1": torch.tensor(0.0), "01": t2}[domain]
            assert ((w - (t2 * s + p2)) ** 2).sum() >= best - 1e-6


def test_01_dead_filter_gets_no_task_gradient():
    """A 01 filter with no 1-bit outputs exactly 0; its latent weights get no task gradient
    (BatchNorm would blow it up by 1/sqrt(eps)), live filters still learn."""
    torch.manual_seed(5)
    layer = SBConv2d(3, 4, 3, padding=1, bias=False, domain="01")
    with torch.no_grad():
        layer.weight[1] = -layer.weight[1].abs() - 0.01  # filter 1: every bit 0
    bn = nn.BatchNorm2d(4)
    x = torch.randn(8, 3, 6, 6)
    y = layer(x)
    assert torch.equal(y[:, 1], torch.zeros_like(y[:, 1]))
    (bn(y) * torch.randn(8, 4, 6, 6)).sum().backward()
    g = layer.weight.grad
    assert torch.equal(g[1], torch.zeros_like(g[1]))
    assert all(g[c].abs().sum() > 0 for c in (0, 2, 3))
    # the learned domain keeps the gradient of an all-zero-bit filter (its output is alpha*sum)
    ab = SBConv2d(3, 4, 3, padding=1, domain="learned")
    with torch.no_grad():
        ab.weight.copy_(layer.weight)
    ab(x).square().sum().backward()
    assert ab.weight.grad[1].abs().sum() > 0


@pytest.mark.parametrize("domain", ["pm1", "01"])
def test_old_checkpoint_without_tau_loads_with_its_per_channel_levels(domain):
    torch.manual_seed(6)
    layer = SBConv2d(3, 4, 3, padding=1, domain=domain, act=None)
    w = layer.weight.detach()
    flat = w.reshape(4, -1)
    fb = (flat >= 0).float()
    if domain == "pm1":  # the former definition: {-mean|w_c|, +mean|w_c|}
        old_q = flat.abs().mean(1).view(-1, 1, 1, 1) * torch.where(w >= 0, 1.0, -1.0)
    else:  # {0, mean of w_c over its 1-bits}
        old_q = ((flat * fb).sum(1) / fb.sum(1)).view(-1, 1, 1, 1) * (w >= 0).float()
    sd = {"weight": w.clone(), "bias": layer.bias.detach().clone()}
    fresh = SBConv2d(3, 4, 3, padding=1, domain=domain, act=None)
    fresh.load_state_dict(sd)
    assert fresh.tau.shape == (4, 1, 1, 1)
    torch.testing.assert_close(fresh.quantized_weight().detach(), old_q)


def test_bad_domain_and_estimator():
    with pytest.raises(ValueError, match="valid domains: learned, closed_form, pm1, 01"):
        SBConv2d(2, 2, 3, domain="ternary")
    with pytest.raises(ValueError, match="valid names"):
        SBLinear(2, 2, act="relu")
    with pytest.raises(ValueError, match="cannot be None"):
        SBLinear(2, 2, weight_estimator=None)


def test_rsign_and_rprelu():
    rs = sbnn.RSign(3)
    with torch.no_grad():
        rs.bias.copy_(torch.tensor([0.5, 0.0, -0.5]))
    x = torch.tensor([-0.5, 0.0, 0.5]).view(1, 3, 1, 1)
    assert rs(x).flatten().tolist() == [1.0, 1.0, 1.0]
    rp = sbnn.RPReLU(2)
    with torch.no_grad():
        rp.shift_in.copy_(torch.tensor([1.0, 0.0]))
        rp.shift_out.copy_(torch.tensor([0.5, -1.0]))
    x = torch.tensor([[0.0, -2.0], [3.0, 2.0]])
    expected = torch.tensor([[-0.25 + 0.5, -0.5 - 1.0], [2.0 + 0.5, 2.0 - 1.0]])
    torch.testing.assert_close(rp(x), expected)
    lb = sbnn.LearnableBias(2)
    assert torch.equal(lb(x), x)
