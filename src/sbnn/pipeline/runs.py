"""Run folders and checkpoints: the one module that writes and reads them.

A run folder (``sbnn train``, ``sbnn convert``) holds::

    config.yaml     the resolved config (``sbnn train --config RUN/config.yaml`` reruns it)
    metrics.jsonl   one JSON line per epoch
    last.pt         the checkpoint after the last finished epoch
    best.pt         the checkpoint of the best test accuracy so far
    report.json     the final report (accuracy, ones fraction, bits, ...)

A checkpoint is a dict written by :func:`save_checkpoint` (atomically) and read by
:func:`load_checkpoint`, with the keys of :data:`CHECKPOINT_KEYS`:

``model``           the model's ``state_dict``
``config``          the resolved config as a dict (:class:`sbnn.pipeline.config.Config`)
``num_classes``, ``in_chans``   what the model was built for
``epoch``, ``best_acc``         epochs finished, best test accuracy so far
``prune_masks``     ``{layer: LayerMasks.to_dict()}`` of :mod:`sbnn.verbs.prune` (may be empty)
``optimizer``, ``scheduler``, ``rng``   training state for ``--resume`` (``None`` when absent)
``convert``         what ``sbnn convert`` did (``None`` for ``sbnn train`` runs)
``sbnn_format``     :data:`CHECKPOINT_FORMAT`

Loading never runs code from the file: checkpoints are read with ``torch.load(...,
weights_only=True)``, which accepts tensors and plain Python containers only; every value here is
one of those (the numpy RNG state is stored as a tensor).
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sbnn import models
from sbnn_runtime.files import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_KEYS",
    "CheckpointError",
    "checkpoint_path",
    "make_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "build_model",
    "load_model",
    "reattach_masks",
    "rng_state",
    "set_rng_state",
    "atomic_save",
    "resolve_device",
]

CHECKPOINT_FORMAT = 2
CHECKPOINT_KEYS = ("model", "config", "num_classes", "in_chans", "epoch", "best_acc",
                   "prune_masks", "optimizer", "scheduler", "rng", "convert", "sbnn_format")


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or not an sbnn checkpoint; the message says why."""


def checkpoint_path(path: str | os.PathLike, which: str = "last") -> Path:
    """The checkpoint file of a run folder (``which``: ``last`` or ``best``) or a ``.pt`` path."""
    if which not in ("last", "best"):
        raise ValueError(f"which must be 'last' or 'best', got {which!r}")
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


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' requested but CUDA is not available; use device=cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def rng_state() -> dict:
    """Every RNG sbnn draws from, as tensors and plain Python values."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                       int(has_gauss), float(gauss)],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_checkpoint(model: nn.Module, config: dict, num_classes: int, in_chans: int, epoch: int,
                    best_acc: float, *, optimizer=None, scheduler=None, rng: dict | None = None,
                    convert: dict | None = None) -> dict:
    """The checkpoint dict of :data:`CHECKPOINT_KEYS` for ``model`` (its masks included)."""
    from sbnn.verbs.prune import prune_state

    model = model.module if hasattr(model, "module") else model
    return {
        "model": model.state_dict(),
        "config": config,
        "num_classes": int(num_classes),
        "in_chans": int(in_chans),
        "epoch": int(epoch),  # epochs completed
        "best_acc": float(best_acc),
        "prune_masks": prune_state(model),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng,
        "convert": convert,
        "sbnn_format": CHECKPOINT_FORMAT,
    }


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` written atomically: a kill at any moment leaves either the old file or
    the new one, never a truncated one."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getbuffer())


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
    """Write a checkpoint made by :func:`make_checkpoint` to ``path`` atomically."""
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint lacks {missing}; build it with make_checkpoint")
    atomic_save(ckpt, path)


def load_checkpoint(path: str | os.PathLike, which: str = "last") -> dict:
    """The checkpoint dict of a run folder or ``.pt`` file, on the CPU, never running code.

    Checkpoints of the first format (masks under ``convert.prune_masks``) are read too and
    come back in this format's layout.
    """
    p = checkpoint_path(path, which)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, refused globals
        raise CheckpointError(f"cannot read checkpoint '{p}': {str(exc).splitlines()[0]}"
                              ) from None
    need = ("model", "config", "num_classes", "in_chans")
    missing = [k for k in need if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"'{p}' is not an sbnn checkpoint: it lacks the key(s) {missing}; "
                              f"expected a checkpoint written by `sbnn train` with {list(need)}")
    if ckpt.get("prune_masks") is None:
        ckpt["prune_masks"] = (ckpt.get("convert") or {}).get("prune_masks") or {}
    for k in CHECKPOINT_KEYS:
        ckpt.setdefault(k, None)
    return ckpt


def build_model(cfg, num_classes: int, in_chans: int) -> nn.Module:
    """The model a :class:`~sbnn.pipeline.config.Config` describes (fresh weights)."""
    from sbnn.pipeline.config import ConfigError

    m = cfg.model
    try:
        return models.create(m.name, num_classes=num_classes, in_chans=in_chans, domain=m.domain,
                             weight_estimator=m.weight_estimator, act=m.act, **m.kwargs)
    except TypeError as e:  # a bad model.kwargs key ('{width:32}' is YAML for {'width:32': None})
        if "unexpected keyword" not in str(e):
            raise
        raise ConfigError(f"model.kwargs {m.kwargs!r} does not fit model '{m.name}': {e}. "
                          "In YAML flow style put a space after the colon: {width: 32}") from None


def reattach_masks(model: nn.Module, ckpt: dict) -> None:
    """Re-attach the pruning masks a checkpoint holds, so training keeps them pruned."""
    masks = ckpt.get("prune_masks") or {}
    if masks:
        from sbnn.verbs.prune import LayerMasks, attach_

        attach_(model, {n: LayerMasks.from_dict(d) for n, d in masks.items()})


def load_model(path: str | os.PathLike, which: str = "last", device: str = "cpu") -> nn.Module:
    """The trained model of a run folder (``which``: ``last`` or ``best``) or checkpoint file,
    in eval mode on ``device``."""
    from sbnn.pipeline.config import Config, from_dict

    ckpt = load_checkpoint(path, which)
    cfg = from_dict(Config, ckpt["config"])
    model = build_model(cfg, ckpt["num_classes"], ckpt["in_chans"])
    model.load_state_dict(ckpt["model"])
    reattach_masks(model, ckpt)
    return model.to(device).eval()
