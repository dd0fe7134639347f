"""The binary layers' levels step relative to their size (``optim.level_lr``, issue 21).

From the closed-form start tau is ~0.03, and Adam moves a parameter by about lr a step whatever
its size: the ratio r = alpha / (beta - alpha), all that matters in front of a BatchNorm, then
moved by lr / |tau| a step and collapsed the ``ab`` arm at EC 0.01 (docs/study_domains/README.md).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sbnn.method.layers import SBConv2d
from sbnn.pipeline.config import Config, ConfigError, load_config, validate
from sbnn.pipeline.train import level_scales, make_optimizer
from sbnn.verbs.binarize import init_closed_form_


def _net(domain: str = "learned") -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(SBConv2d(16, 32, 3, padding=1, bias=False, domain=domain),
                         nn.BatchNorm2d(32), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10))


def _cfg(*sets: str) -> Config:
    return validate(load_config(None, list(sets)))


def _r(layer) -> float:
    a, b = layer.alpha_beta()
    return float(a / (b - a))


def _one_step(net: nn.Module, cfg: Config) -> None:
    opt = make_optimizer(cfg, net)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 16, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()


def test_a_closed_form_start_moves_r_by_about_lr_a_step():
    net = _net()
    init_closed_form_(net, 0.01)  # 4608 weights, 46 ones: tau ~ 0.04, r ~ -0.01
    layer = net[0]
    tau0, phi0, r0 = float(layer.tau), float(layer.phi), _r(layer)
    assert 0.01 < tau0 < 0.1
    lr = 1e-3
    _one_step(net, _cfg())
    # Adam's first step moves each parameter by its group's lr: here lr * |tau0|
    assert abs(float(layer.tau) - tau0) == pytest.approx(lr * tau0, rel=1e-3)
    assert abs(float(layer.phi) - phi0) == pytest.approx(lr * tau0, rel=1e-3)
    # so r = alpha / (beta - alpha) moves by at most about lr (before: lr / tau0, ~0.03)
    assert abs(_r(layer) - r0) < 2 * lr


def test_absolute_steps_every_parameter_by_lr():
    net = _net()
    init_closed_form_(net, 0.01)
    layer = net[0]
    tau0, r0 = float(layer.tau), _r(layer)
    _one_step(net, _cfg("optim.level_lr=absolute"))
    assert abs(float(layer.tau) - tau0) == pytest.approx(1e-3, rel=1e-3)
    assert abs(_r(layer) - r0) > 5e-3  # the old behaviour: r jumps by ~lr / tau0
    assert len(make_optimizer(_cfg("optim.level_lr=absolute"), net).param_groups) == 1


def test_groups_and_their_learning_rates():
    net = _net()
    init_closed_form_(net, 0.05)
    tau = float(net[0].tau)
    opt = make_optimizer(_cfg(), net)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(1e-3),
                                                   pytest.approx(1e-3 * tau)]
    assert opt.param_groups[1]["params"] == [net[0].tau, net[0].phi]
    n_all = sum(1 for p in net.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in opt.param_groups) == n_all
    sgd = make_optimizer(_cfg("optim.name=sgd", "optim.lr=0.1"), net)
    assert sgd.param_groups[1]["lr"] == pytest.approx(0.1 * tau ** 2)
    # the authors' unit start (tau = 1) keeps lr: nothing changes for it
    fresh = _net()
    assert level_scales(fresh) == [([fresh[0].tau, fresh[0].phi], 1.0)]
    assert make_optimizer(_cfg(), fresh).param_groups[1]["lr"] == pytest.approx(1e-3)


def test_frozen_levels_and_float_models_keep_one_group():
    net = _net("01")
    net[0].tau.requires_grad_(False)  # exact mode freezes the scale of 01 / pm1 / abr
    assert level_scales(net) == []
    assert len(make_optimizer(_cfg(), net).param_groups) == 1
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    assert len(make_optimizer(_cfg(), net).param_groups) == 1
    net = _net("pm1")
    net[0].tau.data.fill_(0.0)  # a degenerate size falls back to lr
    assert level_scales(net)[0][1] == 1.0


def test_config_key():
    assert Config().optim.level_lr == "relative"
    with pytest.raises(ConfigError, match="optim.level_lr"):
        _cfg("optim.level_lr=fast")


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    from sbnn.pipeline.data import write_synthetic_idx

    return str(write_synthetic_idx(tmp_path_factory.mktemp("fmnist"), n_train=64, n_test=32))


def test_a_run_from_before_the_option_resumes_with_absolute_steps(toy_root, tmp_path):
    from sbnn.pipeline.runs import load_checkpoint
    from sbnn.pipeline.train import Trainer

    sets = [f"data.root={toy_root}", "data.batch_size=32", "model.kwargs={width: 8}",
            "epochs=2", "progress=false", "device=cpu", "sparsity.ec=0.1"]
    cfg = load_config(None, sets + ["optim.level_lr=absolute"])
    run = tmp_path / "run"
    Trainer(cfg, out=run, stop_after=1).fit()
    ckpt = load_checkpoint(run)
    assert len(ckpt["optimizer"]["param_groups"]) == 1
    del ckpt["config"]["optim"]["level_lr"]  # as written before optim.level_lr existed
    torch.save(ckpt, run / "last.pt")
    # the sweep resumes with its own (new-default) config: the run keeps its absolute steps
    t = Trainer(load_config(None, sets), out=run, resume=run)
    assert t.cfg.optim.level_lr == "absolute" and t.start_epoch == 1
    assert t.fit()["epochs"] == 2
    fresh = Trainer(load_config(None, sets), out=tmp_path / "new")
    assert fresh.cfg.optim.level_lr == "relative"
    assert len(fresh.optimizer.param_groups) == 1 + 4  # one group per binary layer's levels
