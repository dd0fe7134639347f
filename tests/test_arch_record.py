"""A run's config records the model's architecture defaults, so its checkpoint stays loadable."""

from __future__ import annotations

import yaml

import sbnn.pipeline.train as strain
from sbnn import models
from sbnn.pipeline.config import load_config
from sbnn.pipeline.data import write_synthetic_idx
from sbnn.pipeline.runs import load_model


def test_architecture_kwargs_defaults_and_overrides():
    m = models.create("resnet18_irnet", num_classes=10)
    assert models.architecture_kwargs(m) == {"layers": [2, 2, 2, 2], "width": 64}
    small = models.create("fmnist_cnn", width=8)
    assert models.architecture_kwargs(small, {"width": 8}) == {
        "width": 8, "last_stride": 2, "extra": 1, "head_pool": 2}


def test_run_config_records_default_width_and_reloads_when_default_changes(tmp_path,
                                                                         monkeypatch):
    root = write_synthetic_idx(tmp_path / "data", n_train=128, n_test=64)
    cfg = load_config(None, [f"data.root={root}", "epochs=1", "progress=false", "device=cpu",
                             "data.batch_size=64"])
    assert cfg.model.kwargs == {}
    out = tmp_path / "run"
    strain.train(cfg, out=out)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["kwargs"] == {"width": 32, "last_stride": 2, "extra": 1, "head_pool": 2}
    # a later release changes the default width: the run still loads with its own width
    from sbnn.models import fmnist

    orig = fmnist.FmnistCNN.__init__
    defaults = list(orig.__defaults__)
    defaults[2] = 48  # (num_classes, in_chans, width, ...)
    monkeypatch.setattr(orig, "__defaults__", tuple(defaults))
    model = load_model(out)
    assert model.block1[0].out_channels == 32
