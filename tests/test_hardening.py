"""Issue 13: safe loading, never losing or half-writing a run, clean errors (exit 2, one line)."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sbnn import cli, models
from sbnn.pipeline import runs
from sbnn.pipeline.config import Config, ConfigError, load_config, validate
from sbnn.pipeline.data import write_synthetic_idx

# --------------------------------------------------------------------------------------------
# item 1: a checkpoint never runs code
# --------------------------------------------------------------------------------------------


class _Evil:
    """Unpickling this calls ``open(marker, "w")``: creating the marker file is the 'code'."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_checkpoint(path: Path, marker: Path, legacy: bool = False) -> Path:
    ckpt = {"model": {"w": _Evil(marker)}, "config": {}, "num_classes": 10, "in_chans": 1,
            "epoch": 1}
    path.parent.mkdir(parents=True, exist_ok=True)
    if legacy:  # a plain pickle, not torch's zip format
        path.write_bytes(pickle.dumps(ckpt))
    else:
        torch.save(ckpt, path)
    assert not marker.exists()
    return path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(write_synthetic_idx(tmp_path_factory.mktemp("fm"), n_train=256, n_test=128))


def tiny_cfg(root, **over) -> Config:
    cfg = load_config(None, [f"data.root={root}", "data.batch_size=64",
                             "data.eval_batch_size=128", "model.kwargs={width: 8}", "epochs=1",
                             "progress=false", "device=cpu", "optim.lr=0.01"])
    return replace(cfg, **over)


@pytest.fixture(scope="module")
def good_sbnn(tmp_path_factory):
    from sbnn.deploy.export import export

    path = tmp_path_factory.mktemp("m") / "model.sbnn"
    torch.manual_seed(0)
    export(models.create("fmnist_cnn", width=8).eval(), path, (1, 28, 28),
           metadata={"dataset": "fashion_mnist"}, check=False)
    return path


def _exit2_one_line(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "error:" in err, err
    return err


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "plain-pickle"])
def test_malicious_checkpoint_runs_no_code_anywhere(tmp_path, capsys, data_root, good_sbnn,
                                                    legacy):
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    _evil_checkpoint(run / "last.pt", marker, legacy)
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_accuracy": 0.5}) + "\n")
    sweep = tmp_path / "sweep"
    _evil_checkpoint(sweep / "runs" / "ab_cf_ec0.05_s0" / "last.pt", marker, legacy)
    paths = [
        ["evaluate", run],
        ["evaluate", run, "--engine", good_sbnn, "--data", data_root],
        ["export", run, "-o", tmp_path / "x.sbnn"],
        ["train", "--resume", run],
        ["plot", run],
        ["convert", run / "last.pt", "--ones", "0.1", "--out", tmp_path / "conv"],
        ["sweep", "--domain", "ab", "--ec", "0.05", "--no-fp", "--no-latency", "--set",
         f"data.root={data_root}", "--set", "device=cpu", "--out", sweep],
        ["summary", run],
    ]
    for argv in paths:
        err = _exit2_one_line(argv, capsys)
        assert "code" in err or "checkpoint" in err, (argv, err)
        assert not marker.exists(), argv
    with pytest.raises(runs.CheckpointError, match="could run code"):
        import sbnn

        sbnn.load_model(run)
    assert not marker.exists()
    assert not (tmp_path / "x.sbnn").exists() and not (tmp_path / "conv").exists()


