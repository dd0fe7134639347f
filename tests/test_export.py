"""Export -> .sbnn -> engine (and ONNX) gives the PyTorch model's logits, for every model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sbnn
from sbnn import engine, models
from sbnn.deploy.export import ExportError, export, to_graph
from sbnn.method.layers import LearnableBias, RPReLU, RSign, SBConv2d, SBLinear
from sbnn_runtime import fileformat

RTOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # tiny convs: two spinning threads on a shared 2-core machine cost more than they give
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _backend() -> str:
    from sbnn_runtime.native import core

    return "native" if core is not None and hasattr(core, "Engine") else "reference"


def sparsify_(model: nn.Module, ones: float, seed: int = 0) -> nn.Module:
    """Random bits at ones fraction ``ones`` (a fast stand-in for ``sbnn.init_closed_form_``)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in sbnn.sb_layers(model):
            w = m.weight.abs() + 1e-3
            m.weight.copy_(torch.where(torch.rand(w.shape, generator=g) < ones, w, -w))
    return model


def randomize_(model: nn.Module, seed: int = 0, shape=(3, 8, 8)) -> nn.Module:
    """Random but realistic eval-mode statistics: BN running stats near the true batch stats
    (so activations stay O(1)), random affine BN, shifts, thresholds and RPReLU slopes."""
    g = torch.Generator().manual_seed(seed)
    u = lambda t, lo, hi: t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)  # noqa: E731
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (RSign, LearnableBias)):
                u(m.bias, -0.3, 0.3)
            if isinstance(m, RPReLU):
                u(m.shift_in, -0.3, 0.3), u(m.shift_out, -0.3, 0.3), u(m.slope, 0.0, 0.5)
        for bn in bns:
            bn.momentum = None  # cumulative average: running stats = this batch's stats
            bn.reset_running_stats()
        model.train()
        model(torch.randn(8, *shape, generator=g))
        for bn in bns:
            u(bn.weight, 0.5, 1.5), u(bn.bias, -0.3, 0.3)
            bn.running_mean.add_(0.1 * torch.randn(bn.running_mean.shape, generator=g)
                                 * bn.running_var.sqrt())
            bn.running_var.mul_(torch.rand(bn.running_var.shape, generator=g) * 0.45 + 0.8)
    return model.eval()


def safe_inputs(model: nn.Module, shape, n: int = 2, candidates: int = 12, seed: int = 1):
    """``n`` inputs whose binarised activations all lie clearly off their thresholds.

    Float convs in PyTorch and in the engine round differently (~1e-7 relative); a value within
    that of a threshold may binarise differently, which is correct behaviour but would flip a
    whole activation. We pick the inputs with the largest relative margin instead.
    """
    margins: list[torch.Tensor] = []

    def record(v: torch.Tensor):  # v: (N, C, H, W) compared against 0
        scale = v.abs().flatten(1).amax(1).clamp(min=1e-12)
        margins.append(v.abs().flatten(1).amin(1) / scale)

    hooks = []
    for m in model.modules():
        if isinstance(m, (SBConv2d, SBLinear)) and m.act is not None:
            hooks.append(m.register_forward_pre_hook(lambda mod, a: record(a[0])))
        if isinstance(m, RSign):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, a: record(a[0] + mod.bias.view(1, -1, 1, 1))))
    x = torch.randn(candidates, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    if not margins:
        return x[:n]
    margin = torch.stack(margins).amin(0)
    best = margin.argsort(descending=True)[:n]
    assert float(margin[best].min()) > 1e-6, "no input far enough from the thresholds"
    return x[best]


def rel_err(got, want) -> float:
    got, want = np.asarray(got), np.asarray(want)
    return float(np.abs(got - want).max() / np.abs(want).max())


def input_shape(name: str):
    # fully convolutional CIFAR nets at 8x8 keep the test fast: stride 2 down to 1x1, padding
    # at every border; ReActNet max-pools after its stem, so it needs 16x16 to end at 1x1
    if name.startswith("fmnist"):
        return (1, 28, 28)
    if name.startswith("fc_autoencoder"):  # features, not an image
        return (640,)
    return (3, 16, 16) if name.startswith("reactnet") else (3, 8, 8)


def check_model(model, shape, tmp_path, sparse_ones=None, onnx=True):
    if sparse_ones is not None:
        sparsify_(model, sparse_ones)
    randomize_(model, shape=shape)
    x = safe_inputs(model, shape)
    with torch.no_grad():
        want = model(x).numpy()
    path = tmp_path / "m.sbnn"
    onnx_path = tmp_path / "m.onnx" if onnx else None
    export(model, path, shape, onnx_path=onnx_path, check=False)
    for sparse in (True, False):
        eng = engine.load(path, num_threads=1, sparse=sparse, backend=_backend())
        got = eng(x)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert rel_err(got, want) < RTOL, (sparse, rel_err(got, want))
    ref = engine.load(path, backend="reference")(x)
    assert rel_err(ref, want) < RTOL
    if onnx:
        ort = pytest.importorskip("onnxruntime")
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"x": x.numpy()})[0]
        assert rel_err(got, want) < RTOL
        np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    return path


@pytest.mark.parametrize("name", models.list_models())
def test_registry_model_matches_pytorch(name, tmp_path):
    # width 16: every layer type, stride and shortcut of the model, a sixteenth of the weights
    torch.manual_seed(0)
    model = models.create(name, num_classes=10, width=16)
    binary = any(isinstance(m, sbnn.SBLayer) for m in model.modules())
    check_model(model, input_shape(name), tmp_path, sparse_ones=0.05 if binary else None)


