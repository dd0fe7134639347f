"""`sbnn sweep` end to end on a tiny budget: every file and column, skipping and resuming."""

from __future__ import annotations

import csv
import math

import pytest

from sbnn.cli import main
from sbnn.pipeline import sweep
from sbnn.pipeline.data import write_synthetic_idx

ARGS = ["--set", "data.batch_size=64", "--set", "data.eval_batch_size=256",
        "--set", "model.kwargs={width: 8}", "--set", "epochs=1", "--set", "progress=false",
        "--set", "device=cpu", "--set", "optim.lr=0.01"]


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return str(write_synthetic_idx(tmp_path_factory.mktemp("fmnist"), n_train=256, n_test=128))


def test_sweep_writes_every_file_and_column_then_skips(toy_root, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    argv = ["sweep", "--ec", "0.5,0.05", "--domain", "ab,pm1", "--seeds", "0",
            "--arm", "cf,authors",
            "--set", f"data.root={toy_root}", *ARGS, "--out", str(out)]
    assert main(argv) == 0
    for f in ("results.csv", "results.md", "accuracy_vs_bits.png", "accuracy_vs_latency.png",
              "accuracy_vs_ones.png"):
        assert (out / f).is_file(), f
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["domain"], r["arm"], r["ec"]) for r in rows] == [
        ("fp", "", "")] + [(d, a, ec) for ec in ("0.5", "0.05") for d in ("ab", "pm1")
                           for a in ("cf", "authors")]
    assert list(rows[0]) == sweep.COLUMNS
    assert all(r["seed"] == "0" for r in rows)
    for r in rows[1:]:
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0
        assert float(r["bits_per_binary_weight"]) > 0 and float(r["latency_b1_ms"]) > 0
        assert int(r["model_bytes"]) > 0
    sparse = [r for r in rows if r["ec"] == "0.05"]
    for r in sparse:
        # one toy epoch at lr 0.01 on random images: only checked to stay sparse (whether real
        # runs reach their target is what the sweep measures, docs/RESULTS.md)
        assert float(r["ones_fraction"]) <= 0.2
        p = float(r["ones_fraction"])
        assert float(r["ones_over_target"]) == pytest.approx(p / 0.05)
        assert float(r["entropy_ones"]) == pytest.approx(
            -p * math.log2(p) - (1 - p) * math.log2(1 - p))
        ratios = [float(a) / float(b) for a, b in
                  (pair.split("/") for pair in r["alpha_beta_per_layer"].split())]
        assert float(r["alpha_over_beta"]) == pytest.approx(sum(ratios) / len(ratios), rel=1e-3)
        if r["domain"] == "pm1":  # the tie: alpha = -beta in every layer
            assert all(x == pytest.approx(-1.0) for x in ratios)
        assert float(r["gamma"]) == sweep.gamma_for(0.05)
        assert float(r["bits_per_binary_weight"]) < 0.75  # well below the dense BNN's 1 bit
    # a second call trains nothing: every run has its report; an exported run needs no checkpoint
    for ckpt in (out / "runs" / "ab_cf_ec0.05_s0").glob("*.pt"):
        ckpt.unlink()
    calls = []
    monkeypatch.setattr("sbnn.pipeline.train.Trainer.fit", lambda self: calls.append(self) or {})
    assert main(argv) == 0
    assert calls == []
    again = list(csv.DictReader(open(out / "results.csv")))
    assert [r["bits_per_binary_weight"] for r in again] == [
        r["bits_per_binary_weight"] for r in rows]


def test_sweep_resumes_an_interrupted_run(toy_root, tmp_path):
    from dataclasses import replace

    from sbnn.pipeline.config import load_config
    from sbnn.pipeline.train import Trainer

    cfg = load_config(None, [f"data.root={toy_root}"] + ARGS[1::2])
    cfg = replace(cfg, epochs=2)
    out = tmp_path / "sweep"
    run_dir = out / "runs" / "ab_cf_ec0.05_s0"
    Trainer(replace(cfg, sparsity=replace(cfg.sparsity, ec=0.05, gamma=0.07)), out=run_dir,
            stop_after=1).fit()  # killed after epoch 1
    assert not (run_dir / "report.json").exists()
    rows = sweep.run_sweep(cfg, out, [0.05], ["ab"], [0], fp_reference=False, latency=False)
    assert len(rows) == 1
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # epoch 1 from the first attempt, epoch 2 from the resume


def test_sweep_collect_tabulates_finished_runs_only(toy_root, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    base = ["sweep", "--ec", "0.05", "--seeds", "0", "--no-fp", "--no-latency",
            "--set", f"data.root={toy_root}", *ARGS, "--out", str(out)]
    assert main([*base, "--domain", "ab"]) == 0
    calls = []
    monkeypatch.setattr("sbnn.pipeline.train.Trainer.fit", lambda self: calls.append(self) or {})
    assert main([*base, "--domain", "ab,01", "--arm", "cf,authors", "--collect"]) == 0
    assert calls == []  # nothing trained
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["domain"], r["arm"]) for r in rows] == [("ab", "cf")]


