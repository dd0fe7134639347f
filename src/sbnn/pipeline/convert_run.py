"""``sbnn convert``: a float checkpoint in, a converted (and optionally fine-tuned) run folder out.

The verb itself is :func:`sbnn.verbs.convert.convert`; this module adds what a run needs:
reading the float checkpoint, BatchNorm recalibration, fine-tuning under the sparsity
constraint, the report, and a run folder like ``sbnn train``'s, written through a temporary
folder so that a failure leaves nothing behind.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from sbnn.method.constraint import sb_layers
from sbnn.pipeline.runs import write_json
from sbnn.verbs.convert import (
    ALLOCATIONS,
    GRANULARITIES,
    ConversionError,
    convert,
    enforce_budget_,
    quantization_errors,
    recalibrate_batchnorm_,
)
from sbnn.verbs.prune import PruneConfig

__all__ = ["ConvertJob", "load_run", "run_convert", "format_comparison"]


def load_run(path, which: str = "last", device: str = "cpu") -> nn.Module:
    """Load a ``sbnn convert`` run (folder or checkpoint) in eval mode.

    The same as :func:`sbnn.pipeline.evaluate.load_model`, which restores per-channel levels
    (``--granularity channel``) and re-attaches the pruning masks the checkpoint holds.
    """
    from sbnn.pipeline.runs import load_model

    return load_model(path, which, device)


# --------------------------------------------------------------------------------------------
# sbnn convert: checkpoint in, run folder out
# --------------------------------------------------------------------------------------------

def _load_float_model(path: str, domain: str | None):
    """(float model, binary twin holding the float weights, twin Config, checkpoint) or a
    ConversionError that says what is wrong with the checkpoint."""
    from sbnn import models
    from sbnn.pipeline.config import Config, ConfigError, from_dict
    from sbnn.pipeline.runs import CheckpointError, build_model, load_checkpoint

    if not os.path.isfile(path):
        raise ConversionError(f"no checkpoint at '{path}' (give a .pt written by `sbnn train`)")
    try:  # the checkpoint's owner checks its keys
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
    try:
        cfg = from_dict(Config, ckpt["config"])
    except ConfigError as e:
        raise ConversionError(f"checkpoint '{path}' holds an invalid config: {e}") from None
    name = cfg.model.name
    if not models.is_registered(name):
        raise ConversionError(
            f"unknown architecture '{name}' in '{path}'; registered: "
            f"{', '.join(models.list_models())}")
    fp = build_model(cfg, ckpt["num_classes"], ckpt["in_chans"])
    if sb_layers(fp):
        raise ConversionError(
            f"'{name}' is already a sparse-binary model; convert a full-precision twin "
            f"({', '.join(models.list_models('*_fp'))})")
    try:
        fp.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ConversionError(f"checkpoint '{path}' does not match architecture '{name}': "
                              f"{str(e).splitlines()[0]}") from None
    twin = name[:-3] if name.endswith("_fp") else None
    if twin is None or not models.is_registered(twin):
        raise ConversionError(
            f"architecture '{name}' has no registered sparse-binary twin (expected "
            f"'{twin or name + ' without _fp'}'); use sbnn.verbs.convert(model, ...) from Python")
    from dataclasses import replace

    tcfg = replace(cfg, model=replace(cfg.model, name=twin, domain=domain or cfg.model.domain))
    sb = build_model(tcfg, ckpt["num_classes"], ckpt["in_chans"])
    miss, unexpected = sb.load_state_dict(ckpt["model"], strict=False)
    # the binary layers' own state (tau/phi, estimator buffers) is not in a float checkpoint
    own = {f"{n}.{k}" for n, m in sb_layers(sb) for k in m.state_dict() if k not in
           ("weight", "bias")}
    bad = [k for k in miss if k not in own]
    if unexpected or bad:
        raise ConversionError(
            f"the float weights of '{name}' do not fit its twin '{twin}': missing {bad}, "
            f"unexpected {list(unexpected)}")
    return fp.eval(), sb, tcfg, ckpt


def _scratch_summary(run_dir: str) -> dict:
    import json
    from pathlib import Path

    p = Path(run_dir)
    rep = p / "report.json"
    if not rep.is_file():
        raise ConversionError(f"--from-scratch: no report.json in '{run_dir}' (a `sbnn train` "
                              "run folder is expected)")
    r = json.loads(rep.read_text())
    cfg = r.get("config") or {}
    return {"run": str(p), "test_accuracy": r.get("test_accuracy"),
            "ones_fraction": r.get("ones_fraction"), "epochs": r.get("epochs"),
            "model": (cfg.get("model") or {}).get("name"),
            "bits_per_binary_weight_kernel": (r.get("bits") or {}).get(
                "bits_per_binary_weight_kernel")}


@dataclass
class ConvertJob:
    """One ``sbnn convert`` run: what :func:`run_convert` does, checked on construction.

    Attributes:
        checkpoint: ``last.pt`` / ``best.pt`` of a full-precision ``sbnn train`` run.
        out: the new run folder (must not exist, or be empty).
        ones: target ones fraction in (0, 1).
        granularity: ``"layer"`` or ``"channel"`` (see :func:`sbnn.verbs.convert.convert`).
        allocation: ``"uniform"`` or ``"global"``.
        prune: pruning applied with the conversion (default: none).
        finetune_epochs: epochs of fine-tuning under the sparsity constraint (0: none).
        from_scratch: a ``sbnn train`` run folder of the same network, for the report.
        domain: the binary twin's domain (None: the checkpoint's).
        gamma: the sparsity penalty's share of the loss in fine-tuning, in [0, 1).
        lr: fine-tuning learning rate (None: the checkpoint's ``optim.lr``).
        data_root, train_subset, test_subset: override the checkpoint's data settings.
        threads: ``torch.set_num_threads`` (None: torch's default).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        progress: show a progress bar while fine-tuning.
        bn_batches: re-estimate BatchNorm statistics on this many training batches.
        seed: seed of the fine-tuning's data order and draws (None: the checkpoint's).

    Raises:
        ConversionError: a value out of range, with the option it came from.
    """

    checkpoint: str
    out: str
    ones: float
    granularity: str = "layer"
    allocation: str = "uniform"
    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune_epochs: int = 0
    from_scratch: str | None = None
    domain: str | None = None
    gamma: float = 0.07
    lr: float | None = None
    data_root: str | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    threads: int | None = None
    device: str = "cpu"
    progress: bool = True
    bn_batches: int = 0
    seed: int | None = None

    def __post_init__(self):
        self.checkpoint, self.out = os.fspath(self.checkpoint), os.fspath(self.out)
        if self.from_scratch is not None:
            self.from_scratch = os.fspath(self.from_scratch)
        o = self.ones
        if isinstance(o, bool) or not isinstance(o, (int, float)) or not 0.0 < o < 1.0:
            raise ConversionError(f"--ones must be a fraction in the open interval (0, 1), "
                                  f"got {o}")
        self.ones = float(o)
        if self.granularity not in GRANULARITIES:
            raise ConversionError(f"--granularity must be one of {', '.join(GRANULARITIES)}, "
                                  f"got {self.granularity!r}")
        if self.allocation not in ALLOCATIONS:
            raise ConversionError(f"--allocation must be one of {', '.join(ALLOCATIONS)}, "
                                  f"got {self.allocation!r}")
        if self.prune is None:
            self.prune = PruneConfig()
        if not isinstance(self.prune, PruneConfig):
            raise ConversionError(f"prune must be a PruneConfig, got {type(self.prune).__name__}")
        for name in ("finetune_epochs", "bn_batches"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConversionError(f"--{name.replace('_', '-')} must be an integer >= 0, "
                                      f"got {v!r}")
        for name in ("train_subset", "test_subset", "threads"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConversionError(f"--{name.replace('_', '-')} must be an integer >= 1, "
                                      f"got {v!r}")
        s = self.seed
        if s is not None and (isinstance(s, bool) or not isinstance(s, int)):
            raise ConversionError(f"--seed must be an integer, got {self.seed!r}")
        from sbnn.pipeline.config import ConfigError, check_device, max_threads

        if self.threads is not None and self.threads > max_threads():
            raise ConversionError(f"--threads must be at most {max_threads()} (4 x the CPUs), "
                                  f"got {self.threads}")
        try:
            check_device(self.device)
        except ConfigError as e:
            raise ConversionError(f"--{e}") from None
        g = self.gamma
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not 0.0 <= g < 1.0:
            raise ConversionError(f"--gamma must be a share in [0, 1), got {g}")
        self.gamma = float(g)
        if self.lr is not None and (isinstance(self.lr, bool) or not isinstance(
                self.lr, (int, float)) or not self.lr > 0):
            raise ConversionError(f"--lr must be > 0, got {self.lr}")


def run_convert(job: ConvertJob) -> dict:
    """What ``sbnn convert`` does; returns the report dict. Everything is written to a temporary
    folder next to ``job.out`` and renamed to it at the end, so a failure leaves no ``out``."""
    from sbnn.pipeline.checks import format_warnings
    from sbnn.pipeline.evaluate import format_report
    from sbnn.pipeline.runs import resolve_device

    if not isinstance(job, ConvertJob):
        raise TypeError(f"run_convert takes a ConvertJob, got {type(job).__name__}")
    outp = _check_out(job.out)  # the disk is checked before anything is written
    scratch = _scratch_summary(job.from_scratch) if job.from_scratch else None
    if job.threads:
        torch.set_num_threads(job.threads)
    fp, model, cfg, ckpt = _load_float_model(job.checkpoint, job.domain)
    dev = resolve_device(job.device)
    model, info = convert(model, job.ones, job.granularity, job.allocation, prune=job.prune,
                          inplace=True, return_info=True)
    q_before = quantization_errors(info["float_weights"], model)
    cfg = _run_config(job, cfg, outp, dev)
    data = _load_data(job, cfg, dev)
    fp, model = fp.to(dev), model.to(dev)
    acc = _start_accuracies(job, cfg, fp, model, data)
    report = _write_run(job, outp, cfg, model, ckpt, info, data, acc, scratch, q_before)
    print(format_report(report, title=f"converted run {outp}"))
    print(format_comparison(report))
    print(format_warnings(report["warnings"]), end="")
    return report


def _check_out(out: str):
    from pathlib import Path

    outp = Path(out)
    if outp.exists() and (not outp.is_dir() or any(outp.iterdir())):
        raise ConversionError(f"--out '{out}' exists and is not empty; choose a new run "
                              "folder")
    return outp


def _run_config(job: ConvertJob, cfg, outp, dev):
    """The converted run's config: the checkpoint's, with the job's overrides."""
    from dataclasses import replace

    d = cfg.data
    return replace(
        cfg, epochs=job.finetune_epochs, out=str(outp), device=str(dev), threads=job.threads,
        progress=job.progress, seed=cfg.seed if job.seed is None else job.seed,
        data=replace(d, root=job.data_root if job.data_root is not None else d.root,
                     train_subset=job.train_subset if job.train_subset is not None
                     else d.train_subset,
                     test_subset=job.test_subset if job.test_subset is not None
                     else d.test_subset),
        optim=replace(cfg.optim, lr=job.lr if job.lr is not None else cfg.optim.lr),
        # fine-tuning always clamps (the budget trim after each step assumes it)
        sparsity=replace(cfg.sparsity, ec=job.ones, gamma=job.gamma, init="none", clamp=True))


def _load_data(job: ConvertJob, cfg, dev) -> dict:
    """The test loader, and the training set when BatchNorm recalibration or fine-tuning
    needs it."""
    import sbnn.pipeline.data as sdata

    d = cfg.data
    test_set = sdata.load_dataset(d.name, d.root, train=False).subset(d.test_subset)
    train_set = None
    if job.bn_batches or job.finetune_epochs:
        train_set = sdata.load_dataset(d.name, d.root, train=True).subset(d.train_subset)
    return {"test": sdata.BatchLoader(test_set, d.eval_batch_size, device=dev),
            "train_set": train_set}


def _start_accuracies(job: ConvertJob, cfg, fp, model, data) -> dict:
    """Test accuracy of the float model, of the converted one, and after BatchNorm
    recalibration (``None`` without ``bn_batches``), which updates ``model`` in place."""
    import sbnn.pipeline.data as sdata
    from sbnn.pipeline.evaluate import evaluate_loader

    acc = {"fp": evaluate_loader(fp, data["test"])["accuracy"],
           "conv": evaluate_loader(model, data["test"])["accuracy"], "recal": None}
    if job.bn_batches:
        calib = sdata.BatchLoader(data["train_set"], cfg.data.batch_size, shuffle=True,
                                  device=model_device(model), seed=cfg.seed + 12345)
        recalibrate_batchnorm_(model, itertools.islice(iter(calib), job.bn_batches))
        acc["recal"] = evaluate_loader(model, data["test"])["accuracy"]
    return acc


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _write_run(job: ConvertJob, outp, cfg, model, ckpt, info, data, acc, scratch,
               q_before) -> dict:
    """Write the run into ``.OUT.tmp-PID`` (fine-tuning on the way) and rename it to ``out``;
    any failure removes the temporary folder. Returns the report."""
    import shutil

    from sbnn.pipeline.checks import run_warnings
    from sbnn.pipeline.runs import save_config

    tmp = outp.parent / f".{outp.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        save_config(cfg, tmp / "config.yaml")
        best, wall = _checkpoints_and_metrics(job, tmp, cfg, model, ckpt, info, data, acc)
        report = _convert_report(job, tmp, cfg, model, info, data, acc, scratch, q_before,
                                 best, wall)
        report["warnings"] = run_warnings(model, report, job.ones, ckpt["num_classes"],
                                          data["test"], pruned_filters=job.prune.filters)
        write_json(tmp / "report.json", report)
        if outp.exists():
            outp.rmdir()
        os.replace(tmp, outp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _checkpoints_and_metrics(job: ConvertJob, tmp, cfg, model, ckpt, info, data, acc
                             ) -> tuple[float, float]:
    """best.pt (the converted model, then every better fine-tuned epoch), last.pt and
    metrics.jsonl; returns the best test accuracy and the fine-tuning time."""
    import time

    import sbnn.pipeline.data as sdata
    from sbnn.pipeline.config import to_dict
    from sbnn.pipeline.evaluate import evaluate_loader
    from sbnn.pipeline.runs import make_checkpoint, save_checkpoint, write_text

    source = os.path.abspath(job.checkpoint)

    def checkpoint_dict(epoch: int, best: float) -> dict:
        return make_checkpoint(
            model, to_dict(cfg), ckpt["num_classes"], ckpt["in_chans"], epoch, best,
            convert={"source": source, "ones": job.ones, "granularity": job.granularity,
                     "allocation": job.allocation, "prune": job.prune.to_dict(),
                     "budgets": info["budgets"]})

    acc0 = acc["conv"] if acc["recal"] is None else acc["recal"]
    metrics = [{"epoch": 0, "test_accuracy": acc0, "ones_fraction": _ones(model),
                "stage": "converted" if acc["recal"] is None else "converted+bn"}]
    best = acc0
    save_checkpoint(checkpoint_dict(0, best), tmp / "best.pt")
    t0 = time.perf_counter()
    if job.finetune_epochs:
        d = cfg.data
        loader = sdata.BatchLoader(
            data["train_set"], d.batch_size, shuffle=True, device=model_device(model),
            seed=cfg.seed, augment=sdata.Augment(d.crop_padding, d.hflip, d.rotation))
        metrics += _finetune(model, cfg, loader, data["test"], info["budgets"],
                             job.granularity, evaluate_loader, job.progress)
        for row in metrics[1:]:
            if row["test_accuracy"] > best:
                best = row["test_accuracy"]
                save_checkpoint(checkpoint_dict(row["epoch"], best), tmp / "best.pt")
    save_checkpoint(checkpoint_dict(job.finetune_epochs, best), tmp / "last.pt")
    write_text(tmp / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in metrics))
    return best, time.perf_counter() - t0


def _convert_report(job: ConvertJob, tmp, cfg, model, info, data, acc, scratch, q_before,
                    best: float, wall: float) -> dict:
    """The run's report: :func:`make_report` plus what the conversion did (``convert``);
    writes ``shrunk_model.pt`` when filters were pruned and shrinking is on."""
    from sbnn.pipeline.evaluate import make_report
    from sbnn.verbs.prune import prune_stats

    model.eval()
    test_loader = data["test"]
    report = make_report(model, test_loader, cfg=cfg)
    report["best_test_accuracy"] = best
    report["epochs"] = job.finetune_epochs
    report["train_wall_time_s"] = wall
    x = next(iter(test_loader))[0][:8]
    prune = job.prune
    conv = {
        "source": os.path.abspath(job.checkpoint), "ones": job.ones,
        "granularity": job.granularity, "allocation": job.allocation,
        "domain": cfg.model.domain, "prune": prune.to_dict(),
        "finetune_epochs": job.finetune_epochs, "gamma": job.gamma, "lr": cfg.optim.lr,
        "bn_batches": job.bn_batches,
        "accuracy": {"full_precision": acc["fp"], "converted": acc["conv"],
                     "converted_bn_recalibrated": acc["recal"],
                     "finetuned": report["test_accuracy"] if job.finetune_epochs else None,
                     "from_scratch": scratch["test_accuracy"] if scratch else None},
        "from_scratch": scratch,
        "quantization_error_converted": q_before,
        "quantization_error_final": quantization_errors(info["float_weights"], model),
        "pruning": prune_stats(model, x),
    }
    if prune.filters and prune.shrink:
        conv["shrink"] = _shrink_copy(model, x, tmp / "shrunk_model.pt")
    report["convert"] = conv
    return report


def _ones(model: nn.Module) -> float:
    layers = sb_layers(model)
    n = sum(m.weight.numel() for _, m in layers)
    return sum(int(m.bits().sum()) for _, m in layers) / n


def _finetune(model, cfg, loader, test_loader, budgets, granularity, evaluate_loader,
              progress) -> list[dict]:
    """Fine-tune with the sparsity constraint through the trainer's epoch loop
    (:func:`sbnn.pipeline.train.run_epoch`); after every step the latent weights are clamped and
    every group is trimmed back to its converted budget of ones (so p never exceeds it)."""
    import time

    from sbnn.method.constraint import SparsityConstraint
    from sbnn.pipeline.train import make_optimizer, make_scheduler, run_epoch
    from sbnn.verbs.prune import project_

    cons = SparsityConstraint(model, ec=cfg.sparsity.ec, gamma=cfg.sparsity.gamma)
    opt = make_optimizer(cfg, model)
    sched = make_scheduler(cfg, opt, len(loader))

    def trim() -> None:
        enforce_budget_(model, budgets, granularity)

    from sbnn.pipeline.logs import RunLog

    # a bar on a terminal only; off one, the epoch lines below (and every cfg.log_every steps)
    bar = RunLog(cfg.epochs * len(loader), progress=progress, every=cfg.log_every,
                 desc="fine-tune")
    rows = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        tr = run_epoch(model, loader, opt, sched, cons, cfg, epoch, after_step=trim, bar=bar)
        project_(model)
        trim()
        ev = evaluate_loader(model, test_loader)
        rows.append({"epoch": epoch + 1, **tr,
                     "test_accuracy": ev["accuracy"], "test_loss": ev["loss"],
                     "ones_fraction": _ones(model), "lr": opt.param_groups[0]["lr"],
                     "epoch_time_s": time.perf_counter() - t0, "stage": "finetune"})
        bar.write(f"fine-tune epoch {epoch + 1}/{cfg.epochs}: test acc {ev['accuracy']:.4f}, "
                  f"ones {rows[-1]['ones_fraction']:.4f}")
    bar.close()
    return rows


def _shrink_copy(model: nn.Module, x: torch.Tensor, path) -> dict:
    """Physically remove the dead filters of a copy, check its outputs equal the original's on
    ``x`` and save its tensors (:func:`sbnn.pipeline.runs.save_shrunk`; read back with
    :func:`sbnn.pipeline.runs.load_shrunk`). Its shapes differ from the registry's: evaluate and
    export keep using last.pt, which keeps dead filters as all-zero ones."""
    from sbnn.pipeline.runs import save_shrunk
    from sbnn.verbs.prune import detach_, prune_stats, shrink_

    small = copy.deepcopy(model).eval()
    detach_(small)
    with torch.no_grad():
        y0 = model.eval()(x)
        removed = shrink_(small, x)
        y1 = small(x)
    save_shrunk(small, path, removed)
    return {"removed_filters": removed, "max_abs_output_diff": float((y0 - y1).abs().max()),
            "file": path.name, "pruning_after": prune_stats(small, x)["total"]}


def format_comparison(report: dict) -> str:
    """The short table at the end of ``sbnn convert``."""
    c = report["convert"]
    acc = c["accuracy"]
    rows: list[tuple[str, float | None]] = []

    def row(label, v):
        rows.append((label, v))

    row("full precision (source)", acc["full_precision"])
    row(f"converted, ones {c['ones']} ({c['granularity']}, {c['allocation']})", acc["converted"])
    if acc.get("converted_bn_recalibrated") is not None:
        row(f"  + BatchNorm recalibrated ({c['bn_batches']} batches)",
            acc["converted_bn_recalibrated"])
    if c["finetune_epochs"]:
        row(f"after {c['finetune_epochs']} fine-tuning epoch(s)", acc["finetuned"])
    if c["from_scratch"]:
        row(f"from scratch ({c['from_scratch']['run']})", acc["from_scratch"])
    w = max(len(label) for label, _ in rows)
    lines = [f"{'model':<{w}}  {'test acc':>9}"]
    lines += [f"{label:<{w}}  {'-' if v is None else f'{100 * v:.2f} %':>9}" for label, v in rows]
    lines.append(f"{'layer':<12} {'ones':>7} {'rel. LS error':>14} {'after f-t':>10}")
    after = {r["name"]: r for r in c["quantization_error_final"]}
    for r in c["quantization_error_converted"]:
        a = after.get(r["name"], {}).get("relative")
        lines.append(f"{r['name']:<12} {r['ones_fraction']:>7.4f} {r['relative']:>14.4f} "
                     f"{'-' if a is None else f'{a:.4f}':>10}")
    return "\n".join(lines)
