"""Run folders and checkpoints: the one module that writes and reads them.

A run folder (``sbnn train``, ``sbnn convert``) holds::

    config.yaml     the resolved config (``sbnn train --config RUN/config.yaml`` reruns it)
    metrics.jsonl   one JSON line per epoch
    last.pt         the checkpoint after the last finished epoch
    best.pt         the checkpoint of the best test accuracy so far
    report.json     the final report (accuracy, ones fraction, bits, ...)

What is guaranteed:

* an existing run is never touched unless asked: :func:`create_run_dir` refuses a folder that
  holds a run (``last.pt`` or ``report.json``) unless ``resume`` or ``overwrite`` is given;
* every file is written atomically (a kill leaves the old file or the new one), ``best.pt`` is
  written before ``last.pt`` and both before ``report.json``, and each records its ``epoch``,
  so ``report.json`` never names an epoch newer than the checkpoints it sits beside;
* leftovers of interrupted writes (``.NAME.*.tmp`` files) are removed when a run folder is
  created or resumed;
* one writer at a time: a process that writes a run folder holds an exclusive lock on it
  (:class:`RunLock`, ``flock`` on the folder itself, released when the process ends however it
  ends), and a second writer is refused (:class:`RunBusyError`);
* an ``--out`` whose last component is a symbolic link to an existing run is refused (symbolic
  links higher up the path are fine);
* every file in a run folder is written through this module (:func:`write_text`,
  :func:`write_json`, :func:`append_jsonl`, :func:`save_figure`, :func:`save_checkpoint`), and
  each write is atomic.

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

Every checkpoint (and ``shrunk_model.pt``) also holds ``sbnn_sha256``: the SHA-256 of its
contents (every tensor's dtype, shape and bytes, every other value's type and repr, in order),
checked on load. ``torch.load`` ignores the zip's CRCs, so without it a flipped bit in a tensor
would load silently as a different model; a mismatch is a :class:`CheckpointError` ("corrupt
checkpoint"). A checkpoint of an older sbnn, without the entry, loads with a note on stderr.

Loading never runs code from the file: checkpoints are read with ``torch.load(...,
weights_only=True)``, which accepts tensors and plain Python containers only; every value here is
one of those (the numpy RNG state is stored as a tensor).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import sys
from contextlib import contextmanager
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
    "RunExistsError",
    "RUN_FILES",
    "holds_run",
    "check_run_dir",
    "create_run_dir",
    "clean_tmp_files",
    "clean_stale_tmp_dirs",
    "save_shrunk",
    "load_shrunk",
    "RunBusyError",
    "RunLock",
    "lock_run_dir",
    "payload_sha256",
    "save_config",
    "write_text",
    "write_json",
    "append_jsonl",
    "save_figure",
]

CHECKPOINT_FORMAT = 2
CHECKPOINT_KEYS = ("model", "config", "num_classes", "in_chans", "epoch", "best_acc",
                   "prune_masks", "optimizer", "scheduler", "rng", "convert", "sbnn_format")


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or not an sbnn checkpoint; the message says why."""


class RunExistsError(ValueError):
    """The run folder already holds a run and neither resume nor overwrite was asked for."""


class RunBusyError(RunExistsError):
    """Another process is writing the run folder (it holds the folder's lock)."""


# the files a run folder's format defines (removed by ``overwrite``; nothing else is)
RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "report.json",
             "shrunk_model.pt", "weights.png", "curves.png", "layers.png",
             "accuracy_vs_bits.png")
# what a user would lose: a folder holding one of these is a run. A best.pt alone is not: it is
# what a kill between the first epoch's best.pt and last.pt leaves, and a rerun rewrites it.
_RUN_MARKERS = ("last.pt", "report.json")


def holds_run(path: str | os.PathLike) -> bool:
    """Does the folder hold a run (``last.pt`` or ``report.json``) that overwriting would lose?"""
    p = Path(path)
    return p.is_dir() and any((p / f).exists() for f in _RUN_MARKERS)