def test_malicious_checkpoint_in_a_real_process_prints_one_line(tmp_path):
    import subprocess
    import sys

    marker = tmp_path / "PWNED"
    _evil_checkpoint(tmp_path / "run" / "last.pt", marker, legacy=True)
    r = subprocess.run([sys.executable, "-m", "sbnn.cli", "evaluate", str(tmp_path / "run")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "could run code" in r.stderr and not marker.exists()


def test_shrunk_model_is_tensors_only_and_loads_back(tmp_path):
    from sbnn.verbs.prune import detach_, shrink_

    torch.manual_seed(0)
    model = models.create("fmnist_cnn_flat", width=8).eval()  # the layout shrink_ folds
    # kill filters of the last binary conv: bits all 0 and BatchNorm scale 0
    conv, bn = model.block3[0], model.block3[1]
    with torch.no_grad():
        conv.weight[:4] = -1.0
        bn.weight[:4] = 0.0
    ckpt = runs.make_checkpoint(model, {"model": {"name": "fmnist_cnn_flat",
                                                  "kwargs": {"width": 8}}}, 10, 1, 1, 0.0)
    runs.save_checkpoint(ckpt, tmp_path / "last.pt")
    small = runs.load_model(tmp_path)
    detach_(small)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        removed = shrink_(small, x)
    assert removed
    runs.save_shrunk(small, tmp_path / "shrunk_model.pt", removed)
    d = torch.load(tmp_path / "shrunk_model.pt", weights_only=True)  # no code needed
    assert d["removed_filters"] == removed
    back = runs.load_shrunk(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(back(x), small(x), rtol=0, atol=0)
        torch.testing.assert_close(back(x), model(x), rtol=1e-4, atol=1e-4)
    assert back.block3[0].weight.shape[0] == small.block3[0].weight.shape[0] < 32


# --------------------------------------------------------------------------------------------
# item 2: a CIFAR folder never runs code
# --------------------------------------------------------------------------------------------

def test_cifar_unpickler_refuses_code_and_reads_official_layout(tmp_path):
    import sbnn.pipeline.data as sdata

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    # the official layout: bytes keys, a uint8 array, a list of ints, bytes strings
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"batch_label": b"training batch 1 of 5",
             b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
             b"labels": [int(v) for v in rng.integers(0, 10, 3)],
             b"filenames": [b"a.png", b"b.png", b"c.png"]}
        (folder / f).write_bytes(pickle.dumps(d, protocol=2))
    assert sdata.load_dataset("cifar10", str(tmp_path), train=True).images.shape == (15, 3, 32,
                                                                                       32)
    marker = tmp_path / "PWNED"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": []}))
    with pytest.raises(sdata.DatasetNotFoundError, match=r"refused global '(io|builtins).open'"):
        sdata.load_dataset("cifar10", str(tmp_path), train=False)
    assert not marker.exists()
    obj = np.array([1, "x"], dtype=object)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": obj, b"labels": [0, 1]}))
    with pytest.raises(sdata.DatasetNotFoundError, match="object array"):
        sdata.load_dataset("cifar10", str(tmp_path), train=False)


# --------------------------------------------------------------------------------------------
# items 7-8: never overwrite or half-write a run
# --------------------------------------------------------------------------------------------

def _train_cli(root, out, *extra):
    return cli.main(["train", "--set", f"data.root={root}", "--set", "data.batch_size=64",
                     "--set", "model.kwargs={width: 8}", "--set", "epochs=1", "--set",
                     "progress=false", "--set", "device=cpu", "--out", str(out), *extra])


def test_existing_run_is_refused_unless_resume_or_overwrite(tmp_path, data_root, capsys):
    run = tmp_path / "run"
    assert _train_cli(data_root, run) == 0
    capsys.readouterr()
    before = {f: (run / f).read_bytes() for f in ("config.yaml", "last.pt", "report.json",
                                                  "metrics.jsonl")}
    err = _exit2_one_line(["train", "--set", f"data.root={data_root}", "--set", "epochs=2",
                           "--out", run], capsys)
    assert "--resume" in err and "--overwrite" in err
    # the README's rerun, `--config RUN/config.yaml`, points at its own folder: refused too
    _exit2_one_line(["train", "--config", run / "config.yaml"], capsys)
    # a bad data root changes nothing either
    _exit2_one_line(["train", "--set", f"data.root={tmp_path / 'nope'}", "--out", run,
                     "--overwrite"], capsys)
    assert {f: (run / f).read_bytes() for f in before} == before
    assert _train_cli(data_root, run, "--overwrite", "--set", "seed=1") == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # not two runs mixed
    assert (run / "last.pt").read_bytes() != before["last.pt"]


def test_failure_leaves_no_half_made_folder(tmp_path, data_root, capsys, monkeypatch):
    import sbnn.pipeline.train as strain

    # bad values caught up front: nothing is created
    for bad in ("sparsity.ec=0.7", "epochs=0", "data.batch_size=0", "optim.lr=nan",
                "optim.name=adagrad", "model.name=nope", "data.crop_padding=-1",
                "data.train_subset=0"):
        out = tmp_path / bad.split("=")[0]
        err = _exit2_one_line(["train", "--set", f"data.root={data_root}", "--set", bad,
                               "--out", out], capsys)
        assert bad.split("=")[0] in err, err
        assert not out.exists(), bad
    # a failure inside the first epoch removes what the run wrote
    out = tmp_path / "boom"

    def boom(self, epoch, bar=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(strain.Trainer, "train_epoch", boom)
    with pytest.raises(RuntimeError, match="boom"):
        strain.train(tiny_cfg(data_root), out=out)
    assert not out.exists()


def test_run_files_agree_and_tmp_leftovers_are_cleaned(tmp_path, data_root):
    import sbnn.pipeline.train as strain

    out = tmp_path / "run"
    out.mkdir()
    (out / ".last.pt.abc123.tmp").write_bytes(b"torn")  # a kill mid-write
    strain.train(tiny_cfg(data_root, epochs=2), out=out)
    assert not list(out.glob(".*.tmp"))
    rep = json.loads((out / "report.json").read_text())
    best = runs.load_checkpoint(out, "best")
    last = runs.load_checkpoint(out, "last")
    assert rep["last_epoch"] == last["epoch"] == 2
    assert rep["best_epoch"] == best["epoch"] and rep["best_test_accuracy"] == best["best_acc"]
    assert rep["world_size"] == 1 and rep["global_batch_size"] == 64


def test_best_is_written_before_last(tmp_path, data_root, monkeypatch):
    import sbnn.pipeline.train as strain

    order = []
    real = strain.save_checkpoint

    def spy(ckpt, path):
        order.append(Path(path).name)
        real(ckpt, path)

    monkeypatch.setattr(strain, "save_checkpoint", spy)
    strain.train(tiny_cfg(data_root), out=tmp_path / "r")
    assert order == ["best.pt", "last.pt"]


def test_export_onnx_bad_path_leaves_no_sbnn(tmp_path, data_root, capsys):
    import sbnn.pipeline.train as strain

    run = tmp_path / "run"
    strain.train(tiny_cfg(data_root), out=run)
    out = tmp_path / "m.sbnn"
    _exit2_one_line(["export", run, "-o", out, "--onnx", tmp_path / "no" / "such" / "m.onnx"],
                    capsys)
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# item 9: values checked up front, clean errors for corrupt files and missing paths
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value", [
    ("optim.name", "adagrad"), ("model.domain", "ternary"), ("model.name", "nope"),
    ("sparsity.init", "random"), ("data.name", "imagenet"), ("sparsity.ec", 0.0),
    ("sparsity.ec", 0.6), ("epochs", 0), ("data.batch_size", -1), ("optim.lr", float("inf")),
    ("optim.lr", 0.0), ("data.crop_padding", -2), ("model.act", "relu"),
    ("data.eval_batch_size", 0), ("device", "gpu7"),
])
def test_config_values_are_validated(key, value):
    cfg = Config()
    sec, _, name = key.rpartition(".")
    if sec:
        cfg = replace(cfg, **{sec: replace(getattr(cfg, sec), **{name: value})})
    else:
        cfg = replace(cfg, **{name: value})
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert key in str(e.value) and repr(value) in str(e.value) and "expected" in str(e.value)


def test_validate_accepts_the_shipped_configs():
    for p in (Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"):
        validate(load_config(p))


def test_wrong_image_size_and_empty_split(tmp_path, capsys):
    import sbnn.pipeline.data as sdata

    root = tmp_path / "d"
    root.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("t10k", 32)):
        sdata.write_idx(root / f"{split}-images-idx3-ubyte",
                        rng.integers(0, 256, (n, 20, 20), dtype=np.uint8))
        sdata.write_idx(root / f"{split}-labels-idx1-ubyte",
                        rng.integers(0, 10, n, dtype=np.uint8))
    out = tmp_path / "run"
    err = _exit2_one_line(["train", "--set", f"data.root={root}", "--out", out], capsys)
    assert "(1, 20, 20)" in err and "fmnist_cnn" in err and not out.exists()


@pytest.mark.parametrize("cmd", ["evaluate", "export", "plot", "summary", "train-resume"])
def test_corrupt_checkpoint_and_missing_path_exit_2(tmp_path, capsys, cmd):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"\x80\x04garbage")
    (run / "metrics.jsonl").write_text("")
    extra = {"export": ["-o", tmp_path / "m.sbnn"]}.get(cmd, [])
    argv = ["train", "--resume"] if cmd == "train-resume" else [cmd]
    _exit2_one_line([*argv, run, *extra], capsys)
    _exit2_one_line([*argv, tmp_path / "missing", *extra], capsys)


