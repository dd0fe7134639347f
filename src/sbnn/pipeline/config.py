"""Training configuration: dataclasses that round-trip to YAML, with dotted ``--set`` overrides.

``Config()`` is the embedded default, the main job (Fashion-MNIST, the small sparse binary CNN,
EC = 0.05, closed-form start at the target). A YAML file gives values for any subset of the fields;
``--set optim.lr=0.01`` overrides one field after the file, with its type checked. The resolved
config is written as ``config.yaml`` into every run folder (by :mod:`sbnn.pipeline.runs`), so
``sbnn train --config RUN/config.yaml`` reruns it. YAML anchors and aliases are refused, and every
key has a type and a range (:data:`RANGES`), checked before anything is created.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sbnn.verbs.prune_config import PruneConfig

__all__ = [
    "DataConfig", "ModelConfig", "OptimConfig", "SparsityConfig", "Config",
    "ConfigError", "load_config", "loads_config", "dump_config", "save_config", "apply_overrides",
    "from_dict", "to_dict", "validate", "config_keys", "parse_yaml", "RANGES", "FREE_KEYS",
    "MAX_CONFIG_BYTES", "check_device", "max_threads",
]


class ConfigError(ValueError):
    """A config file or override names an unknown key, or gives a value of the wrong type or
    outside what the key allows; the message names the key, the value and what is allowed."""


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # fashion_mnist | mnist | cifar10 | cifar100
    root: str | None = None  # None: $SBNN_DATA, else the dataset's default folder
    batch_size: int = 128  # per process (per rank under torchrun)
    eval_batch_size: int = 1000
    crop_padding: int = 0  # random crop after zero padding by this many pixels (0: off)
    hflip: bool = False
    rotation: float = 0.0  # max degrees of the random rotation (0: off)
    mixup_alpha: float = 0.0  # 0: off; the paper uses 1.0 on CIFAR
    train_subset: int | None = None  # use only the first N training samples (quick runs, tests)
    test_subset: int | None = None


@dataclass
class ModelConfig:
    name: str = "fmnist_cnn"  # see `sbnn.models.list_models()`
    domain: str = "learned"  # learned | closed_form | pm1 | 01 | abr (r = -sparsity.ec) | pm1c
    weight_estimator: str = "ste"  # ste | clipped_ste | ede | approx_sign
    act: str | None = "approx_sign"  # estimator of the binary activations; None: float inputs
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra model arguments (e.g. width)


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    schedule: str = "cosine"  # cosine | constant
    schedule_step: str = "step"  # step: update the lr every batch | epoch: once per epoch
    warmup_epochs: int = 0
    # the binary layers' levels (tau, phi): relative: each layer's levels step in units of their
    # size when the optimiser is built (Adam moves them by lr * |tau| a step, as the authors' unit
    # levels move by lr), so a closed-form start at |tau| ~ 0.03 does not take 30x larger relative
    # steps | absolute: lr as every other parameter (runs made before this option)
    level_lr: str = "relative"


@dataclass
class SparsityConfig:
    ec: float = 0.05  # target global ones fraction ("expected connections"); 0.5 = dense BNN
    gamma: float = 0.07  # share of the total loss carried by the penalty (0: no penalty)
    # closed_form: split the latent weights at the target in closed form | authors: rand * 0.001,
    # all positive (100 % ones at the start, the authors' CIFAR-100 init) | none: default init
    init: str = "closed_form"
    # tau/phi at the start: fit (least squares on the closed-form split, under the domain's tie)
    # | unit (the authors' tau = 1, phi = 0); only closed_form init can fit
    levels: str = "fit"
    ede_schedule: bool = True  # advance t/k of every EDE estimator with the epoch
    clamp: bool = True  # clamp latent weights to [-1.5, 1.5] after every step
    # penalty: the paper's hinge penalty with gamma | exact: after every step each binary layer is
    # split at exactly round(ec * n) ones (no penalty; pm1/01/abr freeze their scale tau)
    mode: str = "penalty"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)  # see sbnn.verbs.prune.PruneConfig
    epochs: int = 4
    seed: int = 0
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    threads: int | None = None  # torch.set_num_threads; None: torch's default
    progress: bool = True  # a progress bar, on a terminal only (off one: a line per epoch)
    log_every: int = 0  # also log one line every N training steps (0: once per epoch only)
    eval_every: int = 1  # evaluate on the test split every N epochs (and always at the end)
    out: str | None = None  # run folder; None: runs/<model>-<timestamp>


# --------------------------------------------------------------------------------------------
# dict <-> dataclass with type checks
# --------------------------------------------------------------------------------------------

@functools.cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _check(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to ``tp`` (int -> float allowed), or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {_short(value)} matches "
                          f"none of {[getattr(a, '__name__', str(a)) for a in args]}")
    if tp is Any:
        return value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_short(value)}")
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"{key}: keys must be names (strings), got {_short(bad[0])}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer too large for a float
                raise ConfigError(f"{key}: {_short(value)} is too large; expected a finite "
                                  "number") from None
    elif tp is str:
        if isinstance(value, str):
            if "\0" in value or len(value) > MAX_STR:
                raise ConfigError(f"{key}: {_short(value)} is not allowed; expected a text of at "
                                  f"most {MAX_STR} characters without NUL")
            return value
    raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {_short(value)}")


MAX_STR = 4096  # a path or a name; longer is a mistake


def _short(value: Any, n: int = 60) -> str:
    """``repr(value)``, cut to ``n`` characters (a huge value must not flood the error line)."""
    try:
        r = repr(value)
    except ValueError:  # an integer too long for repr (sys.int_info limit)
        return f"<an integer of more than {4300} digits>"
    return r if len(r) <= n else r[:n - 3] + "..."


def from_dict(cls, d: dict | None, prefix: str = ""):
    """Build dataclass ``cls`` from a (nested) dict; unknown keys raise a ConfigError that lists
    the valid ones."""
    d = d or {}
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {d!r}")
    hints = _hints(cls)
    unknown = set(d) - set(hints)
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(prefix + str(k) for k in unknown)}; valid: "
                          f"{sorted(prefix + k for k in hints)}")
    kwargs = {}
    for k, v in d.items():
        tp = hints[k]
        if _is_dataclass_type(tp):
            kwargs[k] = from_dict(tp, v, prefix + k + ".")
        else:
            kwargs[k] = _check(v, tp, prefix + k)
    try:
        return cls(**kwargs)
    except ValueError as e:  # a dataclass's own validation (e.g. PruneConfig)
        raise ConfigError(str(e)) from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# a config is a few kilobytes; a larger file is not one (and YAML parsing time grows with it)
MAX_CONFIG_BYTES = 1 << 20
# and a few levels deep (section, key, a list in model.kwargs)
MAX_CONFIG_DEPTH = 32


_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: 10x faster


def _refuse_anchors(text: str, where: str) -> None:
    """Anchors and aliases are refused: a config never needs them, and an alias bomb (a few
    lines that expand to billions of nodes when the config is copied) hangs the process.
    Nesting deeper than :data:`MAX_CONFIG_DEPTH` is refused here too, before any recursion."""
    depth = 0
    for event in yaml.parse(text, Loader=_SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_CONFIG_DEPTH:
                raise ConfigError(f"{where}: nested too deeply to be a config (more than "
                                  f"{MAX_CONFIG_DEPTH} levels at line "
                                  f"{event.start_mark.line + 1})")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
        if getattr(event, "anchor", None) is not None:
            kind = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
            raise ConfigError(f"{where}: YAML {kind} '{event.anchor}' at line "
                              f"{event.start_mark.line + 1}: anchors and aliases are not allowed "
                              "in a config; write the values out")


def parse_yaml(text: str, where: str = "config") -> Any:
    """YAML text -> plain Python values, refusing anchors/aliases, oversized and too deeply
    nested input with a :class:`ConfigError` (never a parser traceback)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: {len(text)} characters; a config is at most "
                          f"{MAX_CONFIG_BYTES} (expected a few kilobytes)")
    try:
        _refuse_anchors(text, where)  # events only: nothing is built yet
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise ConfigError(f"{where}: not valid YAML: {' '.join(lines[:3])}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a config") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """The default config, updated by the YAML file at ``path`` and then by ``key=value``
    overrides."""
    data: dict = {}
    if path is not None:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a UTF-8 text file") from None
        return loads_config(text, overrides, where=str(path))
    return validate(apply_overrides(from_dict(Config, data), overrides or []))


