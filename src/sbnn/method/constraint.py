"""The sparsity constraint that trains a sparse-binary network towards a target ones fraction."""

from __future__ import annotations

import torch
from torch import nn

from sbnn.method.layers import SBLayer
from sbnn.method.primitives import to_bits

__all__ = ["SparsityConstraint", "sb_layers"]


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
    ):
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

    @property
    def active(self) -> bool:
        return self.gamma > 0 and self.ec < 0.5

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
