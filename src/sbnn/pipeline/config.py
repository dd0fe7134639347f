"""Training configuration: dataclasses that round-trip to YAML, with dotted ``--set`` overrides.

``Config()`` is the embedded default, the main job (Fashion-MNIST, the small sparse binary CNN,
EC = 0.05, closed-form start at the target). A YAML file gives values for any subset of the fields;
``--set optim.lr=0.01`` overrides one field after the file, with its type checked. The resolved
config is written as ``config.yaml`` into every run folder, so ``sbnn train --config
RUN/config.yaml`` reruns it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sbnn.verbs.prune_config import PruneConfig

__all__ = [
    "DataConfig", "ModelConfig", "OptimConfig", "SparsityConfig", "Config",
    "ConfigError", "load_config", "save_config", "apply_overrides", "from_dict", "to_dict",
    "validate", "config_keys",
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
    domain: str = "learned"  # learned | closed_form | pm1 | 01
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
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of "
                          f"{[getattr(a, '__name__', str(a)) for a in args]}")
    if tp is Any:
        return value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def from_dict(cls, d: dict | None, prefix: str = ""):
    """Build dataclass ``cls`` from a (nested) dict; unknown keys raise a ConfigError that lists
    the valid ones."""
    d = d or {}
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {d!r}")
    hints = _hints(cls)
    unknown = set(d) - set(hints)
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(prefix + k for k in unknown)}; valid: "
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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """The default config, updated by the YAML file at ``path`` and then by ``key=value``
    overrides."""
    data: dict = {}
    if path is not None:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a YAML mapping at the top level")
    cfg = from_dict(Config, data)
    return validate(apply_overrides(cfg, overrides or []))


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML (``1e-3``, ``true``,
    ``null``, ``{width: 2}``) and type-checked against the field."""
    d = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
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


def save_config(cfg: Config, path: str | Path, header: str | None = None) -> None:
    """Write ``cfg`` as YAML (atomically); ``header`` lines go first as ``#`` comments (e.g. the
    world size of a torchrun run), which loading ignores."""
    from sbnn_runtime.files import atomic_write

    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if header:
        text = "".join(f"# {ln}\n" for ln in header.splitlines()) + text
    atomic_write(path, text)


# --------------------------------------------------------------------------------------------
# values, not only types
# --------------------------------------------------------------------------------------------

def _bad(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}: {value!r} is not allowed; expected {allowed}")


def _choice(key: str, value: Any, valid) -> None:
    valid = list(valid)
    if value not in valid:
        raise _bad(key, value, "one of " + ", ".join(str(v) for v in valid))


def _positive(key: str, value, integer: bool = True, zero: bool = False) -> None:
    import math

    if value is None:
        return
    ok = math.isfinite(value) and (value >= 0 if zero else value > 0)
    if not ok:
        what = "an integer" if integer else "a finite number"
        raise _bad(key, value, f"{what} {'>= 0' if zero else '> 0'}")


def validate(cfg: Config, training: bool = True) -> Config:
    """Check the values of ``cfg`` (types are checked by :func:`from_dict`); raise a
    :class:`ConfigError` naming the key, the value and what is allowed. ``training``: also
    require what a training run needs (``epochs >= 1``). Returns ``cfg``."""
    import math

    import torch

    from sbnn import models
    from sbnn.method import estimators
    from sbnn.method.layers import DOMAINS
    from sbnn.pipeline.data import DATASETS

    d, m, o, sp = cfg.data, cfg.model, cfg.optim, cfg.sparsity
    _choice("data.name", d.name, DATASETS)
    _positive("data.batch_size", d.batch_size)
    _positive("data.eval_batch_size", d.eval_batch_size)
    _positive("data.crop_padding", d.crop_padding, zero=True)
    _positive("data.rotation", d.rotation, integer=False, zero=True)
    _positive("data.mixup_alpha", d.mixup_alpha, integer=False, zero=True)
    _positive("data.train_subset", d.train_subset)
    _positive("data.test_subset", d.test_subset)
    if not models.is_registered(m.name):
        raise _bad("model.name", m.name, "a registered model: " + ", ".join(models.list_models()))
    _choice("model.domain", m.domain, DOMAINS)
    _choice("model.weight_estimator", m.weight_estimator, estimators.names())
    if m.act is not None:
        _choice("model.act", m.act, estimators.names() + ["null (float inputs)"])
    _choice("optim.name", o.name, ("adam", "adamw", "sgd"))
    _positive("optim.lr", o.lr, integer=False)
    _positive("optim.weight_decay", o.weight_decay, integer=False, zero=True)
    if not (math.isfinite(o.momentum) and 0.0 <= o.momentum < 1.0):
        raise _bad("optim.momentum", o.momentum, "a number in [0, 1)")
    _choice("optim.schedule", o.schedule, ("cosine", "constant"))
    _choice("optim.schedule_step", o.schedule_step, ("step", "epoch"))
    _positive("optim.warmup_epochs", o.warmup_epochs, zero=True)
    if not (math.isfinite(sp.ec) and 0.0 < sp.ec <= 0.5):
        raise _bad("sparsity.ec", sp.ec, "a ones fraction in (0, 0.5] (0.5: the dense BNN)")
    if not (math.isfinite(sp.gamma) and 0.0 <= sp.gamma < 1.0):
        raise _bad("sparsity.gamma", sp.gamma, "a share of the loss in [0, 1)")
    _choice("sparsity.init", sp.init, ("closed_form", "authors", "none"))
    _choice("sparsity.levels", sp.levels, ("fit", "unit"))
    if training:
        _positive("epochs", cfg.epochs)
    else:
        _positive("epochs", cfg.epochs, zero=True)
    _positive("threads", cfg.threads)
    _positive("eval_every", cfg.eval_every, zero=True)
    _positive("log_every", cfg.log_every, zero=True)
    if cfg.device != "auto":
        try:
            torch.device(cfg.device)
        except (RuntimeError, ValueError):
            raise _bad("device", cfg.device, "auto, cpu, cuda or cuda:N") from None
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
