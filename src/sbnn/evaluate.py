"""Load trained runs and evaluate them: ``sbnn.load_model`` and ``sbnn evaluate``.

``load_model(RUN_DIR_OR_CHECKPOINT)`` rebuilds the network from the config stored in the checkpoint
(``best.pt`` in a run folder when ``which="best"``, else ``last.pt``), loads its weights and
returns it in eval mode. :func:`make_report` computes what ``report.json`` and the final table
hold: test accuracy, global and per-layer ones fraction, entropy, all-zero kernels and filters,
alpha/beta, and the weight memory in bits (full-precision layers counted apart).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["load_model", "load_checkpoint", "make_report", "format_report", "evaluate_run"]


def _checkpoint_path(path: str | os.PathLike, which: str = "last") -> Path:
    p = Path(path)
    if p.is_dir():
        order = ["best.pt", "last.pt"] if which == "best" else ["last.pt", "best.pt"]
        for name in order:
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"no checkpoint in '{p}': expected last.pt or best.pt "
                                "(written by `sbnn train`)")
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at '{p}'")
    return p


def load_checkpoint(path: str | os.PathLike, which: str = "last") -> dict:
    """The checkpoint dict of a run folder or ``.pt`` file, on the CPU."""
    return torch.load(_checkpoint_path(path, which), map_location="cpu", weights_only=False)


def load_model(path: str | os.PathLike, which: str = "last", device: str = "cpu") -> nn.Module:
    """The trained model of a run folder (``which``: ``last`` or ``best``) or checkpoint file,
    in eval mode on ``device``."""
    from sbnn.config import Config, from_dict
    from sbnn.train import _reattach_masks, build_model

    ckpt = load_checkpoint(path, which)
    cfg = from_dict(Config, ckpt["config"])
    model = build_model(cfg, ckpt["num_classes"], ckpt["in_chans"])
    model.load_state_dict(ckpt["model"])
    _reattach_masks(model, ckpt)
    return model.to(device).eval()


def make_report(model: nn.Module, test_loader=None, cfg=None) -> dict:
    """Accuracy (when ``test_loader`` is given) and the sparsity/memory statistics of ``model``."""
    from sbnn.config import to_dict
    from sbnn.constraint import sb_layers
    from sbnn.stats import layer_stats, model_bits
    from sbnn.train import evaluate_loader

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
        from sbnn.primitives import entropy

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
    from sbnn import data as sdata
    from sbnn.config import Config, from_dict
    from sbnn.train import resolve_device

    ckpt = load_checkpoint(path, which)
    cfg = from_dict(Config, ckpt["config"])
    dev = resolve_device(device)
    model = load_model(path, which, device=str(dev))
    name = dataset or cfg.data.name
    root = data_root if data_root is not None else cfg.data.root
    test = sdata.load_dataset(name, root, train=False).subset(subset)
    loader = sdata.BatchLoader(test, batch_size, device=dev)
    report = make_report(model, loader)
    report["checkpoint"] = str(_checkpoint_path(path, which))
    report["epoch"] = ckpt.get("epoch")
    return report


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="test accuracy and sparsity/memory statistics of a trained run",
        description="Evaluate RUN_DIR (its last.pt, or best.pt with --best) or a checkpoint file.")
    p.add_argument("path", nargs="?", help="run folder or .pt checkpoint")
    p.add_argument("--engine", metavar="MODEL.sbnn",
                   help="evaluate this exported model on the native engine instead (with PATH: "
                        "also count predictions that differ from the PyTorch model)")
    p.add_argument("--best", action="store_true", help="use best.pt instead of last.pt")
    p.add_argument("--data", dest="data_root", help="dataset folder (default: the run's)")
    p.add_argument("--dataset", help="dataset name (default: the run's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--json", dest="json_out", help="also write the report to this JSON file")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    if args.engine:
        from sbnn.engine import evaluate_engine, format_engine_report

        report = evaluate_engine(args.engine, dataset=args.dataset, root=args.data_root,
                                 batch_size=args.batch_size, compare_with=args.path,
                                 which="best" if args.best else "last")
        print(format_engine_report(report))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
        return 0
    if not args.path:
        raise FileNotFoundError("give a run folder or checkpoint (or --engine MODEL.sbnn)")
    report = evaluate_run(args.path, "best" if args.best else "last", args.data_root,
                          args.dataset, args.device, args.batch_size)
    print(format_report(report, title=f"{report['checkpoint']} (epoch {report['epoch']})"))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0
