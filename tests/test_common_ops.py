"""Issue 19, first slice: "say no before training" (binarize_ names what it skips or export
cannot take, sbnn train refuses such a model before its first step, export errors name and
suggest), and the common ops traced end to end: PyTorch -> .sbnn -> engine -> C (and ONNX)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sbnn
from sbnn import models
from sbnn.deploy.export import ExportError, export, export_problems, to_graph
from sbnn.pipeline.data import write_synthetic_idx
from sbnn.verbs.binarize import UnexportableLayerWarning
from sbnn_runtime import load
from sbnn_runtime.engine import Engine

TOL = 1e-4  # of the largest |output| (issue 19's floor)


class SE(nn.Module):
    """A squeeze-and-excitation block: x * sigmoid(fc(relu(fc(mean(x)))))."""

    def __init__(self, c: int, r: int = 2):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU())
        self.se = SE(8)
        self.side = nn.Conv2d(3, 4, 1)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(12, 5)
        self.bn = nn.BatchNorm1d(5)

    def forward(self, x):
        y = self.se(self.stem(x))
        y = torch.cat([y, F.hardswish(self.side(x))], dim=1)
        y = y + y.mean((2, 3), keepdim=True)  # a broadcast add
        return self.bn(self.fc(self.drop(y.mean((2, 3)))))


class Acts(nn.Module):
    """Every activation the tracer takes, as a module and as a function or method."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.mods = nn.ModuleList([nn.ReLU6(), nn.LeakyReLU(0.2), nn.PReLU(6), nn.PReLU(),
                                   nn.SiLU(), nn.Hardswish(), nn.Hardsigmoid(), nn.Sigmoid(),
                                   nn.Tanh(), nn.Identity()])
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 4 * 4, 7), nn.Softmax(dim=1))

    def forward(self, x):
        y = self.conv(x)
        for m in self.mods:
            y = m(y)
        y = F.leaky_relu(F.relu6(y), 0.05) + F.silu(y).sigmoid() + y.tanh()
        return self.head(F.hardsigmoid(y) + torch.softmax(y, dim=1))


def _randomize(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.5, 0.5, generator=g)
            if isinstance(m, nn.PReLU):
                m.weight.uniform_(-0.5, 0.5, generator=g)
    return model.eval()


def _rel(got, want) -> float:
    got, want = np.asarray(got).reshape(want.shape), np.asarray(want)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


@pytest.mark.parametrize("make", [SENet, Acts], ids=["se", "acts"])
def test_traced_end_to_end_torch_sbnn_engine_c_onnx(make, tmp_path):
    from test_cexport import COMPILERS, run_c

    model = _randomize(make())
    x = torch.randn(3, 3, 8 if make is SENet else 4, 8 if make is SENet else 4,
                    generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x).numpy()
    path = tmp_path / "m.sbnn"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the export's own check must not warn
        export(model, path, tuple(x.shape[1:]))
    graph = load(path).graph
    ops = {nd.op for nd in graph.nodes}
    assert {"activation", "eltwise", "concat"} & ops
    got = Engine(graph, num_threads=1)(x.numpy())
    assert _rel(got, want) <= TOL
    if COMPILERS:
        for cc, out in run_c(graph, x.numpy(), tmp_path / "c", compilers=COMPILERS[:1]).items():
            assert _rel(out, want) <= TOL, cc
    try:
        import onnxruntime as ort

        from sbnn_runtime.lower_onnx import to_onnx
    except ImportError:
        return
    sess = ort.InferenceSession(to_onnx(graph).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    assert _rel(sess.run(None, {"x": x.numpy()})[0], want) <= TOL


def test_se_block_is_a_broadcast_mul_and_dropout_identity_vanish():
    g = to_graph(_randomize(SENet()), (3, 8, 8))
    ops = [nd.op for nd in g.nodes]
    assert ops.count("eltwise") == 2 and "concat" in ops and "softmax" not in ops
    mul = next(nd for nd in g.nodes if nd.op == "eltwise" and nd.attrs["kind"] == "mul")
    assert g.shapes()[mul.inputs[1]] == (8, 1, 1)  # the gate, one value per channel
    assert not any("drop" in nd.name for nd in g.nodes)


# -- say no before training --------------------------------------------------------------------

class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.audio = nn.Conv1d(1, 4, 3)
        self.volume = nn.Conv3d(1, 4, 3)
        self.conv = nn.Conv2d(1, 4, 3, groups=1)
        self.dw = nn.Conv2d(4, 4, 3, groups=4)
        self.norm = nn.GELU()
        self.fc = nn.Linear(4 * 24 * 24, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.norm(self.dw(self.conv(x))), 1))