def loads_config(text: str, overrides: list[str] | None = None, where: str = "config") -> Config:
    """:func:`load_config` from YAML text (``where`` names it in errors)."""
    data = parse_yaml(text, where) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a YAML mapping at the top level")
    return validate(apply_overrides(from_dict(Config, data), overrides or []))


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML (``1e-3``, ``true``,
    ``null``, ``{width: 2}``) and type-checked against the field."""
    d = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        value = parse_yaml(raw, f"--set {key}") if raw.strip() != "" else ""
        # YAML reads '1e-3' as a string; accept it as a float when that is what it looks like.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") else value
            except ValueError:
                pass
        node, parts = d, key.split(".")
        cls = Config
        for p in parts[:-1]:
            hints = _hints(cls)
            if p not in hints or not _is_dataclass_type(hints[p]):
                raise ConfigError(f"unknown config section '{p}' in '{key}'; valid: "
                                  f"{sorted(k for k, t in hints.items() if _is_dataclass_type(t))}")
            node, cls = node[p], hints[p]
        hints = _hints(cls)
        last = parts[-1]
        if last not in hints:
            raise ConfigError(f"unknown key '{key}'; valid: "
                              f"{sorted('.'.join(parts[:-1] + [k]) for k in hints)}")
        if _is_dataclass_type(hints[last]):
            raise ConfigError(f"'{key}' is a section; set one of its keys, e.g. {key}."
                              f"{next(iter(_hints(hints[last])))}=...")
        node[last] = _check(value, hints[last], key)
    return from_dict(Config, d)


def dump_config(cfg: Config, header: str | None = None) -> str:
    """``cfg`` as YAML text; ``header`` lines go first as ``#`` comments (e.g. the world size of
    a torchrun run), which loading ignores. :func:`sbnn.pipeline.runs.save_config` writes it."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if header:
        text = "".join(f"# {ln}\n" for ln in header.splitlines()) + text
    return text


