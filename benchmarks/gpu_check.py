"""One prepared GPU session: CUDA correctness, CIFAR-10 training throughput, a CIFAR-shaped sweep.

Run from the repository root (no build needed: the training path is pure Python)::

    PYTHONPATH=src python benchmarks/gpu_check.py --out gpu_out        # on a CUDA machine
    PYTHONPATH=src python benchmarks/gpu_check.py --out /tmp/g --small # CPU smoke test

1. CUDA vs CPU: ``closed_form`` bits/levels (exact bits), every domain's SBConv2d forward and
   backward, and the whole ``resnet18_irnet`` forward (TF32 off for the comparison).
2. Throughput: the authors' CIFAR-10 recipe (``configs/cifar10_resnet18_ec005.yaml``: ResNet-18,
   batch 512, Adam, cosine, mixup, EDE, the sparsity constraint) and its full-precision twin on
   CIFAR-shaped data that this script writes in the official pickle layout; images per second
   of the last epoch and peak GPU memory.
3. ``sbnn sweep`` on the same data at EC 0.5 / 0.05 for the ab and pm1 domains (pipeline check:
   the labels are random, so accuracies are chance).
Everything lands in ``OUT/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import sbnn
from sbnn import models
from sbnn.pipeline.config import load_config


def write_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random images in the official ``cifar-10-batches-py`` layout."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per = n_train // 5
    for i in range(1, 6):
        d = {b"data": rng.integers(0, 256, (per, 3072), dtype=np.uint8),
             b"labels": rng.integers(0, 10, per).tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(d))
    d = {b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
         b"labels": rng.integers(0, 10, n_test).tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(d))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c"] * 10}))
    return root


def check_cuda(dev: torch.device) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out: dict = {}
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in [(64, 64, 3, 3), (256, 128, 3, 3), (10, 512)]:
        w = torch.randn(*shape, generator=g)
        for ones in (None, 0.05, 0.01):
            for dim in (None, 0):
                a, b, bits = sbnn.closed_form(w, ones=ones, dim=dim)
                ag, bg, bitsg = sbnn.closed_form(w.to(dev), ones=ones, dim=dim)
                assert torch.equal(bits, bitsg.cpu()), (shape, ones, dim)
                worst = max(worst, float((a - ag.cpu()).abs().max()),
                            float((b - bg.cpu()).abs().max()))
    out["closed_form_bits_equal"] = True
    out["closed_form_max_level_diff"] = worst
    layer_err = {}
    for domain in sbnn.DOMAINS:
        torch.manual_seed(1)
        m = sbnn.SBConv2d(32, 64, 3, padding=1, domain=domain, weight_estimator="ede",
                          act="ede")
        x = torch.randn(8, 32, 16, 16, requires_grad=True)
        y = m(x)
        y.square().mean().backward()
        gx, gw = x.grad.clone(), m.weight.grad.clone()
        mg = m.to(dev)
        mg.zero_grad()
        xg = x.detach().to(dev).requires_grad_(True)
        yg = mg(xg)
        yg.square().mean().backward()
        layer_err[domain] = {
            "forward": float((y - yg.cpu()).abs().max() / y.abs().max()),
            "grad_x": float((gx - xg.grad.cpu()).abs().max() / gx.abs().max()),
            "grad_w": float((gw - mg.weight.grad.cpu()).abs().max() / gw.abs().max()),
        }
    out["sbconv_rel_err"] = layer_err
    torch.manual_seed(2)
    net = models.create("resnet18_irnet", num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
        got = net.to(dev)(x.to(dev)).cpu()
    out["resnet18_forward_rel_err"] = float((ref - got).abs().max() / ref.abs().max())
    out["resnet18_same_argmax"] = bool(torch.equal(ref.argmax(1), got.argmax(1)))
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return out


def throughput(cfg, out_dir: Path, dev: torch.device) -> dict:
    from sbnn.pipeline.train import Trainer

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    report = Trainer(cfg, out=out_dir).fit()
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    n_train = cfg.data.train_subset
    last = rows[-1]["epoch_time_s"]
    res = {"model": cfg.model.name, "epochs": cfg.epochs, "batch": cfg.data.batch_size,
           "steps_per_epoch": -(-n_train // cfg.data.batch_size),
           "epoch_times_s": [r["epoch_time_s"] for r in rows],
           "images_per_s_last_epoch": n_train / last, "wall_s": wall,
           "ones_fraction": report.get("ones_fraction")}
    if dev.type == "cuda":
        res["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--small", action="store_true", help="tiny sizes for a CPU smoke test")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result: dict = {"torch": torch.__version__, "device": str(dev)}
    if dev.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(dev)

    def save():
        (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2), flush=True)

    if dev.type == "cuda":
        result["correctness"] = check_cuda(dev)
        save()

    n_train, n_test, epochs = (1280, 256, 1) if args.small else (51200, 2000, 2)
    data_root = write_cifar10(out / "data", n_train, n_test)
    base = load_config("configs/cifar10_resnet18_ec005.yaml", [
        f"data.root={data_root}", f"data.train_subset={n_train}", f"epochs={epochs}",
        "progress=false", "eval_every=0"])
    if args.small:
        base = replace(base, data=replace(base.data, batch_size=128, eval_batch_size=256))
    result["throughput"] = []
    for name in ("resnet18_irnet", "resnet18_irnet_fp"):
        cfg = replace(base, model=replace(base.model, name=name))
        result["throughput"].append(throughput(cfg, out / f"run_{name}", dev))
        save()
    t = {r["model"]: r["images_per_s_last_epoch"] for r in result["throughput"]}
    result["sbnn_vs_fp_time_ratio"] = t["resnet18_irnet_fp"] / t["resnet18_irnet"]
    save()

    from sbnn.pipeline.sweep import run_sweep

    sweep_cfg = replace(base, epochs=1, data=replace(base.data, train_subset=min(n_train, 10240)))
    t0 = time.perf_counter()
    rows = run_sweep(sweep_cfg, out / "sweep", [0.5, 0.05], ["ab", "pm1"], [0], latency=False)
    result["sweep"] = {"wall_s": time.perf_counter() - t0,
                       "rows": [{k: r.get(k) for k in ("domain", "ec", "test_accuracy",
                                                       "ones_fraction", "bits_per_binary_weight")}
                                for r in rows]}
    save()


if __name__ == "__main__":
    main()
