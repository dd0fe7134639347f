"""Sparse-binary layers: drop-in ``nn.Conv2d`` / ``nn.Linear`` with weights in {alpha, beta}.

A layer keeps real latent weights ``w``. Its forward pass uses ``q = tau * s + phi`` with
``s = sign(w)`` (``+1`` where ``w >= 0``), i.e. ``q = alpha + (beta - alpha) * b`` with bits
``b = (s + 1) / 2``, ``alpha = phi - tau`` and ``beta = phi + tau``; it binarises its input with
``act`` (or leaves it real when ``act=None``).

``"learned"``, ``"pm1"`` and ``"01"`` are one parametrisation with different ties, so that the tie
is the only difference between them (Schiavone et al., arXiv:2306.13515):

``"learned"`` (the paper's {alpha, beta}, ``ab`` in a sweep)
    tau and phi are free learnable scalars per layer, initialised tau = 1, phi = 0.
``"pm1"`` (the classic BNN)
    phi = 0 is tied: ``q = tau * s`` in ``{-tau, +tau}``, alpha / beta = -1. tau is learnable.
``"01"`` (the domain of "Sparsifying Binary Networks", arXiv:2207.04974)
    phi = tau is tied: ``q = 2 * tau * b`` in ``{0, 2 tau}``, alpha = 0. tau is learnable.
    A filter with no 1-bit outputs exactly 0; the BatchNorm that follows then scales its gradient
    by 1/sqrt(eps) (about 316) instead of 1/std of the filter's output, which swamps the sparsity
    penalty and regrows the filter. So the task gradient to the latent weights of an all-zero
    filter is cut (its forward is unchanged; the penalty still reaches it): a dead filter stays
    dead, as filter removal wants. (This does not stop 01 from settling above a 1 % target in
    short runs; see docs/RESULTS.md.)

All three start at tau = 1 (and phi = 0 or tau); :meth:`SBLayer.fit_levels_` sets them to the
least-squares levels of given weights under the domain's tie (the closed-form start). With a
BatchNorm after the layer only alpha / beta matters, and tau's own gradient is about 0; Adam still
moves it by about ``lr`` a step, so a small fitted tau (pm1: ~0.01) can change sign in training,
which inverts the layer (measured in docs/RESULTS.md).

``"abr"`` (the {alpha, beta} domain with its ratio fixed)
    phi = (1 + 2 r) * tau is tied, with ``r = alpha / (beta - alpha)`` a fixed buffer that the
    trainer sets to ``-sparsity.ec`` (:func:`set_fixed_r_`; -0.05 until set): the least-squares
    r of a split at ones fraction p is about -p (docs/DOMAINS.md). In this family 01 is r = 0
    and pm1 is r = -1/2; ``"learned"`` is r free. tau is learnable.

``"pm1c"`` (the ReActNet-style +-1 baseline)
    ``q = m_c * s`` in ``{-m_c, +m_c}`` with ``m_c = mean |w|`` over output channel c's latent
    weights, recomputed at each forward without gradient (the XNOR-Net / ReActNet scaling); no
    learnable level. The fifth arm of the penalty grid (docs/study_domains/penalty/).
``"closed_form"``
    alpha and beta are the group means of the latent weights over the current split (the
    least-squares levels for that split), recomputed at each forward without gradient, per layer;
    the latent weights learn only through ``weight_estimator``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbnn.method import estimators
from sbnn.method.primitives import dequantize, group_means, to_bits

__all__ = ["DOMAINS", "TIED_DOMAINS", "SCALE_ONLY_DOMAINS", "set_fixed_r_", "SBLayer", "SBConv2d",
           "SBConv1d", "SBLinear", "LearnableBias", "RSign",
           "RPReLU"]

DOMAINS = ("learned", "closed_form", "pm1", "01", "abr", "pm1c")
# domains of the form tau * s + phi with learnable scalars, and their tie of phi to tau
TIED_DOMAINS = ("learned", "pm1", "01", "abr")
# tied domains whose tau is only a scale (alpha / beta fixed): the BatchNorm after the layer absorbs
# it, so sparsity.mode = exact freezes it (Adam would otherwise drift it by ~lr a step, and a sign
# change inverts the layer)
SCALE_ONLY_DOMAINS = ("pm1", "01", "abr")
# the abr domain's r until set_fixed_r_ sets it: -0.05, the main job's EC
DEFAULT_R = -0.05


def _check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    return domain


class SBLayer:
    """Behaviour shared by :class:`SBConv1d`, :class:`SBConv2d` and :class:`SBLinear` (a mixin over
    ``nn.Module``)."""

    weight: nn.Parameter

    def _init_sb(self, domain, weight_estimator, act) -> None:
        self.domain = _check_domain(domain)
        if weight_estimator is None:
            raise ValueError("weight_estimator cannot be None: binary weights need an estimator")
        self.weight_estimator = estimators.get(weight_estimator)
        self.act = estimators.get(act)
        if self.domain in TIED_DOMAINS:
            dev, dt = self.weight.device, self.weight.dtype
            self.tau = nn.Parameter(torch.tensor(1.0, device=dev, dtype=dt))
            if self.domain == "learned":
                self.phi = nn.Parameter(torch.tensor(0.0, device=dev, dtype=dt))
            if self.domain == "abr":  # sbnn train sets -sparsity.ec; a checkpoint restores it
                self.register_buffer("r", torch.tensor(DEFAULT_R, device=dev, dtype=dt))

    def tau_phi(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tau, phi) with the domain's tie applied: pm1 has phi = 0, 01 has phi = tau."""
        if self.domain == "learned":
            return self.tau, self.phi
        if self.domain == "pm1":
            return self.tau, torch.zeros_like(self.tau)
        if self.domain == "01":
            return self.tau, self.tau
        if self.domain == "abr":
            return self.tau, (1 + 2 * self.r) * self.tau
        raise ValueError(f"domain {self.domain!r} has no tau/phi")

    @torch.no_grad()
    def fit_levels_(self, w: torch.Tensor | None = None, bits: torch.Tensor | None = None) -> None:
        """Set tau (and phi) to the least-squares levels of ``w`` (default: the latent weights)
        split by ``bits`` (default: ``w >= 0``), under the domain's tie, per layer:
        learned: alpha, beta = group means; pm1: ``tau = mean(w * s)``; 01:
        ``tau = mean(w[b]) / 2``; abr: ``tau = <w, s + c> / |s + c|^2`` with ``c = 1 + 2 r``.
        A split with an empty group keeps the current levels."""
        if self.domain not in TIED_DOMAINS:
            return
        w = (self.weight if w is None else w).detach()
        b = (w >= 0) if bits is None else bits.to(torch.bool)
        n1, n = int(b.sum()), b.numel()
        s = b.to(w.dtype) * 2 - 1
        if self.domain == "pm1":
            self.tau.fill_(float((w * s).mean()))
            return
        if self.domain == "abr":  # q = tau * (s + c), c = 1 + 2r: tau = <w, s+c> / |s+c|^2
            u = s + (1 + 2 * float(self.r))
            den = float((u * u).sum())
            if den > 0:
                self.tau.fill_(float((w * u).sum()) / den)
            return
        if n1 == 0 or (self.domain == "learned" and n1 == n):
            return
        beta = float(w[b].mean())
        if self.domain == "01":
            self.tau.fill_(beta / 2)
            return
        alpha = float(w[~b].mean())
        self.tau.fill_((beta - alpha) / 2)
        self.phi.fill_((beta + alpha) / 2)

    # -- the binary domain -------------------------------------------------------------------
    def bits(self) -> torch.Tensor:
        """Bool tensor of the weight's shape: ``True`` where the latent weight is ``>= 0``."""
        return to_bits(self.weight.detach())

    def _levels(self, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, beta): 0-dim or per output channel ``(C_out,)``; ``b`` is the hard bit mask."""
        if self.domain in TIED_DOMAINS:
            tau, phi = self.tau_phi()
            return phi - tau, phi + tau
        w = w.detach()
        if self.domain == "pm1c":  # per output channel mean |w|, without gradient
            m = w.abs().reshape(w.shape[0], -1).mean(1)
            return -m, m
        # closed_form: the group means of the current split, without gradient
        return group_means(w.reshape(-1), b.reshape(-1), dtype=w.dtype)

    def alpha_beta(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The two levels, detached: 0-dim tensors (per-channel after a per-channel convert)."""
        a, b = self._levels(self.weight, self.bits())
        return a.detach(), b.detach()

    def quantized_weight(self) -> torch.Tensor:
        """``q = alpha + (beta - alpha) * b`` with the pseudo-gradient of ``weight_estimator``."""
        w = self.weight
        s = self.weight_estimator(w)  # {-1, +1}, pseudo-gradient to w
        if self.domain == "01":
            # no task gradient into an all-zero filter (see the module docstring)
            alive = to_bits(w.detach()).reshape(w.shape[0], -1).any(1)
            s = torch.where(alive.view((-1,) + (1,) * (w.dim() - 1)), s, s.detach())
        if self.domain in TIED_DOMAINS:
            tau, phi = self.tau_phi()
            return tau * s + phi
        alpha, beta = self._levels(w, to_bits(w.detach()))
        return dequantize(alpha, beta, (s + 1) / 2)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # ``sbnn convert --granularity channel`` stores tau/phi per output channel: take the
        # saved shape, so any loader (evaluate, export) restores such a layer unchanged
        if self.domain in ("pm1", "01") and prefix + "tau" not in state_dict \
                and prefix + "weight" in state_dict:
            # a checkpoint from before pm1/01 had tau: their levels were per output channel,
            # computed from the weights; freeze them as a per-channel tau (exact at eval)
            state_dict[prefix + "tau"] = _legacy_channel_tau(self.domain,
                                                             state_dict[prefix + "weight"])
        if self.domain in TIED_DOMAINS:
            for pname in ("tau", "phi") if self.domain == "learned" else ("tau",):
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