def test_binarize_names_every_layer_it_skips_or_export_cannot_take():
    with pytest.warns(UnexportableLayerWarning) as rec:
        model = sbnn.binarize_(Mixed())
    msg = " ".join(str(r.message) for r in rec if r.category is UnexportableLayerWarning)
    assert "'volume' (Conv3d) skipped" in msg  # never passed over in silence
    assert "'norm' (GELU)" in msg and "nn.SiLU" in msg
    assert "'conv'" not in msg and "'fc'" not in msg and "'dw'" not in msg
    # Conv1d is swapped like Conv2d (here the first conv, kept float); the depthwise conv
    # stays float, and binarize_ says so
    said = " ".join(str(r.message) for r in rec)
    assert "'dw'" in said and "depthwise" in said
    assert isinstance(model.conv, sbnn.SBLayer) and not isinstance(model.dw, sbnn.SBLayer)
    with warnings.catch_warnings():  # a model export takes: not a word
        warnings.simplefilter("error", UnexportableLayerWarning)
        sbnn.binarize_(models.create("fmnist_cnn_fp"))


def test_export_problems_counts_each_layer_once_even_downstream():
    problems = export_problems(Mixed(), (1, 28, 28))
    assert [n for n, _ in problems] == ["norm"]
    assert export_problems(_randomize(SENet()), (3, 8, 8)) == []


def test_export_errors_name_module_op_arguments_and_suggest():
    with pytest.raises(ExportError) as e:
        to_graph(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ELU(alpha=0.5)), (1, 8, 8))
    msg = str(e.value)
    assert "'1' (ELU) with arguments (alpha=0.5)" in msg
    assert "use nn.LeakyReLU or nn.SiLU" in msg and "Supported: Conv2d" in msg

    class Sub(nn.Module):
        def forward(self, x):
            return torch.sub(x, 1.0)

    with pytest.raises(ExportError, match=r"function sub\(x, 1.0\).*fold the constant"):
        to_graph(Sub(), (1, 4, 4))
    with pytest.raises(ExportError, match="padding_mode 'replicate'.*padding_mode='zeros'"):
        to_graph(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="replicate")),
                 (1, 8, 8))


@pytest.fixture
def unexportable_model():
    name = "_test_unexportable"
    if not models.is_registered(name):
        @models.register(name)
        def _build(num_classes=10, in_chans=1, **_):
            return nn.Sequential(nn.Conv2d(in_chans, 4, 3, padding=1, padding_mode="circular"),
                                 nn.GELU(),
                                 nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
    return name


def test_train_refuses_before_the_first_step(unexportable_model, tmp_path, capsys):
    from sbnn.cli import main

    root = write_synthetic_idx(tmp_path / "data", n_train=64, n_test=32)
    args = ["train", "--set", f"data.root={root}", "--set", f"model.name={unexportable_model}",
            "--device", "cpu", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "3 layer(s) cannot be exported" in err[0] and "0, 1, 2" in err[0]
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    assert main(args + ["--verbose"]) == 2
    err = capsys.readouterr().err
    assert "padding_mode 'circular'" in err and "AdaptiveMaxPool2d" in err


def test_every_new_op_in_c_matches_the_engine(tmp_path):
    """One graph with each activation kind, softmax (image and flat), mul/add broadcast per
    channel and same-shape, and a concat reading one tensor twice: C (host compiler) = engine =
    reference, on several batch items."""
    from sbnn_runtime.ops import ACTIVATION_KINDS, Graph, Node, reference_forward
    from test_cexport import COMPILERS, run_c

    if not COMPILERS:
        pytest.skip("no C compiler")
    rng = np.random.default_rng(3)
    nodes = [Node("input", [], {"shape": [4, 5, 3]})]

    def add(op, inputs, attrs=None, params=None):
        nodes.append(Node(op, inputs, attrs or {}, params or {}, name=f"n{len(nodes)}"))
        return len(nodes) - 1

    t = 0
    for kind in ACTIVATION_KINDS:
        t = add("activation", [t], {"kind": kind, "alpha": 0.2})
        t = add("affine", [t], {}, {"scale": rng.uniform(1, 3, 4).astype(np.float32),
                                    "shift": rng.uniform(-2, 2, 4).astype(np.float32)})
    gate = add("activation", [add("global_avgpool", [t])], {"kind": "sigmoid", "alpha": 0.0})
    t = add("eltwise", [t, gate], {"kind": "mul"})
    t = add("eltwise", [t, add("global_avgpool", [0])], {"kind": "add"})
    t = add("eltwise", [t, add("relu", [0])], {"kind": "mul"})
    t = add("softmax", [add("concat", [t, t])])
    t = add("concat", [t, 0])
    t = add("softmax", [add("flatten", [t])])
    graph = Graph(nodes, t)
    x = 2 * rng.standard_normal((3, 4, 5, 3)).astype(np.float32)
    want = reference_forward(graph, x)
    assert _rel(Engine(graph, num_threads=1)(x), want) <= 1e-5
    for cc, out in run_c(graph, x, tmp_path / "c").items():
        assert _rel(out, want) <= 1e-5, cc
