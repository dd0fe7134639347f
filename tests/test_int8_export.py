"""``sbnn export --int8`` and ``export(..., int8=...)``: the float layers of a trained run in
int8, calibrated on its own data or on a file, the accuracy change printed, and the written
model run alike by the engine, the C export and onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sbnn.cli import main
from sbnn.deploy.export import export, to_graph
from sbnn.pipeline.data import write_synthetic_idx
from sbnn.pipeline.runs import load_model
from sbnn_runtime import fileformat
from sbnn_runtime.engine import Engine
from sbnn_runtime.ops import reference_forward
from test_cexport import COMPILERS, far_inputs, rel_err, run_c


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = write_synthetic_idx(tmp_path_factory.mktemp("fmnist"), n_train=256, n_test=128)
    out = tmp_path_factory.mktemp("runs") / "a"
    argv = ["train", "--set", f"data.root={root}", "--set", "model.kwargs={width: 8}",
            "--set", "epochs=1", "--set", "progress=false", "--set", "device=cpu",
            "--set", "data.batch_size=64", "--out", str(out)]
    assert main(argv) == 0
    return out


def int8_nodes(graph):
    return [n.name for n in graph.nodes if any(a.dtype == np.int8 for a in n.params.values())]


def test_export_int8_calibrates_on_the_run_and_prints_the_change(run_dir, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path, onnx_path = tmp_path / "q.sbnn", tmp_path / "q.onnx"
    assert main(["export", str(run_dir), "-o", str(path), "--onnx", str(onnx_path),
                 "--int8", "--calib-batches", "2"]) == 0
    out = capsys.readouterr().out
    assert "int8 accuracy on fashion_mnist test (128 images)" in out
    assert "points" in out and "calibrated on 256 image(s)" in out
    assert "layer(s) in int8" in out  # the summary's float line
    graph = fileformat.load(path)
    assert int8_nodes(graph) == ["stem.0", "head.3"]  # the first conv and the classifier
    # fp32 stays the default
    assert main(["export", str(run_dir), "-o", str(tmp_path / "f.sbnn")]) == 0
    assert int8_nodes(fileformat.load(tmp_path / "f.sbnn")) == []
    assert (tmp_path / "f.sbnn").stat().st_size > path.stat().st_size
    # onnxruntime on the QDQ twin
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = far_inputs(graph, np.random.default_rng(0))
    want = Engine(graph, 1)(x)
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    assert rel_err(got, want) < 2e-2


@pytest.mark.skipif(not COMPILERS, reason="no C compiler")
def test_c_export_of_the_int8_model_equals_the_engine(run_dir, tmp_path):
    model = load_model(run_dir)
    calib = np.random.default_rng(1).standard_normal((64, 1, 28, 28)).astype(np.float32)
    graph = export(model, tmp_path / "q.sbnn", (1, 28, 28), int8=calib)
    assert int8_nodes(graph)
    x = far_inputs(graph, np.random.default_rng(2))
    want = Engine(graph, 1)(x)
    np.testing.assert_array_equal(reference_forward(graph, x).argmax(1), want.argmax(1))
    for cc, got in run_c(graph, x, tmp_path / "c").items():
        assert rel_err(got, want) < 1e-5, cc
        np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    # flash: the int8 weights are a quarter of the fp32 ones
    from sbnn_runtime.lower_c import generate_c

    fp = generate_c(to_graph(model.eval(), (1, 28, 28)))
    q = generate_c(graph)
    assert q.const_bytes < fp.const_bytes


def test_calibration_file_and_its_errors(run_dir, tmp_path, capsys):
    good = tmp_path / "calib.npy"
    np.save(good, np.random.default_rng(3).standard_normal((10, 1, 28, 28)).astype(np.float32))
    assert main(["export", str(run_dir), "-o", str(tmp_path / "g.sbnn"), "--int8", "--calib",
                 str(good)]) == 0
    assert "calibrated on 10 image(s)" in capsys.readouterr().out
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 3, 28, 28), np.float32))
    for argv in (["--int8", "--calib", str(bad)], ["--int8", "--calib", str(tmp_path / "no")],
                 ["--calib", str(good)]):
        out = tmp_path / "x.sbnn"
        assert main(["export", str(run_dir), "-o", str(out), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("sbnn export: error:") and "\n" not in err
        assert not out.exists()


def test_python_api_takes_batches(run_dir, tmp_path):
    model = load_model(run_dir)
    torch.manual_seed(0)
    batches = [torch.randn(8, 1, 28, 28).numpy() for _ in range(2)]
    g = export(model, tmp_path / "a.sbnn", (1, 28, 28), int8=batches)
    assert set(g.metadata["int8"]) == {"stem.0", "head.3"}
    assert fileformat.load(tmp_path / "a.sbnn").metadata["int8"] == g.metadata["int8"]
