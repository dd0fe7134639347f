"""The start arms (sparsity.init / sparsity.levels) and the per-epoch cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sbnn
from sbnn.method.constraint import SparsityConstraint
from sbnn.pipeline.config import load_config
from sbnn.pipeline.train import make_scheduler
from sbnn.verbs.binarize import init_authors_, init_closed_form_


def _model(domain):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), sbnn.SBConv2d(4, 8, 3, domain=domain),
                         nn.BatchNorm2d(8), sbnn.SBConv2d(8, 8, 3, domain=domain))


@pytest.mark.parametrize("domain", ["learned", "pm1", "01"])
def test_authors_init_starts_at_all_ones(domain):
    m = _model(domain)
    init_authors_(m)
    for layer in SparsityConstraint(m, 0.05, 0.07).layers:
        w = layer.weight
        assert bool((w >= 0).all()) and float(w.max()) < 1e-3
        assert float(layer.tau) == 1.0
    assert float(SparsityConstraint(m, 0.05, 0.07).ones_fraction()) == 1.0


@pytest.mark.parametrize("domain", ["learned", "pm1", "01"])
def test_closed_form_split_with_unit_or_fitted_levels(domain):
    fit, unit = _model(domain), _model(domain)
    originals = [layer.weight.detach().clone() for layer in SparsityConstraint(fit, .1, 0).layers]
    init_closed_form_(fit, 0.1, levels="fit")
    init_closed_form_(unit, 0.1, levels="unit")
    for lf, lu, w0 in zip(SparsityConstraint(fit, .1, 0).layers,
                          SparsityConstraint(unit, .1, 0).layers, originals, strict=True):
        assert torch.equal(lf.bits(), lu.bits())  # the arms differ in the levels only
        assert float(lu.tau) == 1.0 and (domain != "learned" or float(lu.phi) == 0.0)
        ref = sbnn.SBConv2d(*w0.shape[:2][::-1], 3, domain=domain)
        ref.fit_levels_(w0, lf.bits())
        torch.testing.assert_close(lf.tau.detach(), ref.tau.detach())
        assert float(lf.tau) != 1.0
    with pytest.raises(ValueError, match="valid: fit, unit"):
        init_closed_form_(_model(domain), 0.1, levels="ones")


def test_cosine_stepped_per_epoch_matches_cosine_annealing():
    cfg = load_config(None, ["optim.schedule_step=epoch", "epochs=5"])
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-3)
    sched = make_scheduler(cfg, opt, steps_per_epoch=7)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()  # once per epoch
    want = [1e-3 * 0.5 * (1 + math.cos(math.pi * e / 5)) for e in range(5)]
    assert lrs == pytest.approx(want)
    with pytest.raises(ValueError, match="optim.schedule_step: 'batch'.*step, epoch"):
        load_config(None, ["optim.schedule_step=batch"])  # refused up front


def test_trainer_authors_init_epoch_schedule_and_reported_checkpoint(tmp_path):
    import json

    from sbnn.pipeline.data import write_synthetic_idx
    from sbnn.pipeline.train import Trainer

    root = write_synthetic_idx(tmp_path / "data", n_train=128, n_test=64)
    cfg = load_config(None, [f"data.root={root}", "data.batch_size=32", "model.kwargs={width: 4}",
                             "epochs=2", "progress=false", "device=cpu", "sparsity.init=authors",
                             "sparsity.levels=unit", "optim.schedule_step=epoch"])
    tr = Trainer(cfg, out=tmp_path / "run")
    assert float(tr.constraint.ones_fraction()) == 1.0  # rand * 0.001: every bit 1
    report = tr.fit()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # lr logged after each epoch's scheduler step: cos(pi * 1/2) -> 0.5e-3, then 0
    assert [r["lr"] for r in rows] == pytest.approx([0.5e-3, 0.0])
    assert report["reported_checkpoint"] == "last"
    assert report["best_epoch"] in (1, 2)
    accs = [r["test_accuracy"] for r in rows]
    assert report["best_test_accuracy"] == max(accs)
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "last.pt").is_file()
    with pytest.raises(ValueError, match="sparsity.levels: 'ones'.*fit, unit"):
        load_config(None, [f"data.root={root}", "sparsity.levels=ones", "device=cpu"])
    assert not (tmp_path / "bad").exists()