def clean_tmp_files(path: str | os.PathLike) -> list[Path]:
    """Remove the ``.NAME.*.tmp`` leftovers of interrupted atomic writes in a run folder."""
    p = Path(path)
    removed = []
    if p.is_dir():
        for f in p.glob(".*.tmp"):
            if f.is_file():
                f.unlink()
                removed.append(f)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def clean_stale_tmp_dirs(out: str | os.PathLike) -> list[Path]:
    """Remove the ``.NAME.tmp-PID`` folders next to ``out`` that ``sbnn convert`` builds a run
    in, when process PID is gone (it was killed before renaming the folder to ``out``)."""
    import shutil

    p = Path(out)
    removed = []
    if not p.parent.is_dir():
        return removed
    for d in p.parent.glob(f".{p.name}.tmp-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if d.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


class RunLock:
    """An exclusive, non-blocking lock on a run folder: ``flock`` on the folder's own file
    descriptor, so no lock file is left behind and the kernel releases it when the process ends
    (a ``kill -9`` included). The lock follows the folder, not its name: two paths to one folder
    (a symbolic link higher up) share it. Where ``flock`` is missing (Windows) it locks nothing.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunBusyError(
                    f"'{self.path}' is being written by another sbnn process; wait for it to "
                    "end or choose another --out") from None
            raise
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __del__(self) -> None:  # a Trainer dropped without fit() frees its folder
        self.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_dir(path: str | os.PathLike) -> RunLock:
    """Lock the existing run folder ``path`` for this process (:class:`RunLock`), or raise
    :class:`RunBusyError`."""
    return RunLock(path).acquire()


def _symlinked_run(p: Path) -> bool:
    return p.is_symlink() and holds_run(p)


def check_run_dir(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check that ``out`` may become a new run folder, touching nothing.

    Raises :class:`RunExistsError` when ``out`` holds a run and ``overwrite`` is false, or when
    ``out`` itself is a symbolic link to a run (even with ``overwrite``: replacing a run through
    another name is refused), and a ``ValueError`` when ``out`` is a file. Returns ``out`` as a
    ``Path``.
    """
    p = Path(out)
    if _symlinked_run(p):
        raise RunExistsError(
            f"'{p}' is a symbolic link to the run '{os.path.realpath(p)}'; give that folder "
            "itself (--resume or --overwrite apply to it there) or a new --out")
    if p.exists() and not p.is_dir():
        raise ValueError(f"run folder '{p}' exists and is not a folder")
    if not overwrite and holds_run(p):
        held = [f for f in _RUN_MARKERS if (p / f).exists()]
        raise RunExistsError(
            f"'{p}' already holds a run ({', '.join(held)}); pass --resume {p} to continue it, "
            "--overwrite to replace it, or --out NEW_FOLDER for a new run")
    return p


def create_run_dir(out: str | os.PathLike, overwrite: bool = False,
                   lock: RunLock | None = None) -> Path:
    """Make ``out`` a fresh run folder (see :func:`check_run_dir`) and return it.

    With ``overwrite``, the files of :data:`RUN_FILES` are removed (other files are left). A
    folder without a checkpoint or report (a run killed in its first epoch) is reused: its stale
    ``config.yaml`` / ``metrics.jsonl`` are removed so two runs never mix. ``lock``: a
    :class:`RunLock` on ``out`` taken as soon as the folder exists, and the folder checked again
    under it (another process may have written a run in between); :class:`RunBusyError` when
    another process holds it, and then nothing is touched.
    """
    p = check_run_dir(out, overwrite)
    p.mkdir(parents=True, exist_ok=True)
    if lock is not None:
        lock.acquire()
        try:
            check_run_dir(out, overwrite)
        except BaseException:
            lock.release()
            raise
    for name in RUN_FILES:
        f = p / name
        if f.is_file():
            f.unlink()
    clean_tmp_files(p)
    return p


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


_SHA_KEY = "sbnn_sha256"


def _feed(h, obj: Any) -> None:
    """Feed ``obj`` (tensors, plain containers and scalars) into hash ``h``, unambiguously."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):  # one tag: a tuple may come back as a list
        h.update(f"L{len(obj)};".encode())
        for v in obj:
            _feed(h, v)
    else:
        r = repr(obj).encode()
        h.update(f"S{type(obj).__name__}{len(r)};".encode() + r)


def payload_sha256(obj: dict) -> str:
    """The SHA-256 of a checkpoint dict's contents, its own ``sbnn_sha256`` entry left out."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in obj.items() if k != _SHA_KEY})
    return h.hexdigest()


_NOTED: set[str] = set()


def _verify(obj: Any, p: Path) -> Any:
    """Check a loaded dict's ``sbnn_sha256`` and drop it; no entry: a note, once per file."""
    if not isinstance(obj, dict):
        return obj
    want = obj.pop(_SHA_KEY, None)
    if want is None:
        if str(p) not in _NOTED:
            _NOTED.add(str(p))
            print(f"note: '{p}' carries no SHA-256 (written by an older sbnn); loaded without "
                  "an integrity check", file=sys.stderr)
        return obj
    if not isinstance(want, str) or payload_sha256(obj) != want:
        raise CheckpointError(
            f"corrupt checkpoint '{p}': its contents do not match the SHA-256 written with it "
            "(a damaged copy or a flipped bit); use another copy (best.pt, last.pt) or retrain")
    return obj


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` written atomically: a kill at any moment leaves either the old file or
    the new one, never a truncated one. A dict gets its ``sbnn_sha256`` (checked on load)."""
    if isinstance(obj, dict):
        obj = {**{k: v for k, v in obj.items() if k != _SHA_KEY},
               _SHA_KEY: payload_sha256(obj)}
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getbuffer())


def save_config(cfg, path: str | os.PathLike, header: str | None = None) -> None:
    """Write a :class:`~sbnn.pipeline.config.Config` as YAML (``config.yaml``), atomically;
    ``header`` lines go first as ``#`` comments."""
    from sbnn.pipeline.config import dump_config

    atomic_write(path, dump_config(cfg, header))


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file of a run folder atomically."""
    atomic_write(path, text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write(path, json.dumps(obj, indent=2) + "\n")


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Add one JSON line to ``path`` (``metrics.jsonl``). The file is rewritten atomically (it is
    small: one line per epoch), so a kill or a full disk never leaves a torn line."""
    p = Path(path)
    old = p.read_bytes() if p.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    atomic_write(p, old + (json.dumps(row) + "\n").encode())


def save_figure(fig, path: str | os.PathLike, **kwargs) -> None:
    """``fig.savefig(path, **kwargs)``, atomically (the format follows the file's suffix)."""
    fmt = kwargs.pop("format", None) or Path(path).suffix.lstrip(".") or "png"
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, **kwargs)
    atomic_write(path, buf.getvalue())


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
    """Write a checkpoint made by :func:`make_checkpoint` to ``path`` atomically."""
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint lacks {missing}; build it with make_checkpoint")
    atomic_save(ckpt, path)


def _safe_load(p: Path):
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code."""
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols: our error says it
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, refused globals
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        why = lines[0] if lines else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            glob = [ln.strip() for ln in lines if "GLOBAL" in ln or "Unsupported global" in ln]
            why = ("it holds something other than tensors and plain containers, which sbnn "
                   "refuses to load because unpickling it could run code"
                   + (f" ({glob[0]})" if glob else ""))
        raise CheckpointError(f"cannot read checkpoint '{p}': {why}") from None
    return _verify(obj, p)


def load_checkpoint(path: str | os.PathLike, which: str = "last") -> dict:
    """The checkpoint dict of a run folder or ``.pt`` file, on the CPU, never running code.

    Checkpoints of the first format (masks under ``convert.prune_masks``) are read too and
    come back in this format's layout.
    """
    p = checkpoint_path(path, which)
    ckpt = _safe_load(p)
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
            raise ConfigError(f"model.kwargs {m.kwargs!r} do not build model '{m.name}': "
                              f"{_first_line(e)}") from None
        raise ConfigError(f"model.kwargs {m.kwargs!r} does not fit model '{m.name}': {e}. "
                          "In YAML flow style put a space after the colon: {width: 32}") from None
    except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as e:  # e.g. a zero width
        raise ConfigError(f"model.kwargs {m.kwargs!r} do not build model '{m.name}': "
                          f"{_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def reattach_masks(model: nn.Module, ckpt: dict) -> None:
    """Re-attach the pruning masks a checkpoint holds, so training keeps them pruned."""
    masks = ckpt.get("prune_masks") or {}
    if masks:
        from sbnn.verbs.prune import LayerMasks, attach_

        attach_(model, {n: LayerMasks.from_dict(d) for n, d in masks.items()})


def load_model(path: str | os.PathLike, which: str = "last", device: str = "cpu") -> nn.Module:
    """The trained model of a run folder (``which``: ``last`` or ``best``) or checkpoint file,
    in eval mode on ``device``."""
    from sbnn.pipeline.config import Config, ConfigError, from_dict

    ckpt = load_checkpoint(path, which)
    p = checkpoint_path(path, which)
    try:
        cfg = from_dict(Config, ckpt["config"])
        model = build_model(cfg, ckpt["num_classes"], ckpt["in_chans"])
        model.load_state_dict(ckpt["model"])
        reattach_masks(model, ckpt)
    except (ConfigError, RuntimeError, KeyError, TypeError, ValueError) as e:
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        raise CheckpointError(f"checkpoint '{p}' does not load: "
                              f"{lines[0] if lines else type(e).__name__}") from None
    return model.to(device).eval()


def save_shrunk(model: nn.Module, path: str | os.PathLike, removed: dict[str, int]) -> None:
    """Save a physically shrunk model (:func:`sbnn.verbs.prune.shrink_`) as tensors only.

    The file holds its ``state_dict`` (whose shapes differ from the registry's) and the filters
    removed per layer; :func:`load_shrunk` rebuilds the module from the run's ``last.pt``.
    Nothing in it needs code to unpickle (``torch.load(weights_only=True)`` reads it).
    """
    model = model.module if hasattr(model, "module") else model
    atomic_save({"state_dict": model.state_dict(), "removed_filters": dict(removed),
                 "sbnn_shrunk": 1}, path)


def _resize_to(model: nn.Module, state: dict) -> None:
    """Give every parameter/buffer of ``model`` the shape ``state`` has, and fix the layer
    attributes that describe those shapes (channels, features)."""
    for key, t in state.items():
        mod_name, _, attr = key.rpartition(".")
        mod = model.get_submodule(mod_name) if mod_name else model
        cur = getattr(mod, attr, None)
        if not isinstance(cur, torch.Tensor) or cur.shape == t.shape:
            continue
        new = torch.empty_like(t)
        if isinstance(cur, nn.Parameter):
            setattr(mod, attr, nn.Parameter(new, requires_grad=cur.requires_grad))
        else:
            setattr(mod, attr, new)
        w = getattr(mod, "weight", None)
        if attr == "weight" and isinstance(mod, nn.Conv2d):
            mod.out_channels, mod.in_channels = w.shape[0], w.shape[1] * mod.groups
        elif attr == "weight" and isinstance(mod, nn.Linear):
            mod.out_features, mod.in_features = w.shape
        elif attr in ("running_mean", "weight") and hasattr(mod, "num_features"):
            mod.num_features = t.shape[0]


def load_shrunk(run: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """The shrunk model a ``sbnn convert --prune-filters`` run saved as ``shrunk_model.pt``,
    in eval mode (rebuilt from ``last.pt``'s architecture, then given the shrunk tensors)."""
    from sbnn.verbs.prune import detach_

    run = Path(run)
    p = run / "shrunk_model.pt" if run.is_dir() else run
    if not p.is_file():
        raise FileNotFoundError(f"no shrunk model at '{p}' (written by `sbnn convert "
                                "--prune-filters`)")
    d = _safe_load(p)
    if not isinstance(d, dict) or not isinstance(d.get("state_dict"), dict):
        raise CheckpointError(f"'{p}' is not a shrunk model written by sbnn convert")
    model = load_model(p.parent, "last")
    detach_(model)
    try:
        _resize_to(model, d["state_dict"])
        model.load_state_dict(d["state_dict"])
    except (RuntimeError, AttributeError) as e:
        raise CheckpointError(f"'{p}' does not fit the model of '{p.parent / 'last.pt'}': "
                              f"{str(e).splitlines()[0]}") from None
    return model.to(device).eval()


@contextmanager
def locked_file(path: str | os.PathLike):
    """An exclusive advisory lock on the file ``path`` (POSIX ``flock``; a no-op where there is
    none), e.g. around a read-modify-write of a sweep's ``results.csv`` by parallel workers."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
