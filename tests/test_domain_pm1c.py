"""The ``pm1c`` domain (the penalty grid's fifth arm): +-1 bits scaled per output channel by
mean|w|, recomputed at each forward without gradient (ReActNet / XNOR-Net style)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import sbnn
from sbnn.method.layers import DOMAINS, SBConv2d, SBLinear
from sbnn.pipeline.sweep import DOMAIN_ALIASES


def test_pm1c_forward_is_per_channel_mean_abs_times_sign():
    torch.manual_seed(0)
    layer = SBConv2d(3, 4, 3, padding=1, domain="pm1c", act=None)
    w = layer.weight.detach()
    m = w.abs().mean(dim=(1, 2, 3))
    q = torch.where(w >= 0, 1.0, -1.0) * m.view(-1, 1, 1, 1)
    x = torch.randn(2, 3, 6, 6)
    assert torch.allclose(layer(x), F.conv2d(x, q, layer.bias, padding=1), atol=1e-6)
    a, b = layer.alpha_beta()
    assert a.shape == (4,) and torch.allclose(b, m) and torch.allclose(a, -m)
    # no learnable level; the scale carries no gradient, the sign an STE gradient
    assert not hasattr(layer, "tau")
    layer(x).sum().backward()
    assert layer.weight.grad is not None and bool(layer.weight.grad.abs().sum() > 0)
    lin = SBLinear(5, 3, domain="pm1c", act=None)
    a, b = lin.alpha_beta()
    assert a.shape == (3,) and torch.allclose(b, lin.weight.detach().abs().mean(1))


def test_pm1c_is_a_domain_and_a_sweep_arm_and_exports(tmp_path):
    from sbnn import models
    from sbnn.deploy.export import export
    from sbnn.engine import load

    assert "pm1c" in DOMAINS and DOMAIN_ALIASES["pm1c"] == "pm1c"
    torch.manual_seed(0)
    model = models.create("fmnist_cnn_flat", width=8, domain="pm1c").eval()
    # BatchNorm with non-trivial statistics, so the folding of per-channel levels is exercised
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 1, 28, 28)
    export(model, tmp_path / "m.sbnn", (1, 28, 28))
    with torch.no_grad():
        ref = model(x).numpy()
    got = load(tmp_path / "m.sbnn", num_threads=1)(x.numpy())
    assert abs(got - ref).max() <= 1e-3 * max(1.0, abs(ref).max())
    rows = sbnn.layer_stats(model)
    assert all(r["domain"] == "pm1c" and isinstance(r["alpha"], list) for r in rows)


def test_sweep_level_columns_take_per_channel_levels():
    from sbnn.pipeline.sweep import _level_columns

    cols = _level_columns({"layers": [{"alpha": [-1.0, -2.0], "beta": [1.0, 2.0]},
                                      {"alpha": -0.5, "beta": 1.5},
                                      {"alpha": [0.0], "beta": [0.0]}]})
    assert cols["alpha_over_beta"] == (-1.0 + -0.5 / 1.5) / 2
    assert cols["alpha_beta_per_layer"] == "-1.5/1.5 -0.5/1.5 0/0"
