import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sbnn
from sbnn import DOMAINS, SBConv2d, SBLinear


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
    flat = w.reshape(w.shape[0], -1)
    view = (-1,) + (1,) * (w.dim() - 1)
    if layer.domain == "pm1":
        return flat.abs().mean(1).view(view) * s
    fb = b.reshape(w.shape[0], -1)
    level = torch.where(
        fb.sum(1) > 0, (flat * fb).sum(1) / fb.sum(1).clamp(min=1), flat.abs().mean(1)
    )
    return level.view(view) * b


def test_signatures_match_torch():
    for ours, theirs in ((SBConv2d, nn.Conv2d), (SBLinear, nn.Linear)):
        p_ours = list(inspect.signature(ours.__init__).parameters.values())
        p_theirs = list(inspect.signature(theirs.__init__).parameters.values())
        assert [(p.name, p.default, p.kind) for p in p_ours[: len(p_theirs)]] == [
            (p.name, p.default, p.kind) for p in p_theirs
        ]
        extra = {p.name for p in p_ours[len(p_theirs) :]}
        assert extra == {"domain", "weight_estimator", "act"}
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in p_ours[len(p_theirs) :])


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("act", ["approx_sign", None])
def test_conv_equals_float_conv_on_quantised_inputs(domain, stride, padding, bias, act):
    torch.manual_seed(0)
    layer = SBConv2d(5, 7, 3, stride=stride, padding=padding, bias=bias, domain=domain, act=act)
    if domain == "learned":
        with torch.no_grad():
            layer.tau.fill_(0.7)
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