def test_sweep_bad_arguments(tmp_path, capsys):
    assert main(["sweep", "--ec", "0.05,abc", "--out", str(tmp_path)]) == 2
    assert "comma-separated" in capsys.readouterr().err
    assert main(["sweep", "--domain", "ternary", "--out", str(tmp_path)]) == 2
    assert "valid: ab" in capsys.readouterr().err
    assert main(["sweep", "--arm", "kaiming", "--out", str(tmp_path)]) == 2
    assert "valid: cf, authors" in capsys.readouterr().err


def test_gamma_table():
    assert sweep.gamma_for(0.5) == 0.0
    assert sweep.gamma_for(0.01) == 0.10
    assert sweep.gamma_for(0.01, "cifar100") == 0.07
    assert sweep.gamma_for(0.06) == 0.07  # nearest listed EC is 0.05


def test_sweep_appends_rows_and_resumes_from_the_csv_alone(toy_root, tmp_path, monkeypatch):
    """A committed results.csv is enough: with the run folders gone, nothing is retrained; a
    row appears as soon as its run finishes; extra columns and every row are kept."""
    import shutil

    out = tmp_path / "sweep"
    base = ["sweep", "--seeds", "0", "--no-fp", "--no-latency", "--set", f"data.root={toy_root}",
            *ARGS, "--set", "sparsity.mode=exact", "--out", str(out)]
    seen = []
    real = sweep.append_row

    def spy(o, row):
        real(o, row)
        seen.append(len(sweep.read_rows(o / "results.csv")))  # on disk before the next run

    monkeypatch.setattr(sweep, "append_row", spy)
    assert main([*base, "--ec", "0.1", "--domain", "abr,01"]) == 0
    assert seen == [1, 2]
    rows = sweep.read_rows(out / "results.csv")
    assert [(r["domain"], r["ec"], r["sparsity_mode"]) for r in rows] == [
        ("abr", 0.1, "exact"), ("01", 0.1, "exact")]
    for r in rows:
        assert r["steps"] == 4 and r["threads"] >= 1 and r["cpu_model"]
        assert r["collapsed"] in (0, 1)
        assert abs(r["ones_fraction"] - 0.1) < 0.01  # exact per layer, rounded per layer
    text = (out / "results.csv").read_text().replace("run_dir", "run_dir,note", 1)
    (out / "results.csv").write_text(text.replace("\n", ",kept\n").replace("note,kept", "note"))
    shutil.rmtree(out / "runs")
    calls = []
    monkeypatch.setattr("sbnn.pipeline.train.Trainer.fit", lambda self: calls.append(self) or {})
    assert main([*base, "--ec", "0.1", "--domain", "01,abr"]) == 0
    assert calls == []
    again = sweep.read_rows(out / "results.csv")
    assert [r["domain"] for r in again] == ["abr", "01"] and again[0]["note"] == "kept"
    assert "abr" in (out / "results.md").read_text()


def test_shards_partition_the_plan_and_collect_merges_them(toy_root, tmp_path, monkeypatch):
    names = []

    def fake(spec):
        d, arm, ec, seed, run_cfg, run_dir, *_ = spec
        names.append(run_dir.name)
        return {"domain": d, "arm": arm, "ec": ec, "seed": seed, "test_accuracy": 0.5,
                "ones_fraction": ec, "run_dir": str(run_dir)}

    monkeypatch.setattr(sweep, "_run_row", fake)
    monkeypatch.setattr(sweep, "plot_results", lambda rows, out: None)
    base = ["sweep", "--seeds", "0,1", "--ec", "0.25,0.1", "--domain", "ab,01", "--no-fp",
            "--set", f"data.root={toy_root}", *ARGS]
    for i in range(3):
        assert main([*base, "--shard", f"{i}/3", "--out", str(tmp_path / f"s{i}")]) == 0
    assert len(names) == len(set(names)) == 8  # disjoint, and together the whole plan
    assert main(["sweep", "--collect", *(str(tmp_path / f"s{i}") for i in range(3)),
                 "--out", str(tmp_path / "all")]) == 0
    rows = sweep.read_rows(tmp_path / "all" / "results.csv")
    assert sorted(r["run_dir"].rsplit("/", 1)[1] for r in rows) == sorted(names)
    assert main([*base, "--shard", "3/3", "--out", str(tmp_path / "x")]) == 2
    assert main(["sweep", "--collect", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_jobs_run_in_parallel_processes(toy_root, tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", "--seeds", "0,1", "--ec", "0.1", "--domain", "ab", "--no-fp",
                 "--no-latency", "--jobs", "2", "--set", "threads=2",
                 "--set", f"data.root={toy_root}", *ARGS, "--out", str(out)]) == 0
    rows = sweep.read_rows(out / "results.csv")
    assert sorted(r["seed"] for r in rows) == [0, 1]
    assert all(r["threads"] == 1 for r in rows)  # 2 threads split between 2 jobs
