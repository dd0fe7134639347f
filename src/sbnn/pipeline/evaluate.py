"""Evaluate trained runs and exported models: ``sbnn evaluate``.

``load_model(RUN_DIR_OR_CHECKPOINT)`` rebuilds the network from the config stored in the checkpoint
(``best.pt`` in a run folder when ``which="best"``, else ``last.pt``), loads its weights and
returns it in eval mode. :func:`make_report` computes what ``report.json`` and the final table
hold: test accuracy, global and per-layer ones fraction, entropy, all-zero kernels and filters,
alpha/beta, and the weight memory in bits (full-precision layers counted apart).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sbnn.pipeline.runs import checkpoint_path, load_checkpoint, load_model

__all__ = ["evaluate_loader", "make_report", "format_report", "evaluate_run", "evaluate_engine",
           "format_engine_report"]


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader) -> dict:
    """Top-1 accuracy (fraction) and mean cross-entropy of ``model`` over ``loader``."""
    was_training = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for x, y in loader:
        out = model(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        total += len(y)
    model.train(was_training)
    return {"accuracy": correct / max(1, total), "loss": loss_sum / max(1, total), "n": total}


def make_report(model: nn.Module, test_loader=None, cfg=None) -> dict:
    """Accuracy (when ``test_loader`` is given) and the sparsity/memory statistics of ``model``."""
    from sbnn.method.constraint import sb_layers
    from sbnn.pipeline.config import to_dict
    from sbnn.verbs.stats import layer_stats, model_bits

    report: dict = {}
    if test_loader is not None:
        ev = evaluate_loader(model, test_loader)
        report["test_accuracy"] = ev["accuracy"]
        report["test_loss"] = ev["loss"]
        report["test_samples"] = ev["n"]
    layers = layer_stats(model)
    n = sum(r["n"] for r in layers)
    report["ones_fraction"] = (sum(r["ones"] for r in layers) / n) if n else None
    if n:
        from sbnn.method.primitives import entropy

        report["entropy"] = entropy(report["ones_fraction"])
    report["binary_layers"] = len(sb_layers(model))
    report["layers"] = layers
    report["bits"] = model_bits(model)
    if cfg is not None:
        report["config"] = to_dict(cfg)
    return report


def _fmt_level(v) -> str:
    if isinstance(v, list):
        return f"[{min(v):+.3g}..{max(v):+.3g}]"
    return f"{v:+.4f}"


def format_report(report: dict, title: str = "") -> str:
    """The short table printed at the end of a run (and by ``sbnn evaluate``)."""
    lines = []
    if title:
        lines.append(title)
    acc = report.get("test_accuracy")
    head = []
    if acc is not None:
        head.append(f"test accuracy {100 * acc:.2f} %")
    if report.get("ones_fraction") is not None:
        head.append(f"ones fraction {report['ones_fraction']:.4f}")
        head.append(f"H(p) {report['entropy']:.3f} bit")
    if report.get("train_wall_time_s") is not None:
        head.append(f"train time {report['train_wall_time_s']:.0f} s")
    lines.append(", ".join(head))
    layers = report.get("layers") or []
    if layers:
        w = max(len("layer"), *(len(r["name"]) for r in layers))
        lines.append(f"{'layer':<{w}}  {'weights':>8}  {'ones':>7}  {'H(p)':>6}  {'0-kern':>6}  "
                     f"{'0-filt':>6}  {'alpha':>9}  {'beta':>9}")
        for r in layers:
            zk = "-" if r["zero_kernels"] is None else f"{r['zero_kernels']:.3f}"
            lines.append(f"{r['name']:<{w}}  {r['n']:>8}  {r['ones_fraction']:>7.4f}  "
                         f"{r['entropy']:>6.3f}  {zk:>6}  {r['zero_filters']:>6.3f}  "
                         f"{_fmt_level(r['alpha']):>9}  {_fmt_level(r['beta']):>9}")
    b = report.get("bits")
    if b:
        kib = 8 * 1024
        fp = b["full_precision_bits"]
        lines.append(f"weight memory (binary weights {b['binary_weights']}, full-precision params "
                     f"{b['full_precision_params']} = {fp / kib:.1f} KiB counted apart):")
        rows = [("full precision (fp32)", "fp32"), ("dense BNN (1 bit)", "dense"),
                ("SBNN entropy bound", "entropy"), ("SBNN kernel-level", "kernel")]
        for label, key in rows:
            binb = b[f"binary_bits_{key}"]
            per = binb / b["binary_weights"] if b["binary_weights"] else float("nan")
            lines.append(f"  {label:<22} binary {binb / kib:>9.1f} KiB ({per:6.3f} bit/w)   "
                         f"total {b[f'total_{key}'] / kib:>9.1f} KiB")
    return "\n".join(lines)


def evaluate_run(path: str | os.PathLike, which: str = "last", data_root: str | None = None,
                 dataset: str | None = None, device: str = "auto", batch_size: int = 1000,
                 subset: int | None = None) -> dict:
    """Evaluate the checkpoint at ``path`` on the test split of its dataset (or ``dataset``)."""
    import sbnn.pipeline.data as sdata
    from sbnn.pipeline.config import Config, from_dict
    from sbnn.pipeline.runs import resolve_device

    ckpt = load_checkpoint(path, which)
    cfg = from_dict(Config, ckpt["config"])
    dev = resolve_device(device)
    model = load_model(path, which, device=str(dev))
    name = dataset or cfg.data.name
    root = data_root if data_root is not None else cfg.data.root
    test = sdata.load_dataset(name, root, train=False).subset(subset)
    loader = sdata.BatchLoader(test, batch_size, device=dev)
    report = make_report(model, loader)
    report["checkpoint"] = str(checkpoint_path(path, which))
    report["epoch"] = ckpt.get("epoch")
    return report


def evaluate_engine(path: str | os.PathLike, data_cfg=None, *, dataset: str | None = None,
                    root: str | None = None, batch_size: int = 1000,
                    num_threads: int | None = None, subset: int | None = None,
                    compare_with: str | os.PathLike | None = None, which: str = "last",
                    backend: str = "auto") -> dict:
    """Test accuracy of the ``.sbnn`` model at ``path`` on its dataset's test split.

    ``data_cfg`` is a :class:`sbnn.pipeline.config.DataConfig` (or None: the dataset recorded in the
    file's metadata); ``compare_with`` (a run folder or checkpoint) also runs the PyTorch model
    and counts the test images whose predicted class differs between the two.
    """
    import sbnn.pipeline.data as sdata
    from sbnn.engine import load

    eng = load(path, num_threads, backend=backend)
    name = dataset or (data_cfg.name if data_cfg is not None else None) or \
        eng.graph.metadata.get("dataset")
    if not name:
        raise ValueError(f"{path} does not record its dataset; pass dataset=...")
    root = root if root is not None else (data_cfg.root if data_cfg is not None else None)
    test = sdata.load_dataset(name, root, train=False).subset(subset)
    loader = sdata.BatchLoader(test, batch_size)
    torch_model = None
    if compare_with is not None:
        torch_model = load_model(compare_with, which)
    correct = total = differ = over = 0
    max_rel = 0.0
    t_engine = 0.0
    for x, y in loader:
        t0 = time.perf_counter()
        logits = eng(x)
        t_engine += time.perf_counter() - t0
        pred = logits.argmax(1)
        correct += int((pred == y.numpy()).sum())
        total += len(y)
        if torch_model is not None:
            with torch.no_grad():
                ref = torch_model(x).numpy()
            differ += int((ref.argmax(1) != pred).sum())
            rel = np.abs(ref - logits).max(1) / np.maximum(np.abs(ref).max(1), 1e-30)
            max_rel = max(max_rel, float(rel.max()))
            over += int((rel > 1e-4).sum())
    out: dict[str, Any] = {"engine": os.fspath(path), "backend": eng.backend, "dataset": name,
                           "n": total, "accuracy": correct / max(total, 1),
                           "engine_seconds": t_engine}
    if torch_model is not None:
        out.update({"pytorch_checkpoint": os.fspath(compare_with), "predictions_differ": differ,
                    "max_rel_logit_diff": max_rel, "images_over_1e-4": over})
    return out


def format_engine_report(r: dict) -> str:
    """A few lines for ``sbnn evaluate --engine``."""
    lines = [f"{r['engine']} ({r['backend']} engine) on {r['dataset']} test, {r['n']} images",
             f"  accuracy            {100 * r['accuracy']:.2f} %",
             f"  engine time         {r['engine_seconds']:.2f} s"]
    if "predictions_differ" in r:
        lines += [f"  vs PyTorch          {r['predictions_differ']} predictions differ "
                  f"({r['pytorch_checkpoint']})",
                  f"  max logit gap       {r['max_rel_logit_diff']:.2e} (relative to the "
                  "image's largest logit)",
                  f"  images over 1e-4    {r['images_over_1e-4']} (an activation within float "
                  "rounding of a threshold binarised the other way)"]
    return "\n".join(lines)
