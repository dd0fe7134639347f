"""Every registered model: forward, backward, one optimiser step, in every domain."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sbnn import models
from sbnn.method.constraint import sb_layers
from sbnn.method.layers import DOMAINS, SBLayer

SMALL = {"width": 8}  # narrow versions keep the suite fast; the layout is the same


def _input(name):
    if name.startswith("fmnist"):
        return torch.randn(4, 1, 28, 28), 1
    if name.startswith("fc_autoencoder"):  # features in, their reconstruction out
        return torch.randn(4, 640), 1
    return torch.randn(4, 3, 32, 32), 3


def _is_autoencoder(name):
    return name.startswith("fc_autoencoder")


def _cases():
    for name in models.list_models():
        if name.endswith("_fp"):
            yield name, None
        else:
            for domain in DOMAINS:
                yield name, domain


@pytest.mark.parametrize("name,domain", list(_cases()))
def test_forward_backward_step(name, domain):
    torch.manual_seed(0)
    x, cin = _input(name)
    kw = {} if domain is None else {"domain": domain}
    model = models.create(name, num_classes=7, in_chans=cin, **kw, **SMALL)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    out = model(x)
    if _is_autoencoder(name):
        assert out.shape == x.shape
        loss = nn.functional.mse_loss(out, x)
    else:
        assert out.shape == (4, 7)
        loss = nn.functional.cross_entropy(out, torch.arange(4) % 7)
    loss.backward()
    latent = [m.weight for _, m in sb_layers(model)]
    assert all(w.grad is not None and torch.isfinite(w.grad).all() for w in latent)
    before = [w.detach().clone() for w in latent]
    opt.step()
    if _is_autoencoder(name) and domain in ("01", "abr"):
        # eight binary linears in a row in these domains: the latent weights' gradient is
        # ~1e-9 at the last and ~1e-18 at the first at this start (the convs' is ~1e-4), too
        # small for one Adam step to move float32 weights; only the gradients are checked
        latent, before = [], []
    assert all(not torch.equal(b, w) for b, w in zip(before, latent, strict=True))
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name", models.list_models("*_fp"))
def test_fp_twin_has_the_same_layout(name):
    twin = name[: -len("_fp")]
    fp, sb = models.create(name, **SMALL), models.create(twin, **SMALL)
    assert not sb_layers(fp) and sb_layers(sb)

    def convs(m):
        return [(c.in_channels, c.out_channels, c.kernel_size, c.stride)
                for c in m.modules() if isinstance(c, nn.Conv2d)]

    def linears(m):
        return [(c.in_features, c.out_features) for c in m.modules() if isinstance(c, nn.Linear)]

    assert convs(fp) == convs(sb) and linears(fp) == linears(sb)


@pytest.mark.parametrize("name", [n for n in models.list_models() if not n.endswith("_fp")])
def test_first_conv_and_classifier_are_full_precision(name):
    m = models.create(name, **SMALL)
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    linears = [c for c in m.modules() if isinstance(c, nn.Linear)]
    if _is_autoencoder(name):  # no conv: the first and the last linear stay float
        assert not isinstance(linears[0], SBLayer) and not isinstance(linears[-1], SBLayer)
        assert all(isinstance(c, SBLayer) for c in linears[1:-1])
        return
    assert not isinstance(convs[0], SBLayer) and not isinstance(linears[-1], SBLayer)
    # every binary conv is 3x3; 1x1 shortcuts stay full precision
    assert all(c.kernel_size == (3, 3) for c in convs if isinstance(c, SBLayer))
    assert all(not isinstance(c, SBLayer) for c in convs if c.kernel_size == (1, 1))


def test_paper_layouts():
    r = models.create("resnet18_irnet", num_classes=10)
    assert len(sb_layers(r)) == 16 and any(isinstance(m, nn.BatchNorm1d) for m in r.modules())
    a = models.create("reactnet18", num_classes=100)
    assert len(sb_layers(a)) == 16 and a.fc.out_features == 100
    from sbnn.method.layers import RPReLU, RSign

    assert sum(isinstance(m, RSign) for m in a.modules()) == 16
    assert sum(isinstance(m, RPReLU) for m in a.modules()) == 16


def test_registry_errors_and_register():
    with pytest.raises(ValueError, match="fmnist_cnn"):
        models.create("no_such_model")
    with pytest.raises(ValueError, match="already registered"):
        models.register("fmnist_cnn")(lambda **kw: nn.Identity())
    assert models.list_models("*_fp") == sorted(n for n in models.list_models()
                                                if n.endswith("_fp"))
