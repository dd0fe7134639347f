"""scripts/ones_from_full.py: a run from 100 % ones (the authors' start), resumable in slices,
written as a per-epoch CSV and figure with an honest extrapolation."""

from __future__ import annotations

import csv

import pytest

from sbnn.pipeline.data import write_synthetic_idx
from sbnn.pipeline.ones_curve import epochs_to_target


def _main():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "ones_from_full.py"
    spec = importlib.util.spec_from_file_location("ones_from_full", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_epochs_to_target_extrapolates_geometrically():
    rows = [{"ones_fraction": 1.0}, {"ones_fraction": 0.8}, {"ones_fraction": 0.4}]
    # halving per epoch: 0.4 -> 0.05 is three halvings
    assert epochs_to_target(rows, 0.05) == pytest.approx(3.0)
    assert epochs_to_target(rows, 0.5) == 0.0
    assert epochs_to_target([{"ones_fraction": 0.9}, {"ones_fraction": 0.95}], 0.05) is None
    assert epochs_to_target([], 0.05) is None


def test_ones_from_full_trains_in_slices_and_writes_the_curve(tmp_path, capsys):
    main = _main()
    root = write_synthetic_idx(tmp_path / "data", n_train=128, n_test=64)
    out = tmp_path / "run"
    base = ["--set", f"data.root={root}", "--set", "data.batch_size=64",
            "--set", "data.eval_batch_size=64", "--set", "model.kwargs={width: 8}",
            "--set", "progress=false", "--set", "device=cpu", "--ec", "0.05",
            "--epochs", "2", "--out", str(out)]
    assert main(base + ["--stop-after", "1"]) == 0
    rows = list(csv.DictReader(open(out / "ones_curve.csv")))
    assert [r["epoch"] for r in rows] == ["1"]
    # the authors' start: every layer begins at 100 % ones and the penalty is on
    import yaml

    cfg = yaml.safe_load(open(out / "config.yaml"))
    assert cfg["sparsity"]["init"] == "authors" and cfg["sparsity"]["levels"] == "unit"
    assert cfg["sparsity"]["mode"] == "penalty" and cfg["sparsity"]["gamma"] > 0
    assert main(base) == 0  # resumes for the second epoch
    rows = list(csv.DictReader(open(out / "ones_curve.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for r in rows:
        assert 0.0 < float(r["ones_fraction"]) <= 1.0 and 0.0 <= float(r["test_accuracy"]) <= 1.0
    assert (out / "ones_curve.png").is_file()
    assert "2 epochs" in capsys.readouterr().out
    assert main(["--curve-only", "--out", str(tmp_path / "none")]) == 2
