"""Training loop for sparse binary networks: ``sbnn train`` and :func:`train`.

One epoch: every batch goes through ``loss = CE(model(x), y)`` (mixed up when ``data.mixup_alpha``
> 0), the sparsity penalty ``lambda * h`` of :class:`sbnn.SparsityConstraint` is added, the
optimiser steps, the learning rate follows a per-step cosine, and the latent weights are clamped to
[-1.5, 1.5]. EDE estimators advance their (t, k) with the epoch. With ``sparsity.init =
closed_form`` the latent weights start exactly at the target ones fraction (closed-form split),
which a short run needs: the authors' penalty moves the ones fraction only slowly.

A run folder holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one line per epoch),
``last.pt`` / ``best.pt`` (written atomically) and ``report.json``. ``resume=RUN_DIR`` continues
from ``last.pt`` and gives the same weights as an uninterrupted run (data order and augmentation are
functions of (seed, epoch, rank); RNG states are restored too).

Under ``torchrun`` the model is wrapped in DistributedDataParallel (gloo on CPU, nccl on CUDA);
each rank reads its own shard, only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shlex
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import sbnn.pipeline.data as sdata
from sbnn import models
from sbnn.pipeline.config import (
    Config,
    ConfigError,
    from_dict,
    to_dict,
    validate,
)
from sbnn.pipeline.evaluate import evaluate_loader
from sbnn.pipeline.runs import (
    CheckpointError,
    RunLock,
    append_jsonl,
    build_model,
    check_run_dir,
    clean_tmp_files,
    create_run_dir,
    load_checkpoint,
    make_checkpoint,
    reattach_masks,
    resolve_device,
    rng_state,
    save_checkpoint,
    save_config,
    set_rng_state,
    write_json,
    write_text,
)

__all__ = ["Trainer", "TrainingInterrupted", "train", "run_epoch", "make_optimizer", "level_scales",
           "make_scheduler", "cpu_model"]


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------

def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def level_scales(model: nn.Module) -> list[tuple[list[nn.Parameter], float]]:
    """``(levels, size)`` for every sparse-binary layer with trainable levels: its tau (and phi)
    that require a gradient, and their size ``mean |tau|`` now (1.0 when tau is 0 or not
    finite). Read when the optimiser is built, i.e. right after the start (closed-form fit or
    the authors' tau = 1)."""
    from sbnn.method.layers import SBLayer

    out = []
    for m in _unwrap(model).modules():
        if not isinstance(m, SBLayer) or not hasattr(m, "tau"):
            continue
        levels = [p for p in (m.tau, getattr(m, "phi", None))
                  if p is not None and p.requires_grad]
        if levels:
            size = float(m.tau.detach().abs().mean())
            out.append((levels, size if math.isfinite(size) and size > 0 else 1.0))
    return out


def _param_groups(cfg: Config, model: nn.Module) -> list:
    """The parameters to optimise: one group, or with ``optim.level_lr = relative`` one group
    per binary layer's levels with the learning rate scaled by their size (``lr * size`` for
    Adam/AdamW, ``lr * size**2`` for SGD: either way the same as training ``tau / size`` and
    ``phi / size`` with ``lr``).

    Why: with a BatchNorm after the layer only ``r = alpha / (beta - alpha)`` matters, and Adam
    moves tau and phi by about ``lr`` a step whatever their size. From the closed-form start
    (``|tau|`` 0.015-0.04 on the main job) a step of 1e-3 moves r by up to ``lr / |tau|``,
    0.03-0.07, where r's useful range at ones fraction p is about ``sqrt(p)``: at EC 0.01 a few
    steps made the shared window-sum dominate the layer (docs/study_domains/README.md). From the
    authors' start (tau = 1) nothing changes."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optim.level_lr != "relative":
        return params
    levels = level_scales(model)
    if not levels:
        return params
    power = 2 if cfg.optim.name == "sgd" else 1
    taken = {id(p) for ps, _ in levels for p in ps}
    groups = [{"params": [p for p in params if id(p) not in taken]}]
    groups += [{"params": ps, "lr": cfg.optim.lr * size ** power} for ps, size in levels]
    return groups


def make_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser of ``cfg.optim`` over the trainable parameters of ``model``; the binary
    layers' levels get their own learning rate under ``optim.level_lr = relative``
    (:func:`_param_groups`)."""
    o = cfg.optim
    params = _param_groups(cfg, model)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                               nesterov=o.momentum > 0)
    raise ValueError(f"unknown optimizer '{o.name}'; valid: adam, adamw, sgd")