@pytest.mark.parametrize("name", ["resnet18_irnet", "reactnet18"])
def test_full_width_model_matches_pytorch(name, tmp_path):
    torch.manual_seed(0)
    check_model(models.create(name, num_classes=10), input_shape(name), tmp_path,
                sparse_ones=0.05)


@pytest.mark.parametrize("domain", sbnn.DOMAINS)
@pytest.mark.parametrize("act", ["ede", None])
def test_every_domain(domain, act, tmp_path):
    torch.manual_seed(1)
    model = models.create("fmnist_cnn", width=8, domain=domain, act=act)
    path = check_model(model, (1, 28, 28), tmp_path, sparse_ones=0.1)
    kinds = [nd.attrs["binary_input"] for nd in fileformat.load(path).nodes
             if nd.op == "sbconv2d"]
    n_sb = sum(isinstance(m, SBConv2d) for m in model.modules())
    assert n_sb >= 3 and kinds == [act is not None] * n_sb


class ShiftNet(nn.Module):
    """Learnable shifts before binary convs (folded into thresholds), a shift before a float
    conv (kept as an affine), RSign + stride-2 conv, pooling with padding, relu."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, 1, 1, bias=True)
        self.bn0 = nn.BatchNorm2d(8)
        self.move1 = LearnableBias(8)
        self.conv1 = SBConv2d(8, 8, 3, 1, 1, bias=True, domain="closed_form", act="ste")
        self.bn1 = nn.BatchNorm2d(8)
        self.move2 = RSign(8)
        self.conv2 = SBConv2d(8, 16, 3, 2, 1, bias=True, domain="pm1", act=None)
        self.move3 = LearnableBias(16)
        self.conv3 = nn.Conv2d(16, 16, 1)
        self.conv4 = SBConv2d(16, 16, 1, 1, 0, bias=False, domain="01", act="ste")
        self.pool = nn.AvgPool2d(3, 2, 1, count_include_pad=False)
        self.mp = nn.MaxPool2d(3, 1, 1)
        self.fc = nn.Linear(16 * 3 * 3, 5)

    def forward(self, x):
        x = torch.relu(self.bn0(self.conv0(x)))
        x = self.bn1(self.conv1(self.move1(x))) + x
        x = self.conv2(self.move2(x))
        x = self.conv3(self.move3(x)) + self.conv4(x)
        return self.fc(torch.flatten(self.mp(self.pool(x)), 1))


def test_shifts_thresholds_and_pools(tmp_path):
    torch.manual_seed(2)
    model = ShiftNet()
    path = check_model(model, (3, 9, 9), tmp_path)
    g = fileformat.load(path)
    ops = [nd.op for nd in g.nodes]
    assert ops.count("affine") == 1  # only the shift before the float conv is materialised
    sb = [nd for nd in g.nodes if nd.op == "sbconv2d"]
    np.testing.assert_array_equal(sb[0].params["thr"], -model.move1.bias.detach().numpy())
    np.testing.assert_array_equal(sb[1].params["thr"], -model.move2.bias.detach().numpy())


def test_unsupported_layer_names_it_and_writes_nothing(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    path = tmp_path / "m.sbnn"
    with pytest.raises(ExportError, match=r"'1' \(GELU\)"):
        export(model, path, (1, 6, 6))
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ExportError, match="grouped"):
        export(grouped, path, (4, 6, 6))
    assert list(tmp_path.iterdir()) == []


def test_export_replaces_atomically(tmp_path, monkeypatch):
    path = tmp_path / "m.sbnn"
    path.write_bytes(b"old")
    model = models.create("fmnist_cnn", width=4).eval()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        export(model, path, (1, 28, 28), check=False)
    assert path.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_engine_input_validation(tmp_path):
    model = randomize_(models.create("fmnist_cnn", width=8), shape=(1, 28, 28))
    path = tmp_path / "m.sbnn"
    export(model, path, (1, 28, 28))
    eng = engine.load(path, num_threads=1, backend=_backend())
    x = torch.randn(3, 1, 28, 28)
    want = eng(x)
    with pytest.raises(TypeError, match="float64"):
        eng(x.double())
    with pytest.raises(TypeError, match="float64"):
        eng(x.double().numpy())
    with pytest.raises(ValueError, match=r"expected \(N, 1, 28, 28\)"):
        eng(x[:, :, :27])
    with pytest.raises(ValueError, match=r"expected \(N, 1, 28, 28\)"):
        eng(x[0])
    with pytest.raises(ValueError, match="empty"):
        eng(x[:0])
    with pytest.raises(TypeError, match="numpy array or a DLPack"):
        eng(x.tolist())
    # non-contiguous layouts are copied, not misread
    xt = x.numpy().transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2)
    assert not xt.flags.c_contiguous
    np.testing.assert_array_equal(eng(xt), want)
    np.testing.assert_array_equal(eng(x.to(memory_format=torch.channels_last)), want)
    np.testing.assert_array_equal(eng(torch.cat([x, x], 0)[::2]), eng(torch.cat([x, x])[::2]))
    np.testing.assert_array_equal(eng(x.numpy()), want)


def test_to_graph_folds_batchnorm():
    g = to_graph(models.create("resnet18_irnet", width=8).eval(), (3, 8, 8))
    ops = [nd.op for nd in g.nodes]
    # every BN2d is folded into its conv; only the BN1d before the classifier stays an affine
    assert ops.count("affine") == 1 and ops.count("sbconv2d") == 16 and ops.count("conv2d") == 4
