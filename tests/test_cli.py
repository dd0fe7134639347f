"""The `sbnn` command line and the YAML config (sbnn.cli, sbnn.pipeline.config)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sbnn import cli
from sbnn.pipeline.config import (
    Config,
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    to_dict,
)
from sbnn.pipeline.data import write_synthetic_idx

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for sub in ("train", "evaluate", "plot"):
        assert sub in out


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_default_config_roundtrips_through_yaml(tmp_path, capsys):
    assert cli.main(["train", "--print-config"]) == 0
    d = yaml.safe_load(capsys.readouterr().out)
    assert from_dict(Config, d) == Config()
    assert d["data"]["name"] == "fashion_mnist" and d["sparsity"]["ec"] == 0.05


def test_overrides_are_type_checked():
    cfg = apply_overrides(Config(), ["optim.lr=1e-2", "epochs=7", "data.root=/x",
                                     "model.act=null", "model.kwargs={width: 16}",
                                     "sparsity.ec=1"])
    assert cfg.optim.lr == 0.01 and cfg.epochs == 7 and cfg.data.root == "/x"
    assert cfg.model.act is None and cfg.model.kwargs == {"width": 16}
    assert isinstance(cfg.sparsity.ec, float)
    with pytest.raises(ConfigError, match="expected int"):
        apply_overrides(Config(), ["epochs=two"])
    with pytest.raises(ConfigError, match="valid"):
        apply_overrides(Config(), ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(Config(), ["epochs"])
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(Config, {"data": {"nme": "mnist"}})


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert to_dict(cfg)["model"]["name"]


def test_paper_recipes_match_paper():
    c10 = load_config(CONFIGS / "cifar10_resnet18_ec005.yaml")
    assert (c10.epochs, c10.data.batch_size, c10.optim.lr, c10.data.mixup_alpha) == (
        500, 512, 1e-3, 1.0)
    assert (c10.sparsity.ec, c10.sparsity.gamma, c10.model.act) == (0.05, 0.07, "ede")
    c100 = load_config(CONFIGS / "cifar100_reactnet18_ec001.yaml")
    assert (c100.epochs, c100.data.rotation, c100.sparsity.gamma) == (300, 15.0, 0.07)


def test_bad_override_and_missing_data_exit_2(tmp_path, capsys):
    assert cli.main(["train", "--set", "nope=1", "--out", str(tmp_path / "a")]) == 2
    assert "unknown key" in capsys.readouterr().err
    missing = tmp_path / "no_data"
    assert cli.main(["train", "--set", f"data.root={missing}", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "dataset-fashion-mnist" in err


def test_train_evaluate_plot(tmp_path, capsys):
    root = write_synthetic_idx(tmp_path / "data", n_train=256, n_test=128)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"root": str(root), "batch_size": 64},
                                   "model": {"kwargs": {"width": 8}}, "epochs": 2,
                                   "progress": False, "device": "cpu"}))
    run = tmp_path / "run"
    assert cli.main(["train", "--config", str(cfg), "--set", "optim.lr=0.01",
                     "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "ones fraction" in out and "entropy bound" in out
    assert load_config(run / "config.yaml").optim.lr == 0.01
    assert cli.main(["evaluate", str(run), "--json", str(tmp_path / "ev.json")]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    rep = json.loads((run / "report.json").read_text())
    assert ev["test_accuracy"] == pytest.approx(rep["test_accuracy"])
    assert cli.main(["plot", str(run)]) == 0
    for png in ("weights.png", "curves.png", "accuracy_vs_bits.png"):
        assert (run / png).stat().st_size > 1000, png


@pytest.mark.skipif(shutil.which("sbnn") is None, reason="console script not installed")
def test_console_script():
    r = subprocess.run(["sbnn", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout


def test_main_job_config_is_the_embedded_default():
    assert load_config(CONFIGS / "fmnist_sbnn.yaml") == Config()
    fp = load_config(CONFIGS / "fmnist_fp.yaml")
    assert fp.model.name == "fmnist_cnn_fp" and fp.epochs == Config().epochs
    assert load_config(CONFIGS / "fmnist_bnn_dense.yaml").sparsity.ec == 0.5
