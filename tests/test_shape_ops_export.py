"""Issue 19's shapes traced end to end: channel shuffle (the view/transpose/reshape idiom and
nn.ChannelShuffle), reshapes that keep the batch, pools with ceil_mode and non-square windows,
nearest/bilinear upsampling, binary linear layers with binary activations, (C, L) and (F,)
inputs, and the two MLPerf Tiny networks of the registry (ResNet-8, the FC autoencoder):
PyTorch -> .sbnn -> engine -> C (host gcc) and onnxruntime, outputs compared. Also what is
refused, and that binarize_ and export agree."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sbnn
from sbnn import models
from sbnn.deploy.export import ExportError, export, export_problems, parse_shape, to_graph
from sbnn.method.layers import SBLinear
from sbnn_runtime import load
from sbnn_runtime.engine import Engine

TOL = 1e-4  # of the largest |output| (issue 19's floor)


def _rel(got, want) -> float:
    got, want = np.asarray(got).reshape(want.shape), np.asarray(want)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def _l2(got, want) -> float:
    got, want = np.asarray(got).reshape(want.shape), np.asarray(want)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12))


def _backends(graph, x: np.ndarray, tmp_path) -> dict[str, np.ndarray]:
    """Engine, C (first host compiler) and onnxruntime outputs of ``graph`` on ``x``."""
    from test_cexport import COMPILERS, run_c

    out = {"engine": Engine(graph, num_threads=1)(x)}
    if COMPILERS:
        for cc, y in run_c(graph, x, tmp_path / "c", compilers=COMPILERS[:1]).items():
            out[cc] = y
    try:
        import onnxruntime as ort

        from sbnn_runtime.lower_onnx import to_onnx
    except ImportError:
        return out
    sess = ort.InferenceSession(to_onnx(graph).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    out["onnx"] = sess.run(None, {"x": x})[0]
    return out


class Shuffle(nn.Module):
    """The layers of the shuffle models: convs, ChannelShuffle, pools, upsampling."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.shuffle = nn.ChannelShuffle(3)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.pool = nn.MaxPool2d((3, 1), (2, 1), (1, 0), ceil_mode=True)
        self.avg = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)
        self.fc = nn.Linear(270, 5)

    def forward(self, x):
        # x: (N, 3, 8, 8) -> (N, 5); the shuffle as x.shape, reshape, torch.transpose, flatten
        x = self.c1(x)
        n, c, h, w = x.shape
        x = torch.transpose(x.reshape(n, 3, 2, h, w), 1, 2).flatten(1, 2)
        x = F.interpolate(self.shuffle(self.c2(x)), scale_factor=(2, 2), mode="bilinear")
        x = self.avg(self.pool(self.up(x)))
        return self.fc(torch.flatten(F.max_pool2d(x, 2, ceil_mode=True), 1))


class Sequence(nn.Module):
    """A (C, L) input: BatchNorm1d over it, a mean over L, and a (F,) head."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 3)
        self.fc2 = nn.Linear(40, 3)

    def forward(self, x):
        y = self.bn(x)
        return self.fc(y.mean(-1)) + self.fc2(torch.flatten(y, 1))


def _randomize(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.5, 0.5, generator=g)
    return model.eval()


def test_shuffle_pool_upsample_model_exports_and_runs_everywhere(tmp_path):
    torch.manual_seed(0)
    model = _randomize(Shuffle())
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x).numpy()
    path = tmp_path / "m.sbnn"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the export's own check must not warn
        export(model, path, (3, 8, 8))
    graph = load(path).graph
    ops = [nd.op for nd in graph.nodes]
    assert ops.count("channel_shuffle") == 2 and ops.count("upsample") == 2
    for name, y in _backends(graph, x.numpy(), tmp_path).items():
        assert _rel(y, want) <= TOL, name


class Head(nn.Module):
    """Shuffle's ops with a head that exports (no slicing)."""

    def __init__(self):
        super().__init__()
        self.body = Shuffle()

    def forward(self, x):
        b = self.body
        x = b.c1(x)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        x = b.shuffle(b.c2(x))
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = b.avg(b.pool(b.up(x)))
        x = F.avg_pool2d(F.max_pool2d(x, 2, ceil_mode=True), (1, 2), ceil_mode=True)
        x = F.interpolate(x, size=(10, 10), mode="bilinear")
        return x.reshape(x.shape[0], 6, 10, 10).view(x.size(0), -1)


