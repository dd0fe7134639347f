"""The study's secondary configs run as written (tiny data, one epoch): the penalty grid with its
fifth arm pm1c, and the trained Sub-bit arm with k set on the command line, as their scripts
call them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sbnn.cli import main
from sbnn.pipeline.data import write_synthetic_idx
from sbnn.pipeline.sweep import read_rows

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "docs" / "study_domains"


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return str(write_synthetic_idx(tmp_path_factory.mktemp("fmnist"), n_train=128, n_test=64))


def _toy(root):
    return ["--set", f"data.root={root}", "--set", "data.batch_size=64",
            "--set", "data.eval_batch_size=64", "--set", "model.kwargs={width: 8}",
            "--set", "epochs=1", "--set", "threads=1"]


@pytest.mark.parametrize("script", ["penalty/run_penalty.sh", "subbit/run_subbit.sh",
                                    "run_study.sh", "run_latency.sh"])
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(STUDY / script)]).returncode == 0


def test_penalty_config_runs_the_fifth_arm(toy_root, tmp_path):
    out = tmp_path / "penalty"
    assert main(["sweep", "--config", str(STUDY / "penalty" / "config.yaml"), "--domain", "pm1c",
                 "--arm", "cf", "--ec", "0.25", "--seeds", "0", "--no-fp", "--no-latency",
                 *_toy(toy_root), "--out", str(out)]) == 0
    (row,) = read_rows(out / "results.csv")
    assert row["domain"] == "pm1c" and row["sparsity_mode"] == "penalty"
    assert row["gamma"] > 0 and row["alpha_over_beta"] == pytest.approx(-1.0)


def test_subbit_config_trains_patterns_with_k_from_the_command_line(toy_root, tmp_path):
    out = tmp_path / "k5"
    assert main(["sweep", "--config", str(STUDY / "subbit" / "config.yaml"), "--domain", "pm1",
                 "--arm", "cf", "--ec", "0.5", "--gamma", "0", "--seeds", "0", "--no-fp",
                 "--no-latency", "--set", "prune.patterns=5", *_toy(toy_root),
                 "--out", str(out)]) == 0
    (row,) = read_rows(out / "results.csv")
    assert row["prune_patterns"] == 5 and row["patterns_trained"] == 1
    assert row["domain"] == "pm1" and 0.2 < row["ones_fraction"] < 0.8  # a dense BNN
