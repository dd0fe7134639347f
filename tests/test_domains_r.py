"""docs/DOMAINS.md checked numerically: conv(x, q) = (beta - alpha) [conv(x, b) + r S(x)],
BatchNorm absorbing beta - alpha, the domains as r, and the least-squares r = -p (+ a mean term)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sbnn.method.layers import SBConv2d, set_fixed_r_
from sbnn.verbs.binarize import init_closed_form_


def _g(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0), (1, 2)])
def test_identity_is_exact(stride, padding):
    g = _g(stride * 10 + padding)
    x = torch.randn(3, 5, 9, 9, generator=g, dtype=torch.float64).sign()  # binarised input
    b = (torch.rand(7, 5, 3, 3, generator=g) < 0.1).double()
    alpha, beta = -0.013, 0.41
    q = alpha + (beta - alpha) * b
    r = alpha / (beta - alpha)
    lhs = F.conv2d(x, q, stride=stride, padding=padding)
    s = F.conv2d(x, torch.ones_like(q[:1]), stride=stride, padding=padding)  # shared map
    rhs = (beta - alpha) * (F.conv2d(x, b, stride=stride, padding=padding) + r * s)
    assert torch.allclose(lhs, rhs, atol=1e-12, rtol=0)


def test_batchnorm_absorbs_the_scale_so_only_r_matters():
    g = _g(1)
    x = torch.randn(16, 4, 8, 8, generator=g).sign()
    b = (torch.rand(6, 4, 3, 3, generator=g) < 0.2).float()
    bn = nn.BatchNorm2d(6, eps=1e-12).train()
    outs = []
    for scale in (0.01, 1.0, 37.0):  # the same r = -0.2 at three scales beta - alpha
        alpha = -0.2 * scale
        outs.append(bn(F.conv2d(x, alpha + scale * b, padding=1)))
    assert torch.allclose(outs[0], outs[1], atol=1e-4) and torch.allclose(outs[1], outs[2],
                                                                           atol=1e-4)
    other = bn(F.conv2d(x, -0.5 + 1.0 * b, padding=1))  # r = -1/2 (pm1): a different function
    assert not torch.allclose(other, outs[1], atol=1e-2)


def test_the_domains_are_values_of_r():
    w = torch.randn(6, 4, 3, 3, generator=_g(2))
    for domain, r in (("01", 0.0), ("pm1", -0.5), ("abr", -0.1)):
        m = SBConv2d(4, 6, 3, domain=domain)
        set_fixed_r_(m, -0.1)
        m.fit_levels_(w, w > 0.8)
        a, b = m.alpha_beta()
        assert float(a / (b - a)) == pytest.approx(r, abs=1e-6), domain


@pytest.mark.parametrize("p", [0.25, 0.1, 0.05, 0.01])
def test_least_squares_r_is_minus_p_on_skewed_weights(p):
    g = _g(3)
    n = 40_000
    k = int(p * n + 0.5)
    # a skewed (log-normal) distribution, centred: mean exactly 0 -> r = -p exactly
    w = torch.exp(torch.randn(n, generator=g, dtype=torch.float64))
    w = w - w.mean()
    top = torch.zeros(n, dtype=torch.bool)
    top[torch.topk(w, k).indices] = True
    m1, m0 = w[top].mean(), w[~top].mean()
    r = float(m0 / (m1 - m0))
    assert r == pytest.approx(-k / n, abs=1e-9)
    # a shifted mean adds (1 - p) mu / (m1 - mu), as derived; small for a small shift
    mu = 0.02
    ws = w + mu
    m1, m0 = ws[top].mean(), ws[~top].mean()
    r = float(m0 / (m1 - m0))
    pp = k / n
    assert r == pytest.approx(-pp + (1 - pp) * mu / float(m1 - mu), abs=1e-9)
    assert abs(r + pp) < 0.05 * max(pp, 0.1)


def test_closed_form_start_of_a_real_layer_gives_r_near_minus_p():
    for p in (0.25, 0.05):
        torch.manual_seed(4)
        layer = nn.Sequential(SBConv2d(64, 128, 3, domain="learned"))  # Kaiming-uniform init
        init_closed_form_(layer, p)
        a, b = layer[0].alpha_beta()
        assert float(a / (b - a)) == pytest.approx(-p, abs=0.01 * p + 1e-3)