def save_config(cfg: Config, path: str | Path, header: str | None = None) -> None:
    """Deprecated (one release): :func:`sbnn.pipeline.runs.save_config`, the one writer of
    run-folder files, does this."""
    import warnings

    from sbnn_runtime.files import atomic_write

    warnings.warn("sbnn.pipeline.config.save_config moved to sbnn.pipeline.runs.save_config",
                  DeprecationWarning, stacklevel=2)
    atomic_write(path, dump_config(cfg, header))


# --------------------------------------------------------------------------------------------
# values, not only types
# --------------------------------------------------------------------------------------------

def _bad(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}: {_short(value)} is not allowed; expected {allowed}")


def _choice(key: str, value: Any, valid) -> None:
    valid = list(valid)
    if value not in valid:
        raise _bad(key, value, "one of " + ", ".join(str(v) for v in valid))


_INF = float("inf")

# The range of every numeric key: (low, high, low_open, high_open). Bounds are what the code can
# honour, not what is sensible: a typo (batch_size=1e9, seed=-1, epochs=10**20) is refused here
# instead of crashing later. ``threads`` is also bounded by the CPUs (see validate).
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "data.batch_size": (1, 65536, False, False),
    "data.eval_batch_size": (1, 65536, False, False),
    "data.crop_padding": (0, 64, False, False),
    "data.rotation": (0, 180, False, False),
    "data.mixup_alpha": (0, 100, False, False),
    "data.train_subset": (1, 2**31 - 1, False, False),
    "data.test_subset": (1, 2**31 - 1, False, False),
    "optim.lr": (0, 100, True, False),
    "optim.weight_decay": (0, 10, False, False),
    "optim.momentum": (0, 1, False, True),
    "optim.warmup_epochs": (0, 100_000, False, False),
    "sparsity.ec": (0, 0.5, True, False),
    "sparsity.gamma": (0, 1, False, True),
    "prune.magnitude": (0, 1, False, True),
    "prune.filters": (0, 1, False, True),
    "prune.kernels": (0, 1, False, True),
    "prune.patterns": (1, 8, False, False),
    "epochs": (1, 100_000, False, False),
    "seed": (0, 2**32 - 1, False, False),
    "threads": (1, 1024, False, False),
    "eval_every": (0, 100_000, False, False),
    "log_every": (0, 10**9, False, False),
}


def _choices() -> dict[str, list]:
    """The allowed values of every key that names something (registries are read now, so a
    model or estimator registered later is allowed too)."""
    from sbnn import models
    from sbnn.method import estimators
    from sbnn.method.layers import DOMAINS
    from sbnn.pipeline.data import DATASETS

    est = estimators.names()
    return {
        "data.name": list(DATASETS),
        "model.name": models.list_models(),
        "model.domain": list(DOMAINS),
        "model.weight_estimator": est,
        "model.act": est + [None],
        "optim.name": ["adam", "adamw", "sgd"],
        "optim.schedule": ["cosine", "constant"],
        "optim.schedule_step": ["step", "epoch"],
        "optim.level_lr": ["relative", "absolute"],
        "sparsity.init": ["closed_form", "authors", "none"],
        "sparsity.levels": ["fit", "unit"],
        "sparsity.mode": ["penalty", "exact"],
        "device": ["auto", "cpu", "cuda", "cuda:N"],
    }


# keys whose value is free text (a path), a switch, or checked on its own (model.kwargs)
FREE_KEYS = ("data.root", "out", "model.kwargs")

# model.kwargs: architecture numbers (width, strides, block counts) are small non-negative ints
_KWARG_INT_MAX = 1024
_KWARG_LIST_MAX = 64


