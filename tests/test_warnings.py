"""Issue 22 item 4: the warnings printed at the end of a run and stored in report.json."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

from sbnn.method.layers import SBConv2d
from sbnn.pipeline import checks
from sbnn.pipeline.data import write_synthetic_idx


def _layer(name, p, n=1000, alpha=-0.1, beta=0.2, zero_filters=0.0):
    return {"name": name, "n": n, "ones": round(p * n), "ones_fraction": p, "shape": [8, 4, 3, 3],
            "alpha": alpha, "beta": beta, "zero_filters": zero_filters}


def test_ones_far_above_or_below_the_target_names_the_worst_layers():
    layers = [_layer("a", 0.05), _layer("b.conv", 0.40), _layer("c", 0.02), _layer("d", 0.06)]
    w = checks.ones_warnings({"ones_fraction": 0.13, "layers": layers}, 0.05)
    assert len(w) == 1 and w[0]["kind"] == "ones_off_target"
    assert "target 0.05" in w[0]["message"] and "0.1300" in w[0]["message"]
    assert [x["layer"] for x in w[0]["layers"]] == ["b.conv", "c", "d"]
    assert "gamma" in w[0]["hint"]
    low = checks.ones_warnings({"ones_fraction": 0.03, "layers": layers}, 0.05)
    assert low and "lower sparsity.gamma" in low[0]["hint"]
    # within [0.8x, 1.25x], a float run (no target) and the dense BNN give none
    assert checks.ones_warnings({"ones_fraction": 0.0601, "layers": layers}, 0.05) == []
    assert checks.ones_warnings({"ones_fraction": 0.041, "layers": layers}, 0.05) == []
    assert checks.ones_warnings({"ones_fraction": 0.3, "layers": layers}, None) == []
    assert checks.ones_warnings({"ones_fraction": 0.3, "layers": layers}, 0.5) == []


def test_alpha_above_beta_is_flagged_per_layer_and_channel():
    layers = [_layer("ok", 0.05), _layer("flip", 0.05, alpha=0.3, beta=-0.1),
              _layer("chan", 0.05, alpha=[0.1, -0.2, 0.5], beta=[0.2, 0.1, 0.4])]
    w = checks.level_warnings({"layers": layers})
    assert [(x["layer"], x["flipped"], x["pairs"]) for x in w] == [("flip", 1, 1), ("chan", 1, 3)]
    assert "alpha > beta" in w[0]["message"] and "sparsity.levels=fit" in w[0]["hint"]


def test_collapsed_layers_and_dead_filters():
    layers = [_layer("gone", 0.0), _layer("allzero", 0.01, zero_filters=1.0), _layer("fine", 0.05),
              _layer("half", 0.05)]
    w = checks.collapse_warnings({"layers": layers}, dead={"half": 4, "fine": 0})
    assert [(x["kind"], x["layer"]) for x in w] == [
        ("collapsed_layer", "gone"), ("collapsed_layer", "allzero"), ("dead_filters", "half")]
    # filters pruned on purpose (prune.filters = 0.5 of 8 = 4) are expected
    assert [x["layer"] for x in checks.collapse_warnings({"layers": layers}, {"half": 4}, 0.5)] \
        == ["gone", "allzero"]


def test_dead_filters_finds_a_filter_constant_on_all_data():
    torch.manual_seed(0)
    conv = SBConv2d(2, 4, 3, padding=1, domain="01")
    with torch.no_grad():
        conv.weight.uniform_(0.1, 1.0)
        conv.weight[1].fill_(-0.5)  # filter 1: every bit 0, so q = 0 there (domain 01)
    model = nn.Sequential(conv, nn.Hardtanh())
    loader = [(torch.randn(8, 2, 6, 6), None) for _ in range(3)]
    assert checks.dead_filters(model, loader) == {"0": 1}


def test_accuracy_at_chance():
    w = checks.chance_warnings({"test_accuracy": 0.11}, 10)
    assert w and "chance" in w[0]["message"] and "--bn-batches" in w[0]["hint"]
    assert checks.chance_warnings({"test_accuracy": 0.5}, 10) == []
    assert checks.chance_warnings({}, 10) == []


def test_every_warning_says_what_to_try():
    text = checks.format_warnings(checks.chance_warnings({"test_accuracy": 0.1}, 10))
    assert text.startswith("warning: test accuracy") and "\n  try: " in text


def test_a_run_far_from_its_target_warns_and_stores_it(tmp_path, capsys):
    """The floor: a run ending far from its target prints a warning naming the target and the
    ones reached. Started at 100 % ones (sparsity.init=authors) without a penalty."""
    from sbnn import cli

    root = write_synthetic_idx(tmp_path / "data", n_train=128, n_test=64)
    cfg = tmp_path / "far.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"root": str(root), "batch_size": 64}, "model": {"kwargs": {"width": 8}},
        "epochs": 1, "progress": False, "sparsity": {"init": "authors", "gamma": 0.0,
                                                     "ec": 0.01}}))
    assert cli.main(["train", "--config", str(cfg), "--device", "cpu",
                     "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    far = [w for w in report["warnings"] if w["kind"] == "ones_off_target"]
    assert far, report["warnings"]
    assert far[0]["target"] == 0.01
    assert far[0]["ones_fraction"] == pytest.approx(report["ones_fraction"])
    assert f"warning: ones fraction {report['ones_fraction']:.4f}" in out
    assert "target 0.01" in out
