"""Sign with pseudo-gradients (straight-through estimators), registered by name.

Every estimator's forward is the binary sign with ``sign(0) = +1``. They differ only in the
pseudo-gradient used in backward. Fetch one with :func:`get`::

    est = sbnn.method.estimators.get("ede")   # a new module instance
    xb = est(x)                         # {-1, +1} forward, EDE backward
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from sbnn.method.primitives import sign

__all__ = [
    "Estimator",
    "STE",
    "ClippedSTE",
    "EDE",
    "ApproxSign",
    "CallableEstimator",
    "get",
    "names",
    "register",
    "set_progress",
]

_REGISTRY: dict[str, type[Estimator]] = {}


def register(name: str):
    """Class decorator: make an estimator available as ``get(name)``."""

    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"estimator {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return deco


def names() -> list[str]:
    """Registered estimator names."""
    return sorted(_REGISTRY)


class Estimator(nn.Module):
    """Base class: ``forward(x) = sign(x)`` with a pseudo-gradient from :meth:`grad`."""

    registry_name = "?"

    def grad(self, x: torch.Tensor) -> torch.Tensor:  # d sign(x) / dx, pseudo
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SignWithGrad.apply(x, self)

    def extra_repr(self) -> str:
        return self.registry_name


class _SignWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, est):
        ctx.save_for_backward(x)
        ctx.est = est
        return sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ctx.est.grad(x), None


@register("ste")
class STE(Estimator):
    """Identity straight-through estimator (Bengio et al., arXiv:1308.3432).

    Forward: ``sign(x)``. Backward: ``dy/dx = 1``.
    """

    def grad(self, x):
        return torch.ones_like(x)


@register("clipped_ste")
class ClippedSTE(Estimator):
    """Clipped straight-through estimator (Hubara et al., arXiv:1602.02830).

    Forward: ``sign(x)``. Backward: ``1`` where ``|x| <= clip``, else ``0`` (the edge passes).
    """

    def __init__(self, clip: float = 1.0):
        super().__init__()
        self.clip = float(clip)

    def grad(self, x):
        return (x.abs() <= self.clip).to(x.dtype)

    def extra_repr(self) -> str:
        return f"clip={self.clip}"


@register("ede")
class EDE(Estimator):
    """Error Decay Estimator of IR-Net (Qin et al., arXiv:1909.10788).

    Forward: ``sign(x)``. Backward: ``k * t * (1 - tanh(t * x)^2)``. A schedule drives ``(k, t)``:
    ``t = 10^(log10(0.1) + 2 * epoch / epochs)`` (0.1 -> 10) and ``k = max(1 / t, 1)``; see
    :meth:`set_progress`. ``k`` and ``t`` are buffers, so checkpoints restore them.
    """

    def __init__(self, k: float = 10.0, t: float = 0.1):
        super().__init__()
        self.register_buffer("k", torch.tensor(float(k)))
        self.register_buffer("t", torch.tensor(float(t)))

    def set_kt(self, k: float, t: float) -> None:
        self.k.fill_(float(k))
        self.t.fill_(float(t))

    def set_progress(self, epoch: float, epochs: float) -> None:
        """Set (k, t) for ``epoch`` of ``epochs`` with IR-Net's schedule."""
        if epochs <= 0:
            raise ValueError(f"epochs must be positive, got {epochs}")
        t = 10 ** (math.log10(0.1) + 2.0 * epoch / epochs)
        self.set_kt(max(1.0 / t, 1.0), t)

    def grad(self, x):
        t = self.t.to(x.dtype)
        k = self.k.to(x.dtype)
        return k * t * (1 - torch.tanh(t * x) ** 2)

    def extra_repr(self) -> str:
        return f"k={float(self.k):.4g}, t={float(self.t):.4g}"


@register("approx_sign")
class ApproxSign(Estimator):
    """ApproxSign of Bi-Real Net (Liu et al., arXiv:1808.00278), used by ReActNet.

    Forward: ``sign(x)``. Backward: ``2 + 2x`` on ``[-1, 0)``, ``2 - 2x`` on ``[0, 1)``, ``0``
    elsewhere (the derivative of the piecewise quadratic ``2x + x^2`` / ``2x - x^2``).
    """

    def grad(self, x):
        g = torch.where(x < 0, 2 + 2 * x, 2 - 2 * x)
        return torch.where(x.abs() < 1, g, torch.zeros_like(x))


class CallableEstimator(Estimator):
    """Wraps a user function ``f(x) -> tensor`` (its own autograd defines the gradient)."""

    registry_name = "callable"

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


def get(identifier: str | Estimator | Callable | None) -> Estimator | None:
    """Resolve an estimator: a registered name (new instance), an instance, a callable, or None."""
    if identifier is None or isinstance(identifier, Estimator):
        return identifier
    if isinstance(identifier, str):
        try:
            return _REGISTRY[identifier]()
        except KeyError:
            raise ValueError(
                f"unknown estimator {identifier!r}; valid names: {', '.join(names())}"
            ) from None
    if isinstance(identifier, nn.Module) or callable(identifier):
        return CallableEstimator(identifier)
    raise TypeError(
        f"estimator must be a name ({', '.join(names())}), an Estimator, a callable or None; "
        f"got {type(identifier).__name__}"
    )


def set_progress(model: nn.Module, epoch: float, epochs: float) -> int:
    """Drive every EDE inside ``model`` to its (k, t) for ``epoch`` of ``epochs``.

    Returns the number of EDE modules updated.
    """
    count = 0
    for m in model.modules():
        if isinstance(m, EDE):
            m.set_progress(epoch, epochs)
            count += 1
    return count
