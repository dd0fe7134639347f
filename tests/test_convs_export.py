"""The convolutions people deploy (issue 19), from PyTorch to every backend: grouped, depthwise,
dilated, non-square, ``padding='same'``, ``nn.ZeroPad2d`` / ``F.pad`` and ``nn.Conv1d``, float and
binarised; the registry's DS-CNN and MobileNetV1 through the engine, C and ONNX; and the
refusals, which ``binarize_`` and ``sbnn export`` give alike."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sbnn
from sbnn import models
from sbnn.deploy.export import ExportError, export_problems, to_graph
from sbnn.method.exportable import module_problem
from sbnn.method.layers import SBConv1d, SBLayer
from sbnn.verbs.binarize import MIN_GROUP_CHANNELS, UnexportableLayerWarning
from sbnn_runtime.engine import Engine
from sbnn_runtime.lower_onnx import save_onnx
from sbnn_runtime.ops import reference_forward
from test_cexport import COMPILERS, run_c
from test_export import randomize_, rel_err, safe_inputs, sparsify_


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Convs(nn.Module):
    """Every conv form the tracer takes, in one float network on (C, H, W) = (2, 17, 12)."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((1, 2, 0, 3))  # folds into the conv after it
        self.c0 = nn.Conv2d(2, 8, (5, 3), stride=(2, 1))
        self.b0 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 16, 3, padding="same", groups=8)  # depth multiplier 2
        self.dil = nn.Conv2d(16, 16, (3, 2), padding=(2, 1), dilation=(2, 3), groups=4)
        self.g = nn.Conv2d(16, 8, 3, stride=(1, 2), padding=1, groups=2, bias=False)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.b0(self.c0(self.pad(x))))
        x = torch.tanh(self.dil(self.dw(x)))
        x = self.g(F.pad(x, (0, 1, 1, 0)))  # F.pad folds too
        return self.fc(x.mean((2, 3)))


