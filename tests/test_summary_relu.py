"""Issue 13 items 10-12: the ReLU-before-binary-conv warning, ONNX export of a module used twice,
and ``sbnn.summary`` / ``sbnn summary``."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sbnn
from sbnn import cli, models
from sbnn.method.constraint import sb_layers
from sbnn.verbs.binarize import BinarizeConfig, ReLUBeforeBinaryWarning, binarize_


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: ``self.relu`` is called twice."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class TinyResNet(nn.Module):
    def __init__(self, c: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.layer1 = BasicBlock(c)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _randomize_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2, generator=g)
            m.running_var.uniform_(0.5, 2, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.2, generator=g)


# -- item 10 -----------------------------------------------------------------------------------

def test_relu_feeding_a_binary_conv_warns_and_names_the_layers():
    with pytest.warns(ReLUBeforeBinaryWarning) as rec:
        binarize_(TinyResNet())
    msg = str(rec[0].message)
    # relu -> layer1.conv1 (stem) and layer1.relu -> layer1.conv2 (inside the block)
    assert "relu -> layer1.conv1" in msg and "layer1.relu -> layer1.conv2" in msg
    assert "Hardtanh" in msg and "RSign" in msg and "float" in msg and "graph" in msg


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3)
        self.b = nn.Conv2d(4, 4, 3)
        self.c = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.a(x)), 2)  # stays >= 0 through the pool
        return self.c(F.hardtanh(self.b(x)))


def test_functional_relu_through_a_pool_warns_hardtanh_does_not():
    with pytest.warns(ReLUBeforeBinaryWarning, match="relu -> b"):
        binarize_(_Functional())
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReLUBeforeBinaryWarning)
        binarize_(_Functional(), BinarizeConfig(act=None))  # float inputs: nothing to warn
        binarize_(_Functional(), filter_fn=lambda n, m: n != "b")  # b kept in float
        for name in models.list_models():  # the registry's models are built right
            models.create(name)


class _ControlFlow(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3)
        self.act = nn.ReLU()
        self.b = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # fx cannot trace this
            x = -x
        return self.b(self.act(self.a(x)))


def test_relu_warning_falls_back_to_module_order():
    with pytest.warns(ReLUBeforeBinaryWarning, match=r"act -> b; found by module order"):
        binarize_(_ControlFlow())


# -- item 11 -----------------------------------------------------------------------------------

def test_onnx_of_a_module_used_twice_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from sbnn import engine
    from sbnn.deploy.export import export

    torch.manual_seed(0)
    model = TinyResNet()
    with pytest.warns(ReLUBeforeBinaryWarning):
        binarize_(model, BinarizeConfig(keep_first=True))
    assert len(sb_layers(model)) == 2
    _randomize_bn(model)
    model.eval()
    graph = export(model, tmp_path / "m.sbnn", (1, 12, 12), onnx_path=tmp_path / "m.onnx")
    assert [nd.op for nd in graph.nodes].count("relu") == 3  # layer1.relu twice
    import onnx

    names = [n.name for n in onnx.load(tmp_path / "m.onnx").graph.node]
    assert len(names) == len(set(names))
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 12, 12, generator=torch.Generator().manual_seed(3)).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    want = engine.load(tmp_path / "m.sbnn")(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        np.testing.assert_allclose(got, model(torch.from_numpy(x)).numpy(), rtol=1e-4,
                                   atol=1e-4)


# -- item 12 -----------------------------------------------------------------------------------

def test_summary_of_a_model_counts_every_layer():
    from sbnn.deploy.export import to_graph
    from sbnn.verbs.stats import layer_stats
    from sbnn_runtime import fileformat

    torch.manual_seed(0)
    model = models.create("fmnist_cnn", width=8).eval()
    s = sbnn.summary(model, (1, 28, 28))
    graph = to_graph(model, (1, 28, 28))
    assert len(s.rows) == len(graph.nodes) - 1  # every node but the input, float ones too
    kinds = {r["op"] for r in s.rows}
    assert {"sbconv2d", "conv2d", "linear"} <= kinds
    sb = sb_layers(model)
    t = s.totals
    assert t["binary_params"] == sum(m.weight.numel() for _, m in sb)
    assert t["binary_layers"] == len(sb) == 4  # fmnist_cnn: four binary convs
    stats = layer_stats(model)
    ones = sum(r["ones"] for r in stats) / sum(r["n"] for r in stats)
    assert t["ones_fraction"] == pytest.approx(ones)
    binrows = [r for r in s.rows if r["op"] == "sbconv2d"]
    for r, st in zip(binrows, stats, strict=True):
        assert r["ones_fraction"] == pytest.approx(st["ones_fraction"])
        assert r["zero_kernels"] / r["kernels"] == pytest.approx(st["zero_kernels"])
        assert r["binary"] and r["macs"] > 0
        assert r["entropy_bits"] == pytest.approx(st["entropy"] * r["weights"], rel=1e-5)
    assert t["float_params"] == sum(r["params"] - r.get("weights", 0) for r in s.rows) > 0
    assert t["file_bytes"] == len(fileformat.dumps(graph))
    assert t["binary_macs"] + t["float_macs"] == sum(
        __import__("sbnn_runtime.ops", fromlist=["graph_macs"]).graph_macs(graph))
    text = str(s)
    for head in ("op", "output", "params", "ones", "bits/w", "0-kern", "stored", "MACs",
                 "binary:", "float:", "file", "H(p)"):
        assert head in text
    with pytest.raises(ValueError, match="input_shape"):
        sbnn.summary(model)


def test_summary_cli_on_a_run_and_a_sbnn_file(tmp_path, capsys):
    from dataclasses import replace

    import sbnn.pipeline.train as strain
    from sbnn.pipeline.config import load_config
    from sbnn.pipeline.data import write_synthetic_idx

    root = write_synthetic_idx(tmp_path / "d", n_train=128, n_test=64)
    cfg = load_config(None, [f"data.root={root}", "model.kwargs={width: 8}", "epochs=1",
                             "progress=false", "device=cpu"])
    run = tmp_path / "run"
    strain.train(replace(cfg), out=run)
    capsys.readouterr()
    assert cli.main(["summary", str(run), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "sbconv2d" in out and "block1" in out
    js = json.loads((tmp_path / "s.json").read_text())
    assert js["totals"]["binary_layers"] == 4
    assert cli.main(["export", str(run), "-o", str(tmp_path / "m.sbnn")]) == 0
    capsys.readouterr()
    assert cli.main(["summary", str(tmp_path / "m.sbnn"), "--json",
                     str(tmp_path / "s2.json")]) == 0
    js2 = json.loads((tmp_path / "s2.json").read_text())
    # the one summary: `sbnn summary FILE` prints what `python -m sbnn_runtime summary` does
    from sbnn_runtime.__main__ import main as runtime_main

    capsys.readouterr()
    assert cli.main(["summary", str(tmp_path / "m.sbnn")]) == 0
    ours = capsys.readouterr().out
    assert runtime_main(["summary", str(tmp_path / "m.sbnn")]) == 0
    assert capsys.readouterr().out == ours and "H(p)" in ours
    assert js2["totals"]["file_bytes"] == os.path.getsize(tmp_path / "m.sbnn")
    assert js2["totals"]["binary_params"] == js["totals"]["binary_params"]
