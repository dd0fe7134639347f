"""The deployment commands as README.md gives them: train -> export (+ONNX) -> evaluate --engine
-> bench, on a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sbnn
from sbnn.cli import main
from sbnn.pipeline.data import write_synthetic_idx

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = write_synthetic_idx(tmp_path_factory.mktemp("fmnist"), n_train=256, n_test=128)
    out = tmp_path_factory.mktemp("runs") / "a"
    argv = ["train", "--set", f"data.root={root}", "--set", "model.kwargs={width: 8}",
            "--set", "epochs=1", "--set", "progress=false", "--set", "device=cpu",
            "--set", "data.batch_size=64", "--out", str(out)]
    assert main(argv) == 0
    return out


def test_export_evaluate_engine_and_bench(run_dir, tmp_path, capsys):
    model_path, onnx_path = tmp_path / "model.sbnn", tmp_path / "model.onnx"
    assert main(["export", str(run_dir), "-o", str(model_path), "--onnx", str(onnx_path)]) == 0
    assert model_path.is_file() and onnx_path.is_file()
    capsys.readouterr()

    assert main(["evaluate", str(run_dir), "--engine", str(model_path)]) == 0
    out = capsys.readouterr().out
    assert "0 predictions differ" in out

    bench_json = tmp_path / "bench.json"
    assert main(["bench", str(model_path), "--batch", "1", "--threads", "1", "--repeat", "2",
                 "--warmup", "1", "--json", str(bench_json)]) == 0
    results = json.loads(bench_json.read_text())
    assert results  # one entry per configuration with the baselines beside it
    text = json.dumps(results)
    assert "sparse" in text and "dense" in text

    # the Python API of README.md on the same file
    eng = sbnn.engine.load(model_path, num_threads=1)
    x = np.zeros((2, 1, 28, 28), dtype=np.float32)
    assert eng(x).shape == (2, 10)
    with pytest.raises(ValueError):
        eng(np.zeros((2, 3, 28, 28), dtype=np.float32))


def test_export_of_a_missing_run_is_a_clean_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "m.sbnn")]) != 0
    assert not (tmp_path / "m.sbnn").exists()
    assert "error" in capsys.readouterr().err.lower()


def test_plot_curves_of_a_run_without_training_accuracy(run_dir, tmp_path):
    # `sbnn convert` runs log an epoch 0 (converted model) that has no training accuracy
    import shutil

    from sbnn.pipeline.plot import plot_curves

    conv = tmp_path / "conv"
    shutil.copytree(run_dir, conv)
    lines = (conv / "metrics.jsonl").read_text()
    row0 = {"epoch": 0, "test_accuracy": 0.3, "ones_fraction": 0.05, "stage": "converted"}
    (conv / "metrics.jsonl").write_text(json.dumps(row0) + "\n" + lines)
    assert plot_curves(conv).is_file()