def make_scheduler(cfg: Config, opt: torch.optim.Optimizer, steps_per_epoch: int):
    """Linear warm-up over ``warmup_epochs``, then cosine to 0 (or constant).

    ``optim.schedule_step = "step"``: the scheduler is stepped after every batch (a smooth curve,
    better for short runs: a 4-epoch run would otherwise keep 4 flat learning rates).
    ``"epoch"``: stepped once per epoch, as the authors' ``CosineAnnealingLR(T_max=epochs)``.
    """
    o = cfg.optim
    if o.schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule '{o.schedule}'; valid: cosine, constant")
    if o.schedule_step not in ("step", "epoch"):
        raise ValueError(f"unknown schedule_step '{o.schedule_step}'; valid: step, epoch")
    per = steps_per_epoch if o.schedule_step == "step" else 1
    total = max(1, cfg.epochs * per)
    warm = o.warmup_epochs * per

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if o.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _check_input_size(model: nn.Module, data, cfg: Config, device) -> None:
    """Run two training images through the model once, so an image size the model does not
    take fails here, before the run folder exists, with a message that says so."""
    x = data.images[:2].to(device).float()
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except (RuntimeError, ValueError, ZeroDivisionError, IndexError) as e:
        raise ConfigError(
            f"data: images of shape {tuple(data.images.shape[1:])} (C, H, W) from '{cfg.data.name}'"
            f" do not fit model.name {cfg.model.name!r}: {str(e).splitlines()[0]}") from None
    finally:
        model.train(was)


class NotExportableError(ConfigError):
    """The model holds layers ``sbnn export`` would refuse: said before training, not after.
    ``problems``: ``[(layer, why), ...]``; :meth:`details` says why for each."""

    def __init__(self, model_name: str, problems: list[tuple[str, str]]):
        self.problems = problems
        names = ", ".join(n for n, _ in problems)
        super().__init__(
            f"model {model_name!r}: {len(problems)} layer(s) cannot be exported, so the trained "
            f"model could not be deployed: {names}. Nothing was trained; see why with --verbose")

    def details(self) -> str:
        return "\n".join(f"  {n}: {why}" for n, why in self.problems)


def _check_exportable(model: nn.Module, data, cfg: Config) -> None:
    """Trace the model through the exporter on the data's image shape: a layer that ``sbnn
    export`` cannot take stops the run here, before the first step (and before its folder)."""
    from sbnn.deploy.export import export_problems

    problems = export_problems(model, tuple(int(v) for v in data.images.shape[1:]))
    if problems:
        raise NotExportableError(cfg.model.name, problems)


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else ``platform.processor()``)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "cpu model", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_sb_layers(model: nn.Module) -> bool:
    from sbnn.method.constraint import sb_layers

    return bool(sb_layers(model))


