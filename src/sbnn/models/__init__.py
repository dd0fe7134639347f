"""Model registry: create a network by name, list the names, register new ones.

    >>> model = sbnn.models.create("resnet18_irnet", num_classes=10)
    >>> sbnn.models.list_models()
    ['fmnist_cnn', 'fmnist_cnn_fp', 'reactnet18', 'reactnet18_fp', 'resnet18_irnet', ...]

Every builder takes ``num_classes``, ``in_chans``, and the sparse-binary settings ``domain``,
``weight_estimator`` and ``act`` (the full-precision twins, named ``*_fp``, accept and ignore them),
so a test or a config can iterate the registry uniformly.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable

from torch import nn

__all__ = ["register", "create", "list_models", "is_registered", "architecture_kwargs"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str | None = None):
    """Decorator: register a model builder under ``name`` (default: the function's name)."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model '{key}' is already registered")
        _REGISTRY[key] = fn
        return fn

    return deco


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` filters with shell wildcards (``"*_fp"``)."""
    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def create(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build the registered model ``name``; keyword arguments go to its builder."""
    try:
        fn = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}'; valid: {', '.join(list_models())}") from None
    return fn(num_classes=num_classes, **kwargs)


# arguments every builder takes or sets itself: not part of a model's architecture record
_NOT_ARCH = {"self", "num_classes", "in_chans", "binary", "domain", "weight_estimator", "act"}


def architecture_kwargs(model: nn.Module, given: dict | None = None) -> dict:
    """The architecture arguments ``model`` was built with: its class's defaults, overridden by
    ``given`` (the config's ``model.kwargs``). Tuples become lists (YAML). Recording these in a
    run's config keeps its checkpoint loadable if a default changes later."""
    out = {}
    for p in inspect.signature(type(model).__init__).parameters.values():
        if p.name in _NOT_ARCH or p.default is inspect.Parameter.empty:
            continue
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        out[p.name] = p.default
    out.update(given or {})
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


# Importing the model modules fills the registry.
from sbnn.models import fmnist, reactnet, resnet_irnet, tiny  # noqa: E402, F401
