"""The sparsity constraint that trains a sparse-binary network towards a target ones fraction."""

from __future__ import annotations

import math

import torch
from torch import nn

from sbnn.method.layers import SBLayer
from sbnn.method.primitives import to_bits

__all__ = ["SparsityConstraint", "sb_layers", "exact_ones_", "MODES"]

# penalty: the paper's hinge penalty (the default) | exact: after every step each layer is split at
# exactly round(ec * n) ones (:func:`exact_ones_`), no penalty
MODES = ("penalty", "exact")


def sb_layers(model: nn.Module) -> list[tuple[str, SBLayer]]:
    """``(name, layer)`` for every sparse-binary layer of ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SBLayer)]


class _BitsSTE(torch.autograd.Function):
    """Bits ``b = (sign(w) + 1) / 2`` with an identity STE on the sign: ``db/dw = 1/2``.

    The same count as the authors' code, so the penalty's gradient has their scale.
    """

    @staticmethod
    def forward(ctx, w):
        return to_bits(w).to(w.dtype)

    @staticmethod
    def backward(ctx, g):
        return 0.5 * g


def exact_count(ec: float, n: int) -> int:
    """The number of 1-bits of a layer of ``n`` weights at ones fraction ``ec``:
    ``floor(ec * n + 0.5)`` (round half up, as the closed-form start)."""
    return int(math.floor(float(ec) * n + 0.5))


@torch.no_grad()
def exact_ones_(w: torch.Tensor, k: int) -> float:
    """Shift the latent weights ``w`` (in place) by one constant so that exactly the ``k``
    largest are ``>= 0``: moving the layer's sign threshold to the k-th largest latent weight.

    The shift is the midpoint between the k-th and the (k+1)-th largest value. Ties are broken
    deterministically: among equal values the lower flat (row-major) index is the 1-bit (a stable
    sort); a tied weight on the wrong side is set to 0 (a 1-bit) or to ``-tiny`` (a 0-bit). Returns
    the shift."""
    flat = w.reshape(-1)
    n = flat.numel()
    if not 0 < k < n:
        raise ValueError(f"exact sparsity needs 0 < k < n, got k={k} of n={n}")
    vals, order = torch.sort(flat, descending=True, stable=True)
    thr = (vals[k - 1] + vals[k]) / 2
    top = torch.zeros(n, dtype=torch.bool, device=flat.device)
    top[order[:k]] = True
    shifted = flat - thr
    tiny = torch.finfo(flat.dtype).tiny
    shifted = torch.where(top, shifted.clamp(min=0), shifted.clamp(max=-tiny))
    w.copy_(shifted.view_as(w))
    return float(thr)


class SparsityConstraint:
    """Hinge penalty on the global ones fraction of every sparse-binary layer of ``model``.

    With ``p`` the share of 1-bits over all binary weights (counted with an identity
    straight-through gradient) and ``L`` the task loss::

        h = relu(p - ec)
        lambda = gamma * L / (h * (1 - gamma))     # no gradient; only when h > threshold
        penalty = lambda * h

    so the penalty is always the fraction ``gamma`` of the total loss ``L + penalty`` while it is
    active (Schiavone et al., arXiv:2306.13515). As in the authors' code there is no penalty when
    ``ec >= 0.5`` (the dense BNN) or ``gamma == 0``. Call :meth:`clamp_` after every optimiser
    step to keep the latent weights in ``[-clamp, clamp]``.

    ``mode="exact"``: no penalty (``__call__`` returns 0 and records ``p``); instead
    :meth:`project_`, called after every optimiser step (after :meth:`clamp_`), moves each layer's
    threshold so that exactly ``floor(ec * n + 0.5)`` of its ``n`` weights are 1-bits.

    Usage::

        constraint = SparsityConstraint(model, ec=0.05, gamma=0.07)
        loss = criterion(model(x), y)
        (loss + constraint(loss)).backward()
        optimizer.step()
        constraint.clamp_()
    """

    def __init__(
        self,
        model: nn.Module,
        ec: float,
        gamma: float,
        threshold: float = 1e-4,
        clamp: float = 1.5,
        mode: str = "penalty",
    ):
        if mode not in MODES:
            raise ValueError(f"unknown sparsity mode {mode!r}; valid: {', '.join(MODES)}")
        if not 0.0 < float(ec) <= 1.0:
            raise ValueError(f"ec (target ones fraction) must be in (0, 1], got {ec}")
        if not 0.0 <= float(gamma) < 1.0:
            raise ValueError(f"gamma (penalty share of the loss) must be in [0, 1), got {gamma}")
        self.layers = [m for _, m in sb_layers(model)]
        if not self.layers:
            raise ValueError(
                "model has no sparse-binary layers (SBConv2d/SBLinear); "
                "call sbnn.binarize_(model, config) first"
            )
        self.ec, self.gamma = float(ec), float(gamma)
        self.threshold, self.clamp = float(threshold), float(clamp)
        self.num_weights = sum(m.weight.numel() for m in self.layers)
        self.last: dict[str, float] = {}
        self.mode = mode
        if mode == "exact":
            self.counts = [exact_count(self.ec, m.weight.numel()) for m in self.layers]
            for (name, m), k in zip(sb_layers(model), self.counts, strict=True):
                if not 0 < k < m.weight.numel():
                    raise ValueError(f"layer {name!r} has {m.weight.numel()} weights: ec={ec} "
                                     f"rounds to {k} one-bits; exact sparsity needs at least "
                                     "one 1-bit and one 0-bit")

    @property
    def active(self) -> bool:
        """Whether the penalty is on (never in exact mode)."""
        return self.mode == "penalty" and self.gamma > 0 and self.ec < 0.5

    @torch.no_grad()
    def project_(self) -> None:
        """Exact mode: split every layer at exactly its count of 1-bits (:func:`exact_ones_`)."""
        if self.mode != "exact":
            return
        for m, k in zip(self.layers, self.counts, strict=True):
            exact_ones_(m.weight, k)

    def ones_fraction(self) -> torch.Tensor:
        """Global ones fraction ``p``, a 0-dim tensor carrying the straight-through gradient."""
        ones = sum(_BitsSTE.apply(m.weight).sum() for m in self.layers)
        return ones / self.num_weights

    def __call__(self, loss: torch.Tensor) -> torch.Tensor:
        """The penalty ``lambda * h`` to add to ``loss`` (a 0-dim tensor, 0 when inactive)."""
        p = self.ones_fraction()
        h = torch.relu(p - self.ec)
        hv = float(h.detach())
        if self.active and hv > self.threshold:
            with torch.no_grad():
                lam = self.gamma * loss.detach() / (h.detach() * (1 - self.gamma))
            penalty = lam * h
        else:
            lam = torch.zeros((), device=p.device, dtype=p.dtype)
            penalty = h * 0.0
        self.last = {"ones_fraction": float(p.detach()), "h": hv, "lambda": float(lam)}
        return penalty

    penalty = __call__

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp every sparse-binary layer's latent weights to ``[-clamp, clamp]``."""
        for m in self.layers:
            m.weight.clamp_(-self.clamp, self.clamp)