def run_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scheduler,
              constraint, cfg: Config, epoch: int, *, after_step=None, bar=None,
              rank: int = 0) -> dict:
    """One training epoch over ``loader``; the loop of ``sbnn train`` and of ``sbnn convert``'s
    fine-tuning.

    Per batch: ``loss = CE(model(x), y)`` (mixed up when ``cfg.data.mixup_alpha`` > 0), plus the
    penalty of ``constraint`` (a :class:`sbnn.method.constraint.SparsityConstraint`, or None for
    a float model), backward, ``optimizer.step()``, ``scheduler.step()`` (per step), the clamp of
    the latent weights when ``cfg.sparsity.clamp``, then ``after_step()`` if given (convert trims
    every group back to its budget of ones there). ``model`` may be DDP-wrapped. The data order,
    augmentation and mixup draws are functions of ``(cfg.seed, epoch, rank)``, so a resumed run
    repeats them. ``bar``: a tqdm bar advanced per batch. Returns ``train_loss``,
    ``train_accuracy`` and ``penalty`` (means over the samples seen).
    """
    model.train()
    loader.set_epoch(epoch)
    if cfg.sparsity.ede_schedule:
        from sbnn.method import estimators

        estimators.set_progress(_unwrap(model), epoch, cfg.epochs)
    mix_rng = np.random.default_rng([cfg.seed, epoch, rank])
    mix_g = torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 31 + rank)
    alpha = cfg.data.mixup_alpha
    loss_sum, correct, seen, pen_sum = 0.0, 0.0, 0, 0.0
    for x, y in loader:
        if alpha > 0:
            x, ya, yb, lam = sdata.mixup(x, y, alpha, g=mix_g, rng=mix_rng)
            out = model(x)
            loss = lam * F.cross_entropy(out, ya) + (1 - lam) * F.cross_entropy(out, yb)
            pred = out.argmax(1)
            correct += float(lam * (pred == ya).sum() + (1 - lam) * (pred == yb).sum())
        else:
            out = model(x)
            loss = F.cross_entropy(out, y)
            correct += float((out.argmax(1) == y).sum())
        total = loss
        if constraint is not None:
            penalty = constraint(loss)
            total = loss + penalty
            pen_sum += float(penalty.detach()) * len(y)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if cfg.optim.schedule_step == "step":
            scheduler.step()
        if constraint is not None and cfg.sparsity.clamp:
            constraint.clamp_()
        if constraint is not None and constraint.mode == "exact":
            constraint.project_()
        if after_step is not None:
            after_step()
        loss_sum += float(loss.detach()) * len(y)
        seen += len(y)
        if bar is not None:
            post = {"loss": f"{loss_sum / seen:.3f}", "acc": f"{correct / seen:.3f}"}
            if constraint is not None:
                post["ones"] = f"{constraint.last.get('ones_fraction', 0):.4f}"
            bar.set_postfix(post, refresh=False)
            bar.update(1)
    return {"train_loss": loss_sum / max(1, seen), "train_accuracy": correct / max(1, seen),
            "penalty": pen_sum / max(1, seen)}


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------