class Audio(nn.Module):
    """A Conv1d net on (C, L) = (3, 40): the (C, 1, L) map of the graph."""

    def __init__(self, grouped_in: int = 8):
        super().__init__()
        self.c0 = nn.Conv1d(3, 16, 5, stride=2, padding=2)
        self.b0 = nn.BatchNorm1d(16)
        self.c1 = nn.Conv1d(16, 16, 3, padding="same", dilation=2, groups=16 // grouped_in)
        self.b1 = nn.BatchNorm1d(16)
        self.dw = nn.Conv1d(16, 16, 3, padding=1, groups=16)
        self.b2 = nn.BatchNorm1d(16)
        self.c2 = nn.Conv1d(16, 16, 1)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.b0(self.c0(x))
        x = self.b1(self.c1(x))
        x = self.c2(self.b2(self.dw(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _backends(graph, x, want, tmp_path, tol=1e-4):
    """Engine, reference, ONNX and C against ``want`` (PyTorch) within ``tol`` of the largest
    |output|; returns the engine's output."""
    got = Engine(graph, num_threads=1)(x)
    assert rel_err(got, want) < tol
    assert rel_err(reference_forward(graph, x), want) < tol
    ort = pytest.importorskip("onnxruntime")
    save_onnx(graph, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    # the ONNX model takes the user's shape ((N, C, L) for a Conv1d net) and reshapes it itself
    xu = x.reshape(len(x), *graph.user_input_shape)
    assert rel_err(sess.run(None, {"x": xu})[0], got) < tol
    if COMPILERS:
        for c in run_c(graph, x, tmp_path / "c", compilers=COMPILERS[:1]).values():
            assert rel_err(c.reshape(got.shape), got) < tol
    return got


def test_every_conv_form_float(tmp_path):
    torch.manual_seed(0)
    model = randomize_(Convs(), shape=(2, 17, 12))
    graph = to_graph(model, (2, 17, 12))
    convs = [nd for nd in graph.nodes if nd.op == "conv2d"]
    assert len(convs) == 4 and all(nd.op != "zeropad" for nd in graph.nodes)  # both pads folded
    assert convs[0].attrs == {"stride": [2, 1], "padding": [0, 1, 3, 2]}
    assert convs[1].attrs["groups"] == 8 and convs[2].attrs["dilation"] == [2, 3]
    x = torch.randn(3, 2, 17, 12)
    with torch.no_grad():
        want = model(x).numpy()
    _backends(graph, x.numpy(), want, tmp_path)


def test_conv1d_float(tmp_path):
    torch.manual_seed(1)
    model = randomize_(Audio(), shape=(3, 40))
    graph = to_graph(model, (3, 40))
    assert graph.input_shape == (3, 1, 40)
    x = torch.randn(2, 3, 40)
    with torch.no_grad():
        want = model(x).numpy()
    _backends(graph, x.numpy().reshape(2, 3, 1, 40), want, tmp_path)


def test_binarize_takes_conv1d_and_wide_groups_and_keeps_depthwise(tmp_path):
    torch.manual_seed(2)
    model = Audio()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sbnn.binarize_(model)
    said = " ".join(str(w.message) for w in caught)
    assert "'dw'" in said and "float" in said  # the depthwise conv stays float, and it says so
    assert not any(issubclass(w.category, UnexportableLayerWarning) for w in caught)
    assert isinstance(model.c1, SBConv1d) and model.c1.groups == 16 // 8  # 8 channels a group
    assert not isinstance(model.dw, SBLayer) and not isinstance(model.c0, SBLayer)  # kept first
    assert MIN_GROUP_CHANNELS == 8
    sparsify_(model, 0.3)
    randomize_(model, shape=(3, 40))
    graph = to_graph(model, (3, 40))
    sb = [nd for nd in graph.nodes if nd.op == "sbconv2d"]
    assert len(sb) == 2 and sb[0].attrs["groups"] == 2 and sb[0].params["bits"].shape[2] == 1
    x = torch.randn(4, 3, 40)
    with torch.no_grad():
        want = model(x).numpy()
    got = Engine(graph, num_threads=1)(x.numpy().reshape(4, 3, 1, 40))
    # binary activations: a value may sit on a threshold (the floor)
    assert np.linalg.norm(got - want) <= 0.02 * np.linalg.norm(want)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


def test_sbconv1d_is_a_float_conv1d_of_quantized_weights_and_inputs():
    torch.manual_seed(6)
    layer = SBConv1d(6, 4, 3, stride=2, padding=1, dilation=2, groups=2)
    x = torch.randn(2, 6, 20)
    want = F.conv1d(layer.binarize_input(x), layer.quantized_weight(), layer.bias, 2, 1, 2, 2)
    torch.testing.assert_close(layer(x), want, rtol=0, atol=0)


def test_binary_grouped_conv_2d(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16),
                          nn.Conv2d(16, 32, (3, 1), padding=(1, 0), groups=2, dilation=(2, 1)),
                          nn.BatchNorm2d(32), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, 3))
    sbnn.binarize_(model)
    assert isinstance(model[2], SBLayer)
    sparsify_(model, 0.2)
    randomize_(model, shape=(3, 9, 9))
    x = safe_inputs(model, (3, 9, 9), n=3)
    with torch.no_grad():
        want = model(x).numpy()
    graph = to_graph(model, (3, 9, 9))
    assert [nd.op for nd in graph.nodes].count("sbconv2d") == 1
    _backends(graph, x.numpy(), want, tmp_path)


@pytest.mark.parametrize("name,shape,width", [
    ("dscnn", (1, 49, 10), 8), ("mobilenet_v1", (3, 32, 32), 4),
    pytest.param("dscnn_fp", (1, 49, 10), 8, marks=pytest.mark.slow),
    pytest.param("mobilenet_v1_fp", (3, 32, 32), 4, marks=pytest.mark.slow),
    pytest.param("dscnn", (1, 49, 10), 64, marks=pytest.mark.slow),  # the MLPerf Tiny sizes
    pytest.param("mobilenet_v1", (3, 96, 96), 8, marks=pytest.mark.slow)])
def test_new_networks_on_every_backend(name, shape, width, tmp_path):
    torch.manual_seed(4)
    model = models.create(name, width=width)
    binary = any(isinstance(m, SBLayer) for m in model.modules())
    if binary:
        sparsify_(model, 0.1)
    randomize_(model, shape=shape)
    x = safe_inputs(model, shape, n=2)
    with torch.no_grad():
        want = model(x).numpy()
    graph = to_graph(model, shape)
    ops = [nd.op for nd in graph.nodes]
    assert "zeropad" not in ops  # every TF 'same' pad folded into its conv
    assert (ops.count("sbconv2d") > 0) == binary
    got = _backends(graph, x.numpy(), want, tmp_path)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


def test_refusals_name_the_layer_and_the_nearest_form():
    for mode in ("reflect", "circular"):
        m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode=mode))
        why = module_problem(m[0], "0")
        assert why is not None and mode in why and "padding_mode='zeros'" in why
        with pytest.raises(ExportError, match="padding_mode='zeros'"):
            to_graph(m, (1, 8, 8))
        # binarize_ says it before training, as export does after
        with pytest.warns(UnexportableLayerWarning, match=mode):
            sbnn.binarize_(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, padding=1,
                                                                        padding_mode=mode)))

    class Reflect(nn.Module):
        def forward(self, x):
            return F.pad(x, (1, 1, 1, 1), mode="reflect")

    assert export_problems(Reflect(), (1, 8, 8))[0][1].count("value=0") == 1
    ones = nn.Sequential(nn.ConstantPad2d(1, 1.0), nn.Conv2d(1, 2, 3))
    why = module_problem(ones[0], "0")
    assert why is not None and "nn.ZeroPad2d" in why
    assert export_problems(ones, (1, 6, 6))[0][0] == "0"


def test_a_pad_before_a_binary_conv_stays_a_node(tmp_path):
    # zeros padded before a binarising conv binarise to +1, unlike the conv's own padding
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ZeroPad2d((0, 1, 2, 0)),
                          nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.Flatten(),
                          nn.Linear(8 * 8 * 4, 2))
    sbnn.binarize_(model)
    randomize_(model, shape=(1, 10, 7))
    # the padded zeros sit on the threshold (0 -> +1 on every backend, exactly), so no input
    # is "safe" by safe_inputs' margin; the other values are clear of it at this seed
    x = torch.randn(2, 1, 10, 7, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model(x).numpy()
    graph = to_graph(model, (1, 10, 7))
    assert "zeropad" in [nd.op for nd in graph.nodes]
    _backends(graph, x.numpy(), want, tmp_path)
