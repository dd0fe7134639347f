import math

import pytest
import torch

import sbnn
from sbnn.method import estimators

X = torch.tensor([-2.0, -1.0, -0.75, -0.25, 0.0, 0.25, 0.75, 1.0, 2.0], dtype=torch.float64)


def pseudo_grad(est, x):
    x = x.clone().requires_grad_(True)
    y = est(x)
    assert torch.equal(y.detach(), sbnn.sign(x.detach()))  # forward is always sign, sign(0)=+1
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    return g


def test_registry_names():
    assert set(estimators.names()) >= {"ste", "clipped_ste", "ede", "approx_sign"}


def test_ste():
    assert torch.equal(pseudo_grad(estimators.get("ste"), X), torch.ones_like(X))


def test_clipped_ste_passes_edge():
    expected = (X.abs() <= 1).double()
    assert torch.equal(pseudo_grad(estimators.get("clipped_ste"), X), expected)


def test_approx_sign_formula():
    expected = torch.where(X.abs() < 1, torch.where(X < 0, 2 + 2 * X, 2 - 2 * X), 0.0)
    torch.testing.assert_close(pseudo_grad(estimators.get("approx_sign"), X), expected)
    assert pseudo_grad(estimators.get("approx_sign"), torch.tensor([0.0], dtype=torch.float64))[
        0
    ] == pytest.approx(2.0)


@pytest.mark.parametrize("epoch,epochs", [(0, 10), (3, 10), (5, 10), (9, 10)])
def test_ede_follows_schedule(epoch, epochs):
    ede = estimators.get("ede")
    ede.set_progress(epoch, epochs)
    t = 10 ** (math.log10(0.1) + 2 * epoch / epochs)
    k = max(1 / t, 1)
    assert float(ede.t) == pytest.approx(t, rel=1e-6)
    assert float(ede.k) == pytest.approx(k, rel=1e-6)
    expected = k * t * (1 - torch.tanh(t * X) ** 2)
    torch.testing.assert_close(pseudo_grad(ede, X), expected, rtol=1e-5, atol=1e-7)


def test_ede_settable_kt_and_model_progress():
    m = torch.nn.Sequential(sbnn.SBConv2d(2, 2, 3, weight_estimator="ede", act="ede"))
    assert estimators.set_progress(m, 10, 10) == 2
    assert float(m[0].act.t) == pytest.approx(10.0)
    assert float(m[0].weight_estimator.k) == pytest.approx(1.0)
    ede = estimators.EDE()
    ede.set_kt(2.0, 3.0)
    torch.testing.assert_close(pseudo_grad(ede, X), 6 * (1 - torch.tanh(3 * X) ** 2))
    # (k, t) are buffers, so a checkpoint carries them
    assert set(dict(ede.named_buffers())) == {"k", "t"}


def test_smooth_part_gradcheck():
    # the pseudo-gradients are smooth functions: check them against autograd of their formula
    x = torch.linspace(-0.9, 0.9, 7, dtype=torch.float64, requires_grad=True)
    ede = estimators.EDE(k=1.5, t=2.0)
    torch.autograd.gradcheck(lambda v: ede.grad(v), (x,))


def test_get_accepts_instance_callable_none():
    ede = estimators.EDE()
    assert estimators.get(ede) is ede
    assert estimators.get(None) is None
    wrapped = estimators.get(torch.tanh)
    assert isinstance(wrapped, estimators.Estimator)
    assert estimators.get("ste") is not estimators.get("ste")  # a new instance each time


def test_get_rejects_bad_names():
    with pytest.raises(ValueError, match="valid names: .*approx_sign.*ede"):
        estimators.get("sgn")
    with pytest.raises(TypeError, match="estimator must be"):
        estimators.get(3)