class _SBConvNd(SBLayer):
    """The body :class:`SBConv1d` and :class:`SBConv2d` share: the ``nn.Conv1d`` / ``nn.Conv2d``
    signature plus ``domain``, ``weight_estimator``, ``act``, and a forward that convolves the
    binarised input with the quantised weight. Listed before the torch conv class in the bases,
    so ``super().__init__`` reaches it."""

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


class SBConv2d(_SBConvNd, nn.Conv2d):
    """Sparse-binary ``nn.Conv2d``: same signature, plus ``domain``, ``weight_estimator``, ``act``.

    ``x: (N, C_in, H, W) -> (N, C_out, H', W')``; zero padding pads the binarised input with 0.
    """


class SBConv1d(_SBConvNd, nn.Conv1d):
    """Sparse-binary ``nn.Conv1d`` (audio, sensor nets): as :class:`SBConv2d`, one dimension.

    ``x: (N, C_in, L) -> (N, C_out, L')``; the exporter runs it as a conv2d with a (1, k) kernel
    on the (C, 1, L) map.
    """


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


@torch.no_grad()
def set_fixed_r_(model: nn.Module, r: float) -> int:
    """Set the fixed ``r = alpha / (beta - alpha)`` of every ``abr`` layer of ``model`` (the
    trainer uses ``r = -sparsity.ec``); returns how many layers were set."""
    if not -1.0 < float(r) <= 0.0:
        raise ValueError(f"r = alpha / (beta - alpha) must be in (-1, 0], got {r}")
    n = 0
    for m in model.modules():
        if isinstance(m, SBLayer) and m.domain == "abr":
            m.r.fill_(float(r))
            n += 1
    return n


def _legacy_channel_tau(domain: str, w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel tau reproducing the old pm1 ({-mean|w_c|, +mean|w_c|}) and 01
    ({0, mean of w_c over its 1-bits}) levels."""
    w = w.detach()
    flat = w.reshape(w.shape[0], -1)
    view = (-1,) + (1,) * (w.dim() - 1)
    scale = flat.abs().mean(1)
    if domain == "pm1":
        return scale.view(view).clone()
    fb = (flat >= 0).to(w.dtype)
    n1 = fb.sum(1)
    level = torch.where(n1 > 0, (flat * fb).sum(1) / n1.clamp(min=1), scale)
    return (level / 2).view(view).clone()


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