def _range(key: str, value) -> None:
    import math

    if value is None:
        return
    lo, hi, lo_open, hi_open = RANGES[key]
    ok = (math.isfinite(value) and (value > lo if lo_open else value >= lo)
          and (value < hi if hi_open else value <= hi))
    if not ok:
        what = "an integer" if isinstance(value, int) else "a number"
        raise _bad(key, value, f"{what} in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}"
                               f"{')' if hi_open else ']'}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _check_kwargs(kwargs: dict) -> None:
    """model.kwargs: plain scalars or short lists of them; integers in [0, 1024] (a width must be
    >= 1). Whether the model takes them is checked when it is built (before any folder)."""
    import math

    def scalar(k, v):
        if v is None or isinstance(v, (bool, str)):
            if isinstance(v, str) and len(v) > 256:
                raise _bad(f"model.kwargs.{k}", v, "a short text")
            return
        if isinstance(v, int):
            lo = 1 if k == "width" else 0
            if not lo <= v <= _KWARG_INT_MAX:
                raise _bad(f"model.kwargs.{k}", v, f"an integer in [{lo}, {_KWARG_INT_MAX}]")
            return
        if isinstance(v, float):
            if not math.isfinite(v):
                raise _bad(f"model.kwargs.{k}", v, "a finite number")
            return
        raise _bad(f"model.kwargs.{k}", v, "a number, text, true/false or a list of those")

    for k, v in kwargs.items():
        if isinstance(v, (list, tuple)):
            if len(v) > _KWARG_LIST_MAX:
                raise _bad(f"model.kwargs.{k}", v, f"a list of at most {_KWARG_LIST_MAX} items")
            for x in v:
                if isinstance(x, (list, tuple, dict)):
                    raise _bad(f"model.kwargs.{k}", v, "a flat list")
                scalar(k, x)
        else:
            scalar(k, v)


def check_device(name: str) -> None:
    """A device that exists here: auto, cpu, cuda / cuda:N when CUDA has that many devices."""
    import torch

    allowed = "auto, cpu, cuda or cuda:N (N < the number of CUDA devices)"
    if name in ("auto", "cpu"):
        return
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise _bad("device", name, allowed) from None
    if dev.type != "cuda":  # meta, mps, xla...: sbnn trains on cpu or cuda only
        raise _bad("device", name, allowed)
    if not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} is not available here (CUDA is not); use "
                          "device=cpu or device=auto")
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise ConfigError(f"device: {name!r} does not exist; this machine has {n} CUDA "
                          f"device(s): cuda:0..cuda:{n - 1}")


def max_threads() -> int:
    """The most ``threads`` a run may ask for here: 4x the CPUs (at most 1024)."""
    return min(RANGES["threads"][1], 4 * (os.cpu_count() or 1))


def _leaves(obj, prefix: str = ""):
    """``(dotted key, value)`` of every non-section field of a config dataclass instance."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            yield from _leaves(v, prefix + f.name + ".")
        else:
            yield prefix + f.name, v


def validate(cfg: Config, training: bool = True) -> Config:
    """Check the values of ``cfg`` (types are checked by :func:`from_dict`); raise a
    :class:`ConfigError` naming the key, the value and what is allowed. Every numeric key has a
    range (:data:`RANGES`), every naming key a list of choices; impossible combinations (a device
    that is not there, more threads than 4x the CPUs) are refused too. ``training``: also
    require what a training run needs (``epochs >= 1``). Returns ``cfg``."""
    choices = _choices()
    for key, value in _leaves(cfg):
        if key == "epochs" and not training and value == 0:
            continue
        if key in RANGES:
            _range(key, value)
        elif key == "device":
            check_device(value)
        elif key == "model.act" and value is not None and value not in choices[key]:
            raise _bad(key, value, "one of " + ", ".join(choices[key][:-1]) + " or null (float "
                                   "inputs)")
        elif key in choices:
            if key == "model.name" and value not in choices[key]:
                raise _bad(key, value, "a registered model: " + ", ".join(choices[key]))
            _choice(key, value, choices[key])
        elif key == "model.kwargs":
            _check_kwargs(value)
    if cfg.threads is not None and cfg.threads > max_threads():
        raise ConfigError(f"threads: {cfg.threads} is more than this machine can use; expected "
                          f"at most {max_threads()} (4 x {os.cpu_count()} CPUs)")
    return cfg


def config_keys() -> list[tuple[str, str, Any]]:
    """Every ``--set`` key: ``(dotted key, type, default)``, from the dataclasses."""
    out = []

    def walk(cls, obj, prefix):
        for f in dataclasses.fields(cls):
            tp = _hints(cls)[f.name]
            v = getattr(obj, f.name)
            if _is_dataclass_type(tp):
                walk(tp, v, prefix + f.name + ".")
            else:
                name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
                out.append((prefix + f.name, name, v))

    walk(Config, Config(), "")
    return out
