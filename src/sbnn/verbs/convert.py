"""Closed-form conversion of a full-precision network into the {alpha, beta} binary domain.

:func:`convert` takes a trained full-precision model (a ``*_fp`` twin of the registry, its binary
twin with the float weights loaded, or any model whose convs :func:`sbnn.binarize_` can swap)
and returns the same architecture with sparse-binary layers whose bits and levels are the
least-squares quantisation of the float weights at a target ones fraction ``p``
(Schiavone et al., arXiv:2306.13515, "closed-form solution"):

* For a group of weights (a layer, or one output channel of it) with ``k`` ones, the optimal 1-set
  is the ``k`` largest weights and the optimal levels are the group means
  ``beta = mean(w[bits])``, ``alpha = mean(w[~bits])``.
* ``allocation="uniform"``: every group gets ``k = round(p * n)`` ones.
  ``allocation="global"``: one budget of 1-bits (the uniform allocation's total) is spent across
  all groups to minimise the summed squared error ``sum_g E_g(k_g)``. ``E_g(k)`` comes from prefix
  sums over the sorted weights; a bisection on the price of a 1-bit finds the Lagrangian
  solution (vertices of the curves' lower convex hulls), exact in the budget, then single
  1-bit exchanges between groups polish it, and the uniform allocation is returned instead if it
  is better (it never is in practice; the guarantee is by construction).
* The latent weights become ``w - t_g`` with ``t_g`` between the k-th and (k+1)-th largest weight of
  the group, so exactly the chosen weights are ``>= 0`` (the sign convention).
* Levels: in the ``"learned"`` domain, layer granularity sets the scalars
  ``tau = (beta - alpha) / 2``, ``phi = (beta + alpha) / 2``; channel granularity replaces them by
  per-output-channel parameters of shape ``(C_out, 1, 1, 1)`` (``(C_out, 1)`` for linear), which
  the layer's ``tau * s + phi`` broadcasts as is, and which stay learnable in fine-tuning. The
  other domains compute their levels from the latent weights by their own rule (closed_form:
  group means of the shifted latents; pm1: +-mean|w|; 01: {0, mean}); only ``"learned"`` keeps
  the float weights' group means exactly.

Pruning strategies (:mod:`sbnn.verbs.prune`) combine with the conversion: magnitude pruning
zeroes the smallest float weights and fixes their bits at 0 before the split; dead filters and
removed kernels are fixed at 0 and the split spends the same ``k`` on the remaining weights; kernel
patterns project the converted bits onto learned codebooks (then the ones fraction moves, and
the levels are recomputed as group means over the final bits).

The ``sbnn convert`` command (:mod:`sbnn.pipeline.convert_run`) wraps this with checkpoint
loading, optional fine-tuning under the sparsity constraint, and a run folder like
``sbnn train``'s.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sbnn.method.constraint import sb_layers
from sbnn.method.primitives import group_means, to_bits
from sbnn.verbs.binarize import BinarizeConfig, binarize_
from sbnn.verbs.prune import (
    LayerMasks,
    PruneConfig,
    attach_,
    attached_masks,
    filter_mask,
    following_batchnorm,
    kernel_mask,
    learn_patterns,
    magnitude_mask,
    project_patterns,
)

__all__ = [
    "GRANULARITIES",
    "ALLOCATIONS",
    "ConversionError",
    "error_curve",
    "allocate",
    "convert",
    "quantization_errors",
    "enforce_budget_",
    "recalibrate_batchnorm_",
]

GRANULARITIES = ("layer", "channel")
ALLOCATIONS = ("uniform", "global")
_TINY = 1e-6


class ConversionError(ValueError):
    """The model, checkpoint or target cannot be converted (the message says why)."""


# --------------------------------------------------------------------------------------------
# error curves and the allocation of 1-bits
# --------------------------------------------------------------------------------------------

def error_curve(values: torch.Tensor, forced: torch.Tensor | None = None) -> np.ndarray:
    """``E[k]``, k = 0..n_free: least-squares error of the best 2-level fit of ``values`` (1-D)
    with exactly ``k`` ones among the non-forced entries (the ``k`` largest), float64.

    ``E(k) = sum w^2 - S1^2 / k - S0^2 / (n - k)`` with ``S1`` the sum of the k largest free
    values and ``S0`` the rest (an empty group contributes 0).
    """
    v = values.detach().reshape(-1).double()
    n = v.numel()
    free = v if forced is None else v[~forced.reshape(-1)]
    top = torch.sort(free, descending=True).values
    s1 = torch.cat([torch.zeros(1, dtype=v.dtype), top.cumsum(0)])
    k = torch.arange(top.numel() + 1, dtype=v.dtype)
    total, sumsq = v.sum(), (v * v).sum()
    s0 = total - s1
    e = sumsq - torch.where(k > 0, s1 * s1 / k.clamp(min=1), torch.zeros_like(k)) - torch.where(
        n - k > 0, s0 * s0 / (n - k).clamp(min=1), torch.zeros_like(k))
    return e.clamp(min=0).numpy()


def _k_at(curves: list[np.ndarray], lo: list[int], hi: list[int], lam: float,
          ar: np.ndarray) -> list[int]:
    """Per group, the k in [lo, hi] minimising ``E(k) + lam * k`` (the smallest on ties)."""
    return [lo[g] + int(np.argmin(e[lo[g]:hi[g] + 1] + lam * ar[lo[g]:hi[g] + 1]))
            for g, e in enumerate(curves)]


def allocate(curves: list[np.ndarray], budget: int, lo: list[int], hi: list[int],
             start: list[int] | None = None, polish: int = 2000) -> list[int]:
    """Spend ``budget`` 1-bits over groups to minimise ``sum_g curves[g][k_g]``, ``lo <= k <= hi``.

    Lagrangian: bisection on the price ``lam`` of a 1-bit, each group taking the k that minimises
    ``E(k) + lam * k`` (a vertex of its curve's lower convex hull), until the total brackets the
    budget; the groups that jump at the final price share the rest (hull segments of equal slope,
    the last one in part). Then at most ``polish`` single 1-bit moves, from the group where
    removing costs least to the one where adding gains most, while that lowers the total. If
    ``start`` (e.g. the uniform allocation, same total) is given and is better, it is returned:
    the result is never worse than ``start``.
    """
    g_n = len(curves)
    base = sum(lo)
    if not base <= budget <= sum(hi):
        raise ConversionError(f"budget of {budget} 1-bits is outside [{base}, {sum(hi)}]")
    ar = np.arange(max(hi) + 1, dtype=np.float64)
    steep = max(float(np.abs(np.diff(e)).max()) if e.size > 1 else 0.0 for e in curves) + 1.0
    lam_lo, lam_hi = -steep, steep  # K(lam_lo) = sum(hi) >= budget >= K(lam_hi) = sum(lo)
    k_lo, k_hi = list(hi), list(lo)
    for _ in range(100):
        mid = 0.5 * (lam_lo + lam_hi)
        if not lam_lo < mid < lam_hi:
            break
        k_mid = _k_at(curves, lo, hi, mid, ar)
        total = sum(k_mid)
        if total == budget:
            k_lo = k_hi = k_mid
            break
        if total > budget:
            lam_lo, k_lo = mid, k_mid
        else:
            lam_hi, k_hi = mid, k_mid
    k = list(k_hi)  # total <= budget; fill from the groups that jump at this price
    left = budget - sum(k)
    for g in range(g_n):
        if left <= 0:
            break
        step = min(max(k_lo[g] - k[g], 0), left)
        k[g] += step
        left -= step
    for g in range(g_n):  # only if the bracket was not exact in every group
        if left <= 0:
            break
        step = min(hi[g] - k[g], left)
        k[g] += step
        left -= step
    # polish with single exchanges
    for _ in range(polish):
        gain = np.array([curves[g][k[g]] - curves[g][k[g] + 1] if k[g] < hi[g] else -np.inf
                         for g in range(g_n)])
        cost = np.array([curves[g][k[g] - 1] - curves[g][k[g]] if k[g] > lo[g] else np.inf
                         for g in range(g_n)])
        ga = int(np.argmax(gain))
        cost_o = cost.copy()
        cost_o[ga] = np.inf
        gr = int(np.argmin(cost_o))
        if not gain[ga] - cost_o[gr] > 1e-12 * (1 + abs(gain[ga])):
            break
        k[ga] += 1
        k[gr] -= 1
    if start is not None:
        tot = sum(curves[g][k[g]] for g in range(g_n))
        tot_start = sum(curves[g][start[g]] for g in range(g_n))
        if tot_start < tot:
            return list(start)
    return k


# --------------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------------

@dataclass
class _Group:
    layer: str
    row: int  # -1: the whole layer
    n: int
    n_free: int
    k: int = 0


def _rows(w: torch.Tensor, granularity: str) -> torch.Tensor:
    return w.reshape(1, -1) if granularity == "layer" else w.reshape(w.shape[0], -1)


def _split_rows(rows: torch.Tensor, forced: torch.Tensor, ks: list[int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bits (the ``k`` largest free entries of each row; among equal values the later position)
    and the threshold per row (midway between the k-th and the next free value)."""
    bits = torch.zeros_like(rows, dtype=torch.bool)
    thr = torch.zeros(rows.shape[0], dtype=torch.float64)
    for r in range(rows.shape[0]):
        v = rows[r].double()
        free_idx = (~forced[r]).nonzero().squeeze(1)
        fv = v[free_idx]
        # stable ascending sort, take from the end: later positions win ties, like closed_form
        order = torch.sort(fv, stable=True).indices
        k = ks[r]
        if k:
            bits[r, free_idx[order[fv.numel() - k:]]] = True
        hi_v = fv[order[fv.numel() - k]] if k else v.max() + 1.0
        lo_v = fv[order[fv.numel() - k - 1]] if k < fv.numel() else (
            v[~bits[r]].min() - 1.0 if bool((~bits[r]).any()) else hi_v - 1.0)
        thr[r] = (hi_v + lo_v) / 2
    return bits, thr


def _fill_kernels(bits: torch.Tensor, values: torch.Tensor, forced: torch.Tensor, taps: int
                  ) -> None:
    """In place on one group (a row of kernels): give every kernel that is not wholly forced at
    least one 1-bit, by moving the weakest 1-bits of kernels that hold two or more (the count of
    ones stays the same). So kernel removal leaves exactly the forced kernels all-zero whenever
    the group has enough ones for that."""
    b = bits.view(-1, taps)
    v = values.double().reshape(-1, taps)
    f = forced.view(-1, taps).all(1)
    empty = (~f) & ~b.any(1)
    need = int(empty.sum())
    if need == 0:
        return
    cnt = b.sum(1)
    sv, si = torch.sort(v.masked_fill(~b, math.inf), dim=1)  # the kernel's ones, weakest first
    cand = torch.arange(taps).unsqueeze(0) < (cnt - 1).unsqueeze(1)  # all but its strongest
    rows_i, cols_j = cand.nonzero(as_tuple=True)
    cvals = sv[rows_i, cols_j]
    take = min(need, int(cvals.numel()))
    if take == 0:
        return
    pick = torch.sort(cvals, stable=True).indices[:take]
    b[rows_i[pick], si[rows_i[pick], cols_j[pick]]] = False
    recv = empty.nonzero().squeeze(1)
    best_val = v[recv].masked_fill(forced.view(-1, taps)[recv], -math.inf).max(1)
    order = torch.sort(best_val.values, descending=True, stable=True).indices[:take]
    b[recv[order], best_val.indices[order]] = True


def _set_levels(m: nn.Module, alpha: torch.Tensor, beta: torch.Tensor, granularity: str) -> None:
    if m.domain != "learned":
        return
    dev, dt = m.weight.device, m.weight.dtype
    tau = ((beta - alpha) / 2).to(dev, dt)
    phi = ((beta + alpha) / 2).to(dev, dt)
    if granularity == "layer":
        if m.tau.dim() == 0:
            m.tau.fill_(float(tau[0]))
            m.phi.fill_(float(phi[0]))
            return
        tau, phi = tau.expand(m.weight.shape[0]), phi.expand(m.weight.shape[0])
    view = (-1,) + (1,) * (m.weight.dim() - 1)
    m.tau = nn.Parameter(tau.reshape(view).clone())
    m.phi = nn.Parameter(phi.reshape(view).clone())


@torch.no_grad()
def convert(
    model: nn.Module,
    ones: float,
    granularity: str = "layer",
    allocation: str = "uniform",
    prune: PruneConfig | None = None,
    config: BinarizeConfig | None = None,
    inplace: bool = False,
    return_info: bool = False,
):
    """Convert a full-precision ``model`` to sparse-binary in closed form at ones fraction ``ones``.

    Args:
        model: a float model (its convs/linears are swapped by ``binarize_(model, config)``), or a
            model whose sparse-binary layers hold float weights (e.g. the registry's binary twin
            with the float checkpoint loaded); then those layers are converted.
        ones: target ones fraction ``p`` in (0, 1).
        granularity: ``"layer"`` (one split and one {alpha, beta} per layer) or ``"channel"``
            (per output channel).
        allocation: ``"uniform"`` (``round(p * n)`` ones per group) or ``"global"`` (the same
            total spent to minimise the summed squared error; see the module docstring).
        prune: pruning applied with the conversion; the masks are attached to the returned
            model (:func:`sbnn.verbs.prune.attach_`) so fine-tuning keeps them.
        config: how to binarize a float model (default ``BinarizeConfig()``).
        inplace: convert ``model`` itself instead of a deep copy.
        return_info: also return a dict with the float weights (``"float_weights"``), the
            per-group ones budgets (``"budgets"``: ``{layer: [k per group]}``) and the masks.

    Returns:
        The converted model (and the info dict when ``return_info``).

    Raises:
        ConversionError: ``ones`` outside (0, 1), an unknown granularity/allocation, no layer to
        convert, or a group too small for the fraction (``round(p * n) == 0``) or with fewer
        free weights than its ones.
    """
    _check_target(ones, granularity, allocation)
    prune = prune or PruneConfig()
    if not inplace:
        model = copy.deepcopy(model)
    if not sb_layers(model):
        binarize_(model, config or BinarizeConfig())
    layers = sb_layers(model)
    if not layers:
        raise ConversionError("the model has no conv or linear layer that can be made binary")
    bns = following_batchnorm(model) if prune.filters else {}

    # 1. float weights, magnitude pruning, dead filters, forced zeros
    float_w, masks = _prune_floats(layers, prune, bns)
    # 2. kernel removal: the weakest kernels against the uniform split threshold
    spatial = {name for name, m in layers if m.weight.dim() == 4
               and m.weight.shape[2] * m.weight.shape[3] > 1}
    if prune.kernels:
        _remove_kernels(layers, masks, spatial, ones, granularity, prune.kernels)
    # 3. allocation
    groups_rows = {name: _rows(m.weight, granularity) for name, m in layers}
    groups_forced = {name: _rows(masks[name].zero, granularity) for name, _ in layers}
    budgets = {name: _uniform_ks(name, groups_rows[name], groups_forced[name], ones, granularity)
               for name, _ in layers}
    if allocation == "global":
        budgets = _global_budgets(layers, groups_rows, groups_forced, budgets)
    # 4. split, levels, latent weights; then patterns
    for name, m in layers:
        _convert_layer(m, groups_rows[name], groups_forced[name], budgets[name], masks[name],
                       float_w[name], granularity, prune,
                       kernels=bool(prune.kernels) and name in spatial,
                       patterns=bool(prune.patterns) and name in spatial)
    if prune.active:
        attach_(model, masks)
    if return_info:
        return model, {"float_weights": float_w, "budgets": budgets, "masks": masks,
                       "granularity": granularity, "allocation": allocation, "ones": ones}
    return model


def _check_target(ones, granularity: str, allocation: str) -> None:
    if isinstance(ones, bool) or not isinstance(ones, (int, float)) or not 0.0 < ones < 1.0 \
            or math.isnan(ones):
        raise ConversionError(f"ones must be a fraction in the open interval (0, 1), got {ones!r}")
    if granularity not in GRANULARITIES:
        raise ConversionError(
            f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
    if allocation not in ALLOCATIONS:
        raise ConversionError(
            f"unknown allocation {allocation!r}; valid: {', '.join(ALLOCATIONS)}")


def _prune_floats(layers, prune: PruneConfig, bns: dict
                  ) -> tuple[dict[str, torch.Tensor], dict[str, LayerMasks]]:
    """Magnitude pruning (zeroes the smallest float weights in place) and dead filters; returns
    the float weights (after magnitude pruning) and each layer's masks (``zero``: forced 0)."""
    float_w: dict[str, torch.Tensor] = {}
    masks: dict[str, LayerMasks] = {}
    for name, m in layers:
        w = m.weight
        lm = LayerMasks()
        zero = torch.zeros_like(w, dtype=torch.bool)
        if prune.magnitude:
            mm = magnitude_mask(w, prune.magnitude)
            w[mm] = 0.0
            zero |= mm
        if prune.filters:
            if name not in bns:
                raise ConversionError(
                    f"filter pruning needs a BatchNorm right after layer {name!r}; none found")
            lm.dead = filter_mask(w, prune.filters)
            zero[lm.dead] = True
        lm.zero = zero
        masks[name] = lm
        float_w[name] = w.detach().clone()
    return float_w, masks


def _uniform_ks(name: str, rows: torch.Tensor, forced: torch.Tensor, ones: float,
                granularity: str) -> list[int]:
    """``round(ones * n)`` one-bits per group (0 for a wholly forced one), or a ConversionError
    when that is 0 or more than the group's free weights."""
    ks = []
    for r in range(rows.shape[0]):
        n, n_free = rows.shape[1], int((~forced[r]).sum())
        k = int(math.floor(ones * n + 0.5))
        where = f"layer {name!r}" + (f" channel {r}" if granularity == "channel" else "")
        if n_free == 0:
            ks.append(0)
            continue
        if k == 0:
            raise ConversionError(
                f"{where} has {n} weights: ones={ones} rounds to 0 one-bits; choose a larger "
                "fraction or layer granularity")
        if k > n_free:
            raise ConversionError(
                f"{where}: {k} one-bits are asked but pruning leaves only {n_free} free "
                f"weights of {n}")
        ks.append(k)
    return ks


def _remove_kernels(layers, masks: dict[str, LayerMasks], spatial: set[str], ones: float,
                    granularity: str, share: float) -> None:
    """Add the weakest kernels (against the uniform split's threshold) to the forced zeros."""
    for name, m in layers:
        if name not in spatial:
            continue
        rows = _rows(m.weight, granularity)
        forced = _rows(masks[name].zero, granularity)
        _, thr = _split_rows(rows, forced, _uniform_ks(name, rows, forced, ones, granularity))
        t = thr.to(m.weight.dtype)
        masks[name].zero |= kernel_mask(m.weight, share, t[0] if granularity == "layer" else t,
                                        masks[name].zero)


def _global_budgets(layers, groups_rows: dict, groups_forced: dict, uni: dict
                    ) -> dict[str, list[int]]:
    """The uniform allocation's total of one-bits spent across all groups to minimise the
    summed squared error (:func:`allocate`)."""
    curves, lo, hi, start, index = [], [], [], [], []
    for name, _ in layers:
        rows, forced = groups_rows[name], groups_forced[name]
        for r in range(rows.shape[0]):
            e = error_curve(rows[r], forced[r])
            n_free = e.shape[0] - 1
            curves.append(e)
            lo.append(min(1, n_free))
            hi.append(n_free)
            start.append(uni[name][r])
            index.append((name, r))
    ks = allocate(curves, sum(start), lo, hi, start=start)
    budgets = {name: [0] * groups_rows[name].shape[0] for name, _ in layers}
    for (name, r), k in zip(index, ks, strict=True):
        budgets[name][r] = k
    return budgets


def _convert_layer(m: nn.Module, rows: torch.Tensor, forced: torch.Tensor, ks: list[int],
                   lm: LayerMasks, float_w: torch.Tensor, granularity: str, prune: PruneConfig,
                   kernels: bool, patterns: bool) -> None:
    """One layer: split its groups at their budgets, give emptied kernels a one-bit back
    (``kernels``), write the latent weights, project them on learned patterns (``patterns``)
    and set the levels to the float weights' group means."""
    w = m.weight
    bits, thr = _split_rows(rows, forced, ks)
    if kernels:
        taps = w.shape[2] * w.shape[3]
        for r in range(rows.shape[0]):
            _fill_kernels(bits[r], rows[r], forced[r], taps)
    latent = rows.double() - thr.unsqueeze(1)
    latent = torch.where(bits, latent.clamp(min=0.0), latent.clamp(max=-_TINY))
    if patterns:
        lat4 = latent.reshape(w.shape)
        zero = lm.zero if bool(lm.zero.any()) else None
        cb = learn_patterns(lat4, prune.patterns, forced=zero)
        lm.codebook = cb
        latent = _rows(project_patterns(lat4, cb, zero), granularity)
        bits = to_bits(latent)
    alpha, beta = group_means(_rows(float_w, granularity), bits)
    w.copy_(latent.reshape(w.shape).to(w.dtype))
    _set_levels(m, alpha, beta, granularity)
    if not bool(lm.zero.any()):
        lm.zero = None


# --------------------------------------------------------------------------------------------
# measuring and keeping the result
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def quantization_errors(float_weights: dict[str, torch.Tensor], model: nn.Module) -> list[dict]:
    """Per sparse-binary layer: the squared error between its float weights (before conversion)
    and its quantised weights ``q``: ``sse``, ``mse`` and ``relative`` (``sse / ||w||^2``), with
    the ones fraction."""
    rows = []
    mods = dict(model.named_modules())
    for name, w in float_weights.items():
        m = mods[name]
        q = m.quantized_weight().detach()
        if q.shape != w.shape:  # physically shrunk: compare the surviving filters
            continue
        d = (w.double() - q.double())
        sse = float((d * d).sum())
        norm = float((w.double() ** 2).sum())
        rows.append({"name": name, "n": w.numel(), "ones_fraction": float(m.bits().float().mean()),
                     "sse": sse, "mse": sse / w.numel(), "relative": sse / norm if norm else 0.0})
    return rows


@torch.no_grad()
def enforce_budget_(model: nn.Module, budgets: dict[str, list[int]], granularity: str) -> int:
    """Turn off the weakest 1-bits of every group that holds more than its budget of ones.

    Layers with kernel patterns attached are trimmed by whole kernels (the weakest non-zero
    kernels go to the all-zero pattern), so every kernel stays in its codebook. Returns the
    number of bits turned off.
    """
    mods = dict(model.named_modules())
    off = 0
    for name, ks in budgets.items():
        m = mods[name]
        w = m.weight
        rows = _rows(w, granularity)  # a view: edits land in w
        masks = attached_masks(m)
        patterned = masks is not None and masks.codebook is not None
        for r, k in enumerate(ks):
            row = rows[r]
            pos = to_bits(row)
            extra = int(pos.sum()) - k
            if extra <= 0:
                continue
            if patterned:
                taps = w.shape[2] * w.shape[3]
                kern = row.view(-1, taps)
                score = torch.relu(kern).sum(1)
                nz = to_bits(kern).any(1)
                score = torch.where(nz, score, torch.full_like(score, math.inf))
                for i in torch.sort(score, stable=True).indices.tolist():
                    if extra <= 0 or not bool(nz[i]):
                        break
                    cnt = int(to_bits(kern[i]).sum())
                    kern[i] = -kern[i].abs().clamp(min=_TINY)
                    extra -= cnt
                    off += cnt
            else:
                idx = pos.nonzero().squeeze(1)
                weakest = idx[torch.sort(row[idx], stable=True).indices[:extra]]
                row[weakest] = -_TINY
                off += extra
    return off


@torch.no_grad()
def recalibrate_batchnorm_(model: nn.Module, batches) -> nn.Module:
    """Re-estimate every BatchNorm's running mean/variance on ``batches`` (an iterable of
    ``(x, y)`` or of ``x``), as a cumulative average, without gradients.

    The float model's statistics describe float activations; after conversion the binary layers
    produce differently scaled outputs, and refreshing the statistics is the cheap closed-form
    repair (no weight changes). Returns ``model`` (in the mode it came in).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches
    was = model.training
    model.train()
    seen = 0
    for b in batches:
        model(b[0] if isinstance(b, (tuple, list)) else b)
        seen += 1
    model.train(was)
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    if seen == 0:
        raise ConversionError("BatchNorm recalibration got no batches")
    return model
