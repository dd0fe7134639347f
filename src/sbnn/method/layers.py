"""Sparse-binary layers: drop-in ``nn.Conv2d`` / ``nn.Linear`` with weights in {alpha, beta}.

A layer keeps real latent weights ``w``. Its forward pass uses ``q = alpha + (beta - alpha) * b``
with bits ``b = (sign(w) + 1) / 2`` (bit 1 where ``w >= 0``), and binarises its input with ``act``
(or leaves it real when ``act=None``). The domain decides alpha and beta:

``"learned"``
    ``q = tau * sign(w) + phi`` with one learnable scalar pair per layer, initialised tau = 1,
    phi = 0, so ``alpha = phi - tau`` and ``beta = phi + tau`` (Schiavone et al., arXiv:2306.13515).
``"closed_form"``
    alpha and beta are the group means of the latent weights over the current split (the
    least-squares levels for that split), recomputed at each forward, per layer.
``"pm1"``
    The classic BNN: ``{-s_c, +s_c}`` with ``s_c = mean|w|`` per output channel (XNOR-Net).
``"01"``
    ``{0, s_c}``, the domain of "Sparsifying Binary Networks" (arXiv:2207.04974), with ``s_c`` the
    least-squares level for the current bits (mean of ``w`` over the 1-bits of channel c).

In the closed-form, pm1 and 01 domains the levels are computed without gradient; the latent
weights learn only through ``weight_estimator``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbnn.method import estimators
from sbnn.method.primitives import dequantize, group_means, to_bits

__all__ = ["DOMAINS", "SBLayer", "SBConv2d", "SBLinear", "LearnableBias", "RSign", "RPReLU"]

DOMAINS = ("learned", "closed_form", "pm1", "01")


def _check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    return domain


class SBLayer:
    """Behaviour shared by :class:`SBConv2d` and :class:`SBLinear` (a mixin over ``nn.Module``)."""

    weight: nn.Parameter

    def _init_sb(self, domain, weight_estimator, act) -> None:
        self.domain = _check_domain(domain)
        if weight_estimator is None:
            raise ValueError("weight_estimator cannot be None: binary weights need an estimator")
        self.weight_estimator = estimators.get(weight_estimator)
        self.act = estimators.get(act)
        if self.domain == "learned":
            dev, dt = self.weight.device, self.weight.dtype
            self.tau = nn.Parameter(torch.tensor(1.0, device=dev, dtype=dt))
            self.phi = nn.Parameter(torch.tensor(0.0, device=dev, dtype=dt))

    # -- the binary domain -------------------------------------------------------------------
    def bits(self) -> torch.Tensor:
        """Bool tensor of the weight's shape: ``True`` where the latent weight is ``>= 0``."""
        return to_bits(self.weight.detach())

    def _levels(self, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, beta): 0-dim or per output channel ``(C_out,)``; ``b`` is the hard bit mask."""
        if self.domain == "learned":
            return self.phi - self.tau, self.phi + self.tau
        w = w.detach()
        if self.domain == "closed_form":
            return group_means(w.reshape(-1), b.reshape(-1), dtype=w.dtype)
        flat_w, flat_b = w.reshape(w.shape[0], -1), b.reshape(w.shape[0], -1)
        scale = flat_w.abs().mean(1)
        if self.domain == "pm1":
            return -scale, scale
        # 01: {0, mean of w over the channel's 1-bits}; a channel without 1-bits keeps mean|w|
        _, beta = group_means(flat_w, flat_b, dtype=w.dtype)
        return torch.zeros_like(scale), torch.where(flat_b.any(1), beta, scale)

    def alpha_beta(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The two levels, detached: 0-dim tensors, or ``(C_out,)`` for pm1 and 01."""
        a, b = self._levels(self.weight, self.bits())
        return a.detach(), b.detach()

    def quantized_weight(self) -> torch.Tensor:
        """``q = alpha + (beta - alpha) * b`` with the pseudo-gradient of ``weight_estimator``."""
        w = self.weight
        s = self.weight_estimator(w)  # {-1, +1}, pseudo-gradient to w
        if self.domain == "learned":
            return self.tau * s + self.phi
        alpha, beta = self._levels(w, to_bits(w.detach()))
        return dequantize(alpha, beta, (s + 1) / 2)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # ``sbnn convert --granularity channel`` stores tau/phi per output channel: take the
        # saved shape, so any loader (evaluate, export) restores such a layer unchanged
        if self.domain == "learned":
            for pname in ("tau", "phi"):
                saved = state_dict.get(prefix + pname)
                mine = getattr(self, pname)
                if saved is not None and saved.shape != mine.shape:
                    setattr(self, pname, nn.Parameter(mine.new_empty(saved.shape)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def binarize_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.act is None else self.act(x)

    def sb_extra_repr(self) -> str:
        act = "None" if self.act is None else self.act.registry_name
        return (
            f"domain={self.domain}, weight_estimator={self.weight_estimator.registry_name}, "
            f"act={act}"
        )


class SBConv2d(SBLayer, nn.Conv2d):
    """Sparse-binary ``nn.Conv2d``: same signature, plus ``domain``, ``weight_estimator``, ``act``.

    ``x: (N, C_in, H, W) -> (N, C_out, H', W')``; zero padding pads the binarised input with 0.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        domain: str = "learned",
        weight_estimator="ste",
        act="approx_sign",
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype,
        )
        self._init_sb(domain, weight_estimator, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.binarize_input(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self.sb_extra_repr()


class SBLinear(SBLayer, nn.Linear):
    """Sparse-binary ``nn.Linear``: same signature, plus ``domain``, ``weight_estimator``, ``act``.

    ``x: (N, *, in_features) -> (N, *, out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        domain: str = "learned",
        weight_estimator="ste",
        act="approx_sign",
    ):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_sb(domain, weight_estimator, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.binarize_input(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self.sb_extra_repr()


def _channel_view(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # per-channel parameter (C,) broadcast over x: (N, C, *spatial)
    return p.view((1, -1) + (1,) * (x.dim() - 2))


class LearnableBias(nn.Module):
    """Per-channel learnable shift ``y = x + bias_c`` (ReActNet's "move"), initialised to 0."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x + _channel_view(self.bias, x)


class RSign(nn.Module):
    """ReActNet's RSign (Liu et al., arXiv:2003.03488): ``y = sign(x + bias_c)``.

    Forward: ``+1`` where ``x >= -bias_c`` else ``-1``. Backward: the estimator's pseudo-gradient
    (ApproxSign by default) at ``x + bias_c``, for both ``x`` and ``bias``.
    """

    def __init__(self, channels: int, estimator="approx_sign"):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.estimator = estimators.get(estimator)
        if self.estimator is None:
            raise ValueError("RSign needs an estimator, got None")

    def forward(self, x):
        return self.estimator(x + _channel_view(self.bias, x))


class RPReLU(nn.Module):
    """ReActNet's RPReLU: ``y = prelu(x - shift_in_c, slope_c) + shift_out_c``.

    ``prelu(z, a) = z if z >= 0 else a * z``; shifts start at 0 and slopes at 0.25.
    """

    def __init__(self, channels: int, init_slope: float = 0.25):
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), float(init_slope)))
        self.shift_out = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        z = x - _channel_view(self.shift_in, x)
        z = torch.where(z >= 0, z, z * _channel_view(self.slope, x))
        return z + _channel_view(self.shift_out, x)
