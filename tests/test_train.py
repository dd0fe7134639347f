"""End-to-end training on a toy Fashion-MNIST-shaped dataset: files, learning, resume, DDP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp
import yaml

import sbnn.pipeline.runs as runs
import sbnn.pipeline.train as strain
from sbnn.pipeline.config import Config, load_config
from sbnn.pipeline.data import write_synthetic_idx
from sbnn.pipeline.runs import load_model


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return str(write_synthetic_idx(tmp_path_factory.mktemp("fmnist"), n_train=512, n_test=256))


def tiny_cfg(root, **over) -> Config:
    cfg = load_config(None, [
        f"data.root={root}", "data.batch_size=64", "data.eval_batch_size=256",
        "model.kwargs={width: 8}", "epochs=3", "progress=false", "device=cpu",
        "optim.lr=0.01",
    ])
    return replace(cfg, **over)


def test_end_to_end_learns_and_writes_every_file(toy_root, tmp_path):
    out = tmp_path / "run"
    report = strain.train(tiny_cfg(toy_root), out=out)
    for f in ("config.yaml", "last.pt", "best.pt", "metrics.jsonl", "report.json"):
        assert (out / f).is_file(), f
    assert report["test_accuracy"] > 0.4  # chance is 0.1
    on_disk = json.loads((out / "report.json").read_text())
    assert 0 <= on_disk["test_accuracy"] <= 1
    # started at the target EC = 0.05; a toy run at lr 0.01 drifts above it with fmnist_cnn's
    # four binary layers (the main job at lr 1e-3 ends at 0.0486, docs/TRAINING.md): 0.13 since
    # the levels step relative to their size (optim.level_lr, where phi follows the mean-shift
    # more slowly), under 0.1 before; a broken constraint would sit near 0.5
    assert on_disk["ones_fraction"] <= 0.2
    assert len(on_disk["layers"]) == 4 and {"alpha", "beta", "zero_kernels"} <= set(
        on_disk["layers"][0])
    assert on_disk["bits"]["binary_bits_entropy"] < on_disk["bits"]["binary_bits_dense"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert {"train_loss", "test_accuracy", "ones_fraction", "epoch_time_s"} <= set(rows[-1])
    # the resolved config reruns the same job
    cfg2 = load_config(out / "config.yaml")
    # (the recorded kwargs also hold the model's architecture defaults, see test_arch_record)
    tiny = tiny_cfg(toy_root)
    assert cfg2.model.kwargs["width"] == 8
    assert cfg2 == replace(tiny, out=str(out), model=replace(tiny.model, kwargs=cfg2.model.kwargs))
    # load_model gives the trained net in eval mode, same predictions as the report
    model = load_model(out)
    assert not model.training
    from sbnn.pipeline.data import BatchLoader, load_dataset

    ev = strain.evaluate_loader(model, BatchLoader(load_dataset("fashion_mnist", toy_root,
                                                                 train=False), 256))
    assert ev["accuracy"] == pytest.approx(report["test_accuracy"])


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same_weights(a, b):
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_resume_equals_uninterrupted(toy_root, tmp_path):
    # augmentations and mixup draw random numbers: resume must replay them exactly
    cfg = tiny_cfg(toy_root)
    cfg = replace(cfg, data=replace(cfg.data, crop_padding=2, hflip=True, mixup_alpha=1.0))
    strain.train(cfg, out=tmp_path / "full")
    strain.train(cfg, out=tmp_path / "cut", stop_after=1)
    assert not (tmp_path / "cut" / "report.json").exists()
    assert _state(tmp_path / "cut" / "last.pt")["epoch"] == 1
    strain.train(None, resume=tmp_path / "cut")
    _assert_same_weights(_state(tmp_path / "full" / "last.pt"), _state(tmp_path / "cut" /
                                                                        "last.pt"))
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


def test_atomic_save_never_leaves_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    runs.atomic_save({"v": 1}, path)

    def boom(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(strain.torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        runs.atomic_save({"v": 2}, path)
    monkeypatch.undo()
    assert runs._safe_load(path) == {"v": 1}  # the old file, whole (its SHA-256 checks out)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(toy_root, tmp_path):
    """A real kill (SIGKILL, mid-epoch) and `sbnn train --resume` give the uninterrupted weights."""
    args = ["--set", f"data.root={toy_root}", "--set", "model.kwargs={width: 8}",
            "--set", "epochs=4", "--set", "progress=false", "--set", "device=cpu",
            "--set", "data.train_subset=512", "--set", "data.batch_size=16"]
    cmd = [sys.executable, "-m", "sbnn.cli", "train", *args]
    subprocess.run(cmd + ["--out", str(tmp_path / "full")], check=True, capture_output=True)
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "cut")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = tmp_path / "cut" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _state(last)["epoch"] < 4
    subprocess.run([sys.executable, "-m", "sbnn.cli", "train", "--resume",
                    str(tmp_path / "cut")], check=True, capture_output=True)
    _assert_same_weights(_state(tmp_path / "full" / "last.pt"), _state(last))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, root, out, result_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = tiny_cfg(root, epochs=2)
    trainer = strain.Trainer(cfg, out=out)
    trainer.fit()
    torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
               os.path.join(result_dir, f"rank{rank}.pt"))
    with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as f:
        json.dump(trainer.local_row, f)  # this rank's share of the last epoch
    torch.distributed.destroy_process_group()


def test_ddp_two_gloo_processes_keep_parameters_identical(toy_root, tmp_path):
    out, res = tmp_path / "run", tmp_path / "res"
    res.mkdir()
    mp.spawn(_ddp_worker, args=(2, _free_port(), toy_root, str(out), str(res)), nprocs=2,
             join=True)
    s0, s1 = torch.load(res / "rank0.pt"), torch.load(res / "rank1.pt")
    for k in s0:
        if "running" in k or "num_batches" in k:
            continue  # BN statistics are per rank (rank 0's are broadcast at each forward)
        assert torch.equal(s0[k], s1[k]), k
    # only rank 0 wrote, and it wrote everything
    assert (out / "report.json").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 2
    # the log is the mean over both ranks, and the run says it was distributed
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    local = [json.loads((res / f"rank{r}.json").read_text()) for r in (0, 1)]
    for k in ("train_loss", "train_accuracy", "penalty"):
        assert logged[k] == pytest.approx((local[0][k] + local[1][k]) / 2, rel=1e-12), k
    assert local[0]["train_loss"] != local[1]["train_loss"]  # so rank 0's share would differ
    rep = json.loads((out / "report.json").read_text())
    assert (rep["world_size"], rep["batch_size_per_rank"], rep["global_batch_size"]) == (2, 64, 128)
    assert "world size 2" in (out / "config.yaml").read_text().splitlines()[0]


@pytest.mark.slow
def test_main_job_meets_its_targets(tmp_path):
    """The real main job (Fashion-MNIST must be installed): >= 85 % at ones fraction <= 0.06."""
    from sbnn.pipeline.data import DatasetNotFoundError, load_dataset

    try:
        load_dataset("fashion_mnist", None, train=False)
    except DatasetNotFoundError as e:
        pytest.skip(str(e))
    report = strain.train(replace(Config(), progress=False), out=tmp_path / "main")
    assert report["test_accuracy"] >= 0.85 and report["ones_fraction"] <= 0.06