def test_the_shuffle_idiom_and_friends_match_torch(tmp_path):
    model = _randomize(Head())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(x).numpy()
    graph = to_graph(model, (3, 8, 8))
    ops = [nd.op for nd in graph.nodes]
    assert ops.count("channel_shuffle") == 2 and ops.count("maxpool") == 2
    for name, y in _backends(graph, x.numpy(), tmp_path).items():
        assert _rel(y, want) <= TOL, name


def test_sequence_and_feature_inputs(tmp_path):
    """(C, L) runs as (C, 1, L), (F,) as (F, 1, 1); the file records the user's shape and the
    runtime takes it (and refuses another naming it)."""
    seq = _randomize(Sequence())
    x = torch.randn(3, 4, 10, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = seq(x).numpy()
    export(seq, tmp_path / "s.sbnn", (4, 10))
    eng = load(tmp_path / "s.sbnn")
    assert eng.input_shape == (4, 10) and eng.graph.input_shape == (4, 1, 10)
    for name, y in _backends(eng.graph, x.numpy(), tmp_path).items():
        assert _rel(y, want) <= TOL, name
    with pytest.raises(ValueError, match=r"expected \(N, 4, 10\)"):
        eng(np.zeros((3, 10, 4), np.float32))

    mlp = _randomize(nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(),
                                   nn.Linear(8, 3)))
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = mlp(x).numpy()
    graph = to_graph(mlp, (12,))
    assert graph.user_input_shape == (12,) and graph.input_shape == (12, 1, 1)
    for name, y in _backends(graph, x.numpy(), tmp_path).items():
        assert _rel(y, want) <= TOL, name
    assert parse_shape("640") == (640,) and parse_shape("10,49") == (10, 49)
    with pytest.raises(ValueError, match="C,L"):
        parse_shape("1,2,3,4")


def _binary_margin_inputs(model: nn.Module, shape, n: int, seed: int = 1) -> torch.Tensor:
    """``n`` inputs whose binarised activations sit clearly off their thresholds (float
    rounding differs between torch and the backends; a value on a threshold may flip)."""
    margins = []

    def record(mod, a):
        v = a[0].flatten(1)
        margins.append(v.abs().amin(1) / v.abs().amax(1).clamp(min=1e-12))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()
             if isinstance(m, sbnn.SBLayer) and m.act is not None]
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    best = torch.stack(margins).amin(0).argsort(descending=True)[:n]
    return x[best]