class Trainer:
    """Holds everything one run needs; :meth:`fit` trains and returns the report dict.

    ``out``: run folder (default ``cfg.out`` or ``runs/<model>-<time>``). ``resume``: a run folder
    (or its ``last.pt``) to continue from; its ``config.yaml`` is used unless ``cfg`` is given.
    ``stop_after``: end after this many epochs in total, as if killed right after that epoch's
    checkpoint (used by the resume tests).
    """

    def __init__(self, cfg: Config | None = None, out: str | os.PathLike | None = None,
                 resume: str | os.PathLike | None = None, stop_after: int | None = None,
                 overwrite: bool = False):
        # Everything is checked (config values, checkpoint, data, model) before the run folder
        # is created or touched, so a bad value never leaves a half-made run behind.
        self.stop_after = stop_after
        self.overwrite = overwrite
        self._lock = None
        cfg, ckpt, ckpt_path, out = self._read_resume(cfg, out, resume)
        self._setup_processes(cfg)
        self._plan_run_folder(cfg, out, ckpt_path if ckpt is not None else None)
        train_set = self._setup_data()
        self._setup_model(train_set)
        self._restore(ckpt, ckpt_path)
        self._open_run_folder()

    @staticmethod
    def _read_resume(cfg, out, resume):
        """``(validated config, checkpoint or None, its path, out)``; the checkpoint's config
        is used when none is given."""
        ckpt = ckpt_path = None
        if resume is not None:
            rpath = Path(resume)
            ckpt_path = rpath / "last.pt" if rpath.is_dir() else rpath
            if not ckpt_path.is_file():
                raise FileNotFoundError(f"cannot resume: no checkpoint at '{ckpt_path}'")
            ckpt = load_checkpoint(ckpt_path)
            if cfg is None:
                cfg = from_dict(Config, ckpt["config"])
            # a run continues with the level steps it started with (its optimiser state has
            # that many groups); a checkpoint from before optim.level_lr stepped them absolutely
            saved = ckpt["config"].get("optim") if isinstance(ckpt["config"], dict) else None
            level_lr = saved.get("level_lr", "absolute") if isinstance(saved, dict) else "absolute"
            if level_lr in ("relative", "absolute") and cfg.optim.level_lr != level_lr:
                cfg = replace(cfg, optim=replace(cfg.optim, level_lr=level_lr))
            out = out or ckpt_path.parent
        return validate(cfg if cfg is not None else Config()), ckpt, ckpt_path, out

    def _setup_processes(self, cfg: Config) -> None:
        """Rank, world size and device (torchrun), the process group, threads."""
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(cfg.device, self.local_rank)
        self.distributed = self.world > 1
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend=backend, rank=self.rank, world_size=self.world)
        self.is_main = self.rank == 0
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest

    def _plan_run_folder(self, cfg: Config, out, ckpt_path: Path | None) -> None:
        """The run folder: checked now, created once everything else is known to work."""
        if out is None:
            out = cfg.out or f"runs/{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.out = Path(out)
        self.resuming = (ckpt_path is not None
                         and self.out.resolve() == ckpt_path.parent.resolve())
        if not self.resuming:
            check_run_dir(self.out, self.overwrite)
        self.cfg = replace(cfg, out=str(self.out))

    def _setup_data(self):
        """The train and test loaders; returns the training set (its images check the model)."""
        d = self.cfg.data
        train_set = sdata.load_dataset(d.name, d.root, train=True).subset(d.train_subset)
        test_set = sdata.load_dataset(d.name, d.root, train=False).subset(d.test_subset)
        for split, ds in (("train", train_set), ("test", test_set)):
            if len(ds) == 0:
                raise ConfigError(f"data: the {split} split of '{d.name}' at "
                                  f"{d.root or 'its default folder'} is empty; expected at "
                                  "least one sample")
        self.num_classes = train_set.num_classes
        self.in_chans = train_set.images.shape[1]
        augment = sdata.Augment(d.crop_padding, d.hflip, d.rotation)
        self.train_loader = sdata.BatchLoader(
            train_set, d.batch_size, shuffle=True, augment=augment, device=self.device,
            seed=self.cfg.seed, rank=self.rank, world_size=self.world)
        self.test_loader = sdata.BatchLoader(test_set, d.eval_batch_size, device=self.device)
        return train_set

    def _setup_model(self, train_set) -> None:
        """Model (its starting weights, pruning masks), sparsity constraint, optimiser and
        learning-rate schedule."""
        _seed_all(self.cfg.seed)
        model = build_model(self.cfg, self.num_classes, self.in_chans).to(self.device)
        from sbnn.method.layers import set_fixed_r_

        set_fixed_r_(model, -self.cfg.sparsity.ec)  # the abr domain's r (no-op for the others)
        _check_input_size(model, train_set, self.cfg, self.device)
        _check_exportable(model, train_set, self.cfg)
        arch = models.architecture_kwargs(model, self.cfg.model.kwargs)
        if arch != self.cfg.model.kwargs:  # record the defaults too: see architecture_kwargs
            self.cfg = replace(self.cfg, model=replace(self.cfg.model, kwargs=arch))
        self.binary = has_sb_layers(model)
        self.constraint = None
        if self.binary:
            try:
                self._init_binary(model)
            except ValueError as e:  # e.g. a layer too small for the ones fraction
                raise ConfigError(f"sparsity / model.kwargs: {str(e).splitlines()[0]}") from None
        self.model = model
        self.optimizer = make_optimizer(self.cfg, model)
        self.scheduler = make_scheduler(self.cfg, self.optimizer, len(self.train_loader))
        self.start_epoch = 0
        self.best_acc = -1.0
        self.best_epoch = None

    def _init_binary(self, model: nn.Module) -> None:
        """The sparsity constraint, the latent weights' start, and the pruning masks."""
        from sbnn.method.constraint import SparsityConstraint, sb_layers
        from sbnn.method.layers import SCALE_ONLY_DOMAINS
        from sbnn.verbs.binarize import LEVEL_STARTS, init_authors_, init_closed_form_

        s = self.cfg.sparsity
        self.constraint = SparsityConstraint(model, ec=s.ec, gamma=s.gamma, mode=s.mode)
        if s.levels not in LEVEL_STARTS:
            raise ValueError(f"unknown sparsity.levels '{s.levels}'; valid: "
                             f"{', '.join(LEVEL_STARTS)}")
        if s.init == "closed_form" and s.ec < 0.5:
            init_closed_form_(model, s.ec, levels=s.levels)
        elif s.init == "authors":
            init_authors_(model)
        elif s.init not in ("closed_form", "none"):
            raise ValueError(f"unknown sparsity.init '{s.init}'; valid: closed_form, "
                             "authors, none")
        if s.mode == "exact":  # exact count from the start; tau of pm1/01/abr is a scale
            self.constraint.project_()
            for _, m in sb_layers(model):
                if m.domain in SCALE_ONLY_DOMAINS:
                    m.tau.requires_grad_(False)
        if self.cfg.prune.active:  # pruning masks that training keeps (sbnn.verbs.prune)
            from sbnn.verbs.prune import prune_

            prune_(model, self.cfg.prune)

    def _restore(self, ckpt: dict | None, ckpt_path) -> None:
        """Load a resumed run's weights, masks, optimiser, schedule and RNG states; then wrap
        the model for DDP."""
        model = self.model
        if ckpt is not None:
            try:
                model.load_state_dict(ckpt["model"])
                reattach_masks(model, ckpt)
                self.optimizer.load_state_dict(ckpt["optimizer"])
                self.scheduler.load_state_dict(ckpt["scheduler"])
                set_rng_state(ckpt["rng"])
            except (RuntimeError, KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"cannot resume from '{ckpt_path}': "
                                      f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                      ) from None
            self.start_epoch = int(ckpt["epoch"])
            self.best_acc = float(ckpt.get("best_acc", -1.0))
            self.best_epoch = ckpt.get("best_epoch")
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        else:
            self.ddp = model

    def _open_run_folder(self) -> None:
        """Create (or, resuming, reopen) the run folder under its lock and write config.yaml.
        A failure here (a full disk, a read-only folder, another writer) leaves no folder."""
        self.global_batch = self.cfg.data.batch_size * self.world
        self._made_dir = False
        self._saved_epoch = None
        self._lock = RunLock(self.out)
        if not self.is_main:
            return
        try:
            if self.resuming:
                self._lock.acquire()
                clean_tmp_files(self.out)
            else:
                self._made_dir = not self.out.exists()
                create_run_dir(self.out, self.overwrite, lock=self._lock)
            save_config(self.cfg, self.out / "config.yaml", header=self._run_header())
            if self.resuming:
                self._truncate_metrics(self.start_epoch)
        except BaseException:
            self._cleanup_failed_start()
            self._lock.release()
            raise
        if self.distributed:
            print(self._run_header(), flush=True)

    def _run_header(self) -> str | None:
        if not self.distributed:
            return None
        return (f"torchrun: world size {self.world}, data.batch_size {self.cfg.data.batch_size} "
                f"per rank, global batch {self.global_batch}")

    # ----------------------------------------------------------------------------------------
    def _truncate_metrics(self, epochs_done: int) -> None:
        """Drop metric lines of epochs after the checkpoint (written before a kill)."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        keep = []
        for ln in path.read_text().splitlines():
            try:
                row = json.loads(ln)
            except json.JSONDecodeError:  # a line torn by a kill mid-append
                continue
            if isinstance(row, dict) and row.get("epoch", epochs_done + 1) <= epochs_done:
                keep.append(ln)
        write_text(path, "".join(ln + "\n" for ln in keep))

    def _best_epoch_from_metrics(self) -> int | None:
        """After a resume: the epoch of the best test accuracy, from metrics.jsonl."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return None
        rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        rows = [r for r in rows if r.get("test_accuracy") is not None]
        return max(rows, key=lambda r: r["test_accuracy"])["epoch"] if rows else None

    def ones_fraction(self) -> float | None:
        if self.constraint is None:
            return None
        with torch.no_grad():
            return float(self.constraint.ones_fraction())

    def checkpoint(self, epoch: int) -> dict:
        ckpt = make_checkpoint(self.model, to_dict(self.cfg), self.num_classes, self.in_chans,
                               epoch, self.best_acc, optimizer=self.optimizer,
                               scheduler=self.scheduler, rng=rng_state())
        ckpt["best_epoch"] = self.best_epoch
        ckpt["world_size"] = self.world
        return ckpt

    def _reduce(self, row: dict) -> dict:
        """Train loss / accuracy / penalty averaged over every rank (each rank sees the same
        number of samples, so the plain mean is the mean over all samples)."""
        if not self.distributed:
            return row
        keys = [k for k in ("train_loss", "train_accuracy", "penalty") if k in row]
        t = torch.tensor([float(row[k]) for k in keys], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return {**row, **{k: float(v) / self.world for k, v in zip(keys, t.tolist(),
                                                                    strict=True)}}

    def train_epoch(self, epoch: int, bar=None) -> dict:
        return run_epoch(self.ddp, self.train_loader, self.optimizer, self.scheduler,
                         self.constraint, self.cfg, epoch, bar=bar, rank=self.rank)

    def fit(self, log_json: str | None = None) -> dict:
        """Train; returns the report. ``log_json``: also append machine-readable events
        (:class:`sbnn.pipeline.logs.RunLog`) to this file. SIGINT/SIGTERM end training with
        :class:`TrainingInterrupted` (its message names the command that resumes the run); a
        failure before the first checkpoint leaves no run folder, a later one keeps the last
        complete checkpoint."""
        try:
            with _signals_as_interrupt():
                return self._fit(log_json)
        except KeyboardInterrupt:
            self._cleanup_failed_start()
            raise TrainingInterrupted(self._resume_hint("interrupted")) from None
        except OSError as e:  # a full disk, a folder made read-only, ...
            self._cleanup_failed_start()
            if self._saved_epoch is None or not self.is_main:
                raise
            raise OSError(e.errno, f"{e.strerror or e}; {self._resume_hint('stopped')}",
                          e.filename) from None
        except BaseException:
            self._cleanup_failed_start()
            raise
        finally:
            if self._lock is not None:
                self._lock.release()

    def _resume_hint(self, what: str) -> str:
        done = self._saved_epoch if self._saved_epoch is not None else (
            self.start_epoch if self.resuming else None)
        if done is None:
            return (f"{what} before the first checkpoint: nothing was kept; run the same "
                    "command again to start over")
        return (f"{what} after epoch {done}/{self.cfg.epochs} (last.pt holds it); resume with: "
                f"sbnn train --resume {shlex.quote(str(self.out))}")

    def _cleanup_failed_start(self) -> None:
        """A fresh run that fails before its first checkpoint leaves nothing behind. Only the
        process holding the folder's lock touches it (never another writer's run)."""
        if (not self.is_main or self.resuming or self._lock is None or not self._lock.held
                or (self.out / "last.pt").exists()):
            return
        for name in ("config.yaml", "metrics.jsonl", "best.pt"):
            (self.out / name).unlink(missing_ok=True)
        clean_tmp_files(self.out)
        if self._made_dir:
            try:
                self.out.rmdir()
            except OSError:  # something else is in there: leave it
                pass

    def _fit(self, log_json: str | None = None) -> dict:
        from sbnn.pipeline.logs import RunLog

        cfg = self.cfg
        bar = None
        if self.is_main:  # a bar on a terminal only; off one, a line per epoch (and N steps)
            bar = RunLog(cfg.epochs * len(self.train_loader),
                         self.start_epoch * len(self.train_loader), progress=cfg.progress,
                         every=cfg.log_every, json_path=log_json)
            bar.event("start", out=str(self.out), epochs=cfg.epochs,
                      steps_per_epoch=len(self.train_loader), start_epoch=self.start_epoch)
        t_run = time.perf_counter()
        epoch_times = []
        for epoch in range(self.start_epoch, cfg.epochs):
            if bar is not None:
                bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
            t0 = time.perf_counter()
            row = self.train_epoch(epoch, bar)
            self.local_row = dict(row)  # this rank's share, before averaging over ranks
            row = self._reduce(row)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            if cfg.optim.schedule_step == "epoch":
                self.scheduler.step()
            row["epoch_time_s"] = time.perf_counter() - t0
            epoch_times.append(row["epoch_time_s"])
            done = epoch + 1
            last = done == cfg.epochs
            if last or (cfg.eval_every > 0 and done % cfg.eval_every == 0):
                ev = evaluate_loader(_unwrap(self.model), self.test_loader)
                row["test_accuracy"], row["test_loss"] = ev["accuracy"], ev["loss"]
            row = {"epoch": done, **row, "ones_fraction": self.ones_fraction(),
                   "lr": self.optimizer.param_groups[0]["lr"]}
            if self.is_main:
                append_jsonl(self.out / "metrics.jsonl", row)
                acc = row.get("test_accuracy")
                is_best = acc is not None and acc > self.best_acc
                if is_best:
                    self.best_acc, self.best_epoch = acc, done
                ckpt = self.checkpoint(done)
                # best.pt first: a kill between the two leaves last.pt one epoch older, and
                # resuming from it rewrites the same best.pt
                if is_best:
                    save_checkpoint(ckpt, self.out / "best.pt")
                save_checkpoint(ckpt, self.out / "last.pt")
                self._saved_epoch = done
                msg = f"epoch {done}/{cfg.epochs}: train loss {row['train_loss']:.4f}"
                if acc is not None:
                    msg += f", test acc {acc:.4f}"
                if row["ones_fraction"] is not None:
                    msg += f", ones {row['ones_fraction']:.4f}"
                msg += f", {row['epoch_time_s']:.1f} s"
                bar.write(msg)
                bar.event("epoch", **row)
            if self.stop_after is not None and done >= self.stop_after and not last:
                if bar is not None:
                    bar.close()
                return {"stopped_after": done}
        if bar is not None:
            bar.close()  # its event file too: the end's events are appended below
        wall = time.perf_counter() - t_run
        report = None
        if self.is_main:
            from sbnn.pipeline.checks import format_warnings, run_warnings
            from sbnn.pipeline.evaluate import format_report, make_report

            report = make_report(_unwrap(self.model), self.test_loader, cfg=cfg)
            # test_accuracy is the last epoch's model (last.pt); the authors report the best test
            # accuracy over epochs, which is best_test_accuracy (best.pt, epoch best_epoch)
            report["reported_checkpoint"] = "last"
            report["best_test_accuracy"] = self.best_acc
            # the epoch best.pt holds (a checkpoint of an older sbnn lacks it: metrics.jsonl)
            report["best_epoch"] = self.best_epoch or self._best_epoch_from_metrics()
            report["train_wall_time_s"] = wall
            report["steps"] = cfg.epochs * len(self.train_loader)
            report["threads"] = torch.get_num_threads()
            report["cpu_model"] = cpu_model()
            report["epoch_times_s"] = epoch_times
            report["epochs"] = cfg.epochs
            report["last_epoch"] = cfg.epochs  # the epoch last.pt holds
            report["world_size"] = self.world
            report["batch_size_per_rank"] = cfg.data.batch_size
            report["global_batch_size"] = self.global_batch
            sb = self.constraint is not None
            report["warnings"] = run_warnings(
                _unwrap(self.model), report, cfg.sparsity.ec if sb else None, self.num_classes,
                self.test_loader, pruned_filters=cfg.prune.filters)
            write_json(self.out / "report.json", report)
            print(format_report(report, title=f"run {self.out}"))
            print(format_warnings(report["warnings"]), end="")
            log = RunLog(0, progress=False, json_path=log_json)
            for w in report["warnings"]:
                log.event("warning", **w)
            log.event("end", out=str(self.out), test_accuracy=report.get("test_accuracy"),
                      ones_fraction=report.get("ones_fraction"), wall_time_s=wall)
            log.close()
        if self.distributed:
            dist.barrier()
        return report or {}


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM ended training; the message says what was kept and the command
    that resumes the run (``sbnn train`` prints it as one line and exits with 130)."""


@contextlib.contextmanager
def _signals_as_interrupt():
    """SIGTERM raises KeyboardInterrupt like SIGINT does, so both end training the same way
    (checkpoints are written atomically: an interrupt never leaves a torn file)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


def train(cfg: Config | None = None, out=None, resume=None, stop_after: int | None = None,
          overwrite: bool = False, log_json: str | None = None) -> dict:
    """Train a model as ``cfg`` says (default: the main job); returns the report dict.
    An ``out`` that already holds a run is refused unless ``resume`` or ``overwrite``.
    ``log_json``: also append machine-readable events to this file."""
    return Trainer(cfg, out=out, resume=resume, stop_after=stop_after,
                   overwrite=overwrite).fit(log_json)