def test_corrupt_sbnn_exit_2(tmp_path, capsys, good_sbnn):
    bad = tmp_path / "bad.sbnn"
    bad.write_bytes(good_sbnn.read_bytes()[:40])
    for argv in (["evaluate", "--engine", bad], ["summary", bad], ["bench", bad]):
        _exit2_one_line(argv, capsys)


def test_resume_tolerates_a_torn_metrics_line(tmp_path, data_root):
    import sbnn.pipeline.train as strain

    out = tmp_path / "run"
    strain.train(tiny_cfg(data_root, epochs=2), out=out, stop_after=1)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')  # killed mid-append
    strain.train(None, resume=out)
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 2


def test_stale_convert_tmp_folders_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".conv.tmp-{dead}"
    stale.mkdir()
    (stale / "config.yaml").write_text("x")
    live = tmp_path / f".conv.tmp-{__import__('os').getpid()}"
    live.mkdir()
    assert runs.clean_stale_tmp_dirs(tmp_path / "conv") == [stale]
    assert not stale.exists() and live.exists()


def test_bad_input_shape_and_unknown_dataset_exit_2(tmp_path, capsys, good_sbnn):
    from sbnn.deploy.export import export
    from sbnn.pipeline.data import write_synthetic_idx

    root = write_synthetic_idx(tmp_path / "d", n_train=16, n_test=16)
    nodata = tmp_path / "nodata.sbnn"
    export(models.create("fmnist_cnn", width=8).eval(), nodata, (1, 28, 28), check=False)
    _exit2_one_line(["evaluate", "--engine", nodata, "--data", root], capsys)  # no dataset
    _exit2_one_line(["summary", good_sbnn.parent, "--input-shape", "1,x"], capsys)


def test_create_run_dir_rules(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    for f in ("config.yaml", "metrics.jsonl", "best.pt", ".last.pt.x1.tmp", "notes.txt"):
        (run / f).write_text("x")
    assert not runs.holds_run(run)  # killed inside its first epoch: nothing to lose
    runs.create_run_dir(run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # only the run's own files go
    (run / "last.pt").write_text("x")
    with pytest.raises(runs.RunExistsError, match="--overwrite"):
        runs.create_run_dir(run)
    runs.create_run_dir(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        runs.check_run_dir(tmp_path / "file")
