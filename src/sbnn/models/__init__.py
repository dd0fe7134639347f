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
from collections.abc import Callable

from torch import nn

__all__ = ["register", "create", "list_models", "is_registered"]

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


# Importing the model modules fills the registry.
from sbnn.models import fmnist, reactnet, resnet_irnet  # noqa: E402, F401