def test_binary_linear_with_binary_activations(tmp_path):
    """What binarize_ makes of an nn.Linear by default (SBLinear on binary activations) is a
    binary 1x1 conv on a (F, 1, 1) map; export takes it, and binarize_ warns of nothing."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.BatchNorm1d(32), nn.Hardtanh(),
                        nn.Linear(32, 32), nn.BatchNorm1d(32), nn.Hardtanh(), nn.Linear(32, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped, nothing unexportable
        sbnn.binarize_(mlp)
    assert sum(isinstance(m, SBLinear) and m.act is not None for m in mlp.modules()) == 2
    assert export_problems(mlp, (3, 4, 4)) == []
    _randomize(mlp)
    x = _binary_margin_inputs(mlp, (3, 4, 4), 3)
    with torch.no_grad():
        want = mlp(x).numpy()
    graph = to_graph(mlp, (3, 4, 4))
    binary = [nd for nd in graph.nodes if nd.op == "sbconv2d"]
    assert len(binary) == 2 and all(nd.attrs["binary_input"] for nd in binary)
    assert all(nd.params["bits"].shape[2:] == (1, 1) for nd in binary)
    for name, y in _backends(graph, x.numpy(), tmp_path).items():
        assert _rel(y, want) <= TOL, name


@pytest.mark.parametrize("code,match", [
    ("x.view(-1, 3)", "changes the batch dimension.*x.view\\(x.size\\(0\\)"),
    ("x.view(x.size(0) * 2, -1)", "arithmetic on the batch size"),
    ("x.permute(0, 2, 3, 1)", "only permutation supported is the channel shuffle"),
    ("x.view(x.size(0), 3, 2, 2, 4).sum(1)", "5-D view"),
    ("F.interpolate(x, scale_factor=3)", r"scale_factor in \(2,\)"),
    ("F.interpolate(x, scale_factor=2, mode='bicubic')", "mode 'nearest' or 'bilinear'"),
    ("F.max_pool2d(x, 2, dilation=2)", "dilated pooling"),
    ("x.flatten(1)[:, :5]", "getitem"),
])
def test_what_is_refused_says_what_to_write(code, match):
    class M(nn.Module):
        def forward(self, x):
            return eval(code)  # noqa: S307 - the test's own fixed strings

    with pytest.raises(ExportError, match=match):
        to_graph(M(), (3, 4, 4))


NETS = [("resnet8", (3, 32, 32)), ("fc_autoencoder", (640,)),
        pytest.param("resnet8_fp", (3, 32, 32), marks=pytest.mark.slow),
        pytest.param("fc_autoencoder_fp", (640,), marks=pytest.mark.slow)]


@pytest.mark.parametrize("name,shape", NETS)
def test_mlperf_tiny_networks_end_to_end(name, shape, tmp_path):
    """The registry's ResNet-8 and FC autoencoder, binary and float: engine, C and
    onnxruntime against PyTorch. Floors: within 1e-4 of the largest |output|; with binary
    activations also the argmax agrees (classifier) or the relative L2 is <= 2 % (autoencoder)."""
    from test_export import randomize_, sparsify_

    torch.manual_seed(0)
    model = models.create(name)
    binary = any(isinstance(m, sbnn.SBLayer) for m in model.modules())
    if binary:
        sparsify_(model, 0.2)
    randomize_(model, shape=shape)
    x = _binary_margin_inputs(model, shape, 3) if binary else torch.randn(3, *shape)
    with torch.no_grad():
        want = model(x).numpy()
    graph = to_graph(model, shape)
    assert graph.user_input_shape == shape
    outs = _backends(graph, x.numpy(), tmp_path)
    assert {"engine", "onnx"} <= set(outs)
    for backend, y in outs.items():
        y = np.asarray(y).reshape(want.shape)
        assert _rel(y, want) <= TOL, backend
        assert _rel(y, outs["engine"].reshape(want.shape)) <= TOL, backend
        if name.startswith("resnet8"):
            np.testing.assert_array_equal(y.argmax(1), want.argmax(1))
        else:
            assert _l2(y, want) <= 0.02, backend


def test_binarize_and_export_agree_on_these_layers():
    """module_problem (what binarize_ warns about) names exactly the layers of this slice that
    export refuses whatever their input."""
    from sbnn.method.exportable import module_problem

    ok = [nn.Upsample(scale_factor=2), nn.Upsample(scale_factor=2, mode="bilinear",
                                                   align_corners=True),
          nn.ChannelShuffle(2), nn.MaxPool2d((3, 1), 2, (1, 0), ceil_mode=True),
          nn.AvgPool2d(3, ceil_mode=True, count_include_pad=False)]
    bad = [nn.Upsample(scale_factor=3), nn.Upsample(scale_factor=2, mode="bicubic"),
           nn.MaxPool2d(2, dilation=2), nn.AvgPool2d(2, divisor_override=3)]
    assert [module_problem(m, "m") for m in ok] == [None] * len(ok)
    for m in bad:
        assert module_problem(m, "m") is not None
        with pytest.raises(ExportError):
            to_graph(nn.Sequential(m), (4, 8, 8))
