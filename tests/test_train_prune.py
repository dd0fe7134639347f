"""Pruning as a `sbnn train` option: masks hold through training, checkpoints and resume."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import sbnn
import sbnn.pipeline.train as strain
from sbnn.pipeline.config import ConfigError, load_config
from sbnn.pipeline.data import write_synthetic_idx
from sbnn.pipeline.runs import load_model


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return str(write_synthetic_idx(tmp_path_factory.mktemp("fmnist"), n_train=256, n_test=128))


def cfg_for(root, *extra):
    return load_config(None, [
        f"data.root={root}", "data.batch_size=64", "data.eval_batch_size=128",
        "model.kwargs={width: 8}", "epochs=2", "progress=false", "device=cpu", "optim.lr=0.01",
        "prune.kernels=0.6", *extra])


def test_kernel_removal_holds_through_training_and_loading(toy_root, tmp_path):
    out = tmp_path / "run"
    report = strain.train(cfg_for(toy_root), out=out)
    for row in report["layers"]:
        assert row["zero_kernels"] >= 0.6 - 1e-9, row
    model = load_model(out)
    for row in sbnn.layer_stats(model):
        assert row["zero_kernels"] >= 0.6 - 1e-9
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["prune_masks"]  # the masks travel with the checkpoint


def test_resume_with_masks_equals_uninterrupted(toy_root, tmp_path):
    cfg = cfg_for(toy_root)
    strain.Trainer(cfg, out=tmp_path / "a").fit()
    strain.Trainer(cfg, out=tmp_path / "b", stop_after=1).fit()
    strain.Trainer(replace(cfg, out=None), out=tmp_path / "b", resume=tmp_path / "b").fit()
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bad_prune_option_is_a_config_error(toy_root):
    with pytest.raises(ConfigError, match=r"prune.kernels must be a share in \[0, 1\)"):
        cfg_for(toy_root, "prune.kernels=1.5")


def test_per_channel_levels_load_through_state_dict():
    layer = sbnn.SBConv2d(2, 3, 3)
    state = layer.state_dict()
    state["tau"] = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1)
    state["phi"] = torch.zeros(3, 1, 1, 1)
    fresh = sbnn.SBConv2d(2, 3, 3)
    fresh.load_state_dict(state)
    assert fresh.tau.shape == (3, 1, 1, 1) and float(fresh.tau[2]) == 3.0
    a, b = fresh.alpha_beta()
    assert a.shape == (3, 1, 1, 1)
