"""Pruning strategies that combine with the {alpha, beta} binary domain.

In the {alpha, beta} domain a pruned weight is a weight whose bit is fixed at 0 (it is worth alpha
and costs nothing in the sparse path ``(beta - alpha) * conv(x, b)``). So every strategy here is a
*mask of forced 0-bits* on the latent weights of the sparse-binary layers, plus, for filters, a
fixed BatchNorm scale of 0:

``magnitude``
    unstructured: the share ``magnitude`` of each layer's weights with the smallest ``|w|`` is
    set to 0 (before conversion) and its bits are fixed at 0.
``filters``
    per-filter by norm: the share ``filters`` of each layer's output filters with the smallest
    L2 norm is made *dead*: every bit 0 and the following BatchNorm's scale fixed at 0, so the
    channel is the constant BatchNorm shift (an all-zero filter alone is still
    ``alpha * window_sum(x)``, not a constant). :func:`shrink_` then removes dead filters
    physically where the consumer of the channel allows an exact fold (see there).
``kernels``
    kernel removal: in each sparse-binary conv with k x k > 1 kernels, the weakest kernels are
    forced all-zero until the share ``kernels`` of all-zero kernels is reached: exactly
    ``round(kernels * n_kernels)`` kernels are forced, and kernels that are all-zero already are
    the weakest (so the share is exactly the target unless more kernels were zero anyway).
    "Weakest" = the smallest sum of ``relu(w - t)``, the total margin of the kernel's 1-bits
    above the layer's split threshold ``t``; ties by the kernel's L2 norm.
``patterns``
    Sub-bit kernels (Y. Wang et al., "Sub-bit Neural Networks", ICCV 2021, arXiv:2110.09195):
    each k x k kernel's bits are restricted to a per-layer codebook of ``2**patterns`` patterns,
    learned by a weighted k-means in Hamming space (:func:`learn_patterns`) that always keeps the
    all-zero pattern. A kernel costs ``patterns`` bits (its index) instead of ``k*k``: k/9 bits
    per weight for 3x3 kernels. With ``patterns_trained`` the codebook is Sub-bit's *trained*
    form rather than fixed at the start: at every training forward each kernel takes its nearest
    codeword (the projection below) after each codeword made one weighted k-means step towards
    its members' latent weights (:func:`refine_patterns`; an unused codeword is re-seeded with the
    kernel farthest from its codeword), and the straight-through estimator of the layer carries
    the gradient to the latent weights, which keep their magnitudes, so a kernel whose latents
    the optimiser pushes across 0 can move to another codeword and drag its codeword along.

The masks are applied by :func:`attach_`: a forward pre-hook on each layer projects the latent
weights back onto the mask before every forward pass (forced bits negative, kernels onto their
nearest pattern, dead filters' BatchNorm scale to 0), and gradient hooks zero the gradient of
forced weights, so training and fine-tuning keep everything pruned. The masks are
non-persistent buffers: a model's ``state_dict`` keeps its keys, and the pruned state is in the
weights themselves (bits 0, scale 0); :func:`prune_state` / :func:`attach_` carry the masks
across a checkpoint for further training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from sbnn.method.constraint import sb_layers
from sbnn.method.layers import SBConv2d, SBLayer
from sbnn.method.primitives import entropy, kernel_stats, to_bits
from sbnn.verbs.prune_config import PruneConfig

__all__ = [
    "PruneConfig",
    "LayerMasks",
    "magnitude_mask",
    "filter_mask",
    "kernel_scores",
    "kernel_mask",
    "learn_patterns",
    "refine_patterns",
    "assign_patterns",
    "project_patterns",
    "following_batchnorm",
    "compute_masks",
    "prune_",
    "attach_",
    "detach_",
    "project_",
    "attached_masks",
    "prune_state",
    "prune_stats",
    "shrink_",
]

_TINY = 1e-6  # forced 0-bits sit at least this far below 0, so no rounding flips them


@dataclass
class LayerMasks:
    """The pruned state of one sparse-binary layer.

    Attributes:
        zero: bool, the weight's shape: bits forced to 0 (``None``: none forced).
        dead: bool ``(C_out,)``: dead filters (``None``: none).
        codebook: bool ``(P, k*k)``: allowed kernel patterns, row 0 all-zero (``None``: no
            pattern restriction).
        trained: the codebook is re-learned at every training forward (Sub-bit's trained
            form, :func:`refine_patterns`); False: fixed.
    """

    zero: torch.Tensor | None = None
    dead: torch.Tensor | None = None
    codebook: torch.Tensor | None = None
    trained: bool = False  # re-learn the codebook at every training forward (refine_patterns)

    def to_dict(self) -> dict:
        return {"zero": self.zero, "dead": self.dead, "codebook": self.codebook,
                "trained": self.trained}

    @classmethod
    def from_dict(cls, d: dict) -> LayerMasks:
        return cls(d.get("zero"), d.get("dead"), d.get("codebook"), bool(d.get("trained", False)))


# --------------------------------------------------------------------------------------------
# masks (pure functions)
# --------------------------------------------------------------------------------------------

def _count(share: float, n: int) -> int:
    return int(math.floor(share * n + 0.5))


def magnitude_mask(w: torch.Tensor, share: float) -> torch.Tensor:
    """Bool mask of ``w``'s shape: the ``round(share * n)`` entries of smallest ``|w|``.

    Ties are broken by position (stable sort), so the count is exact.
    """
    n = w.numel()
    k = _count(share, n)
    mask = torch.zeros(n, dtype=torch.bool, device=w.device)
    if k:
        order = torch.sort(w.detach().abs().reshape(-1), stable=True).indices
        mask[order[:k]] = True
    return mask.reshape(w.shape)


def filter_mask(w: torch.Tensor, share: float) -> torch.Tensor:
    """Bool ``(C_out,)``: the ``round(share * C_out)`` output filters of smallest L2 norm."""
    norms = w.detach().reshape(w.shape[0], -1).norm(dim=1)
    k = _count(share, w.shape[0])
    mask = torch.zeros(w.shape[0], dtype=torch.bool, device=w.device)
    if k:
        mask[torch.sort(norms, stable=True).indices[:k]] = True
    return mask


def kernel_scores(w: torch.Tensor, threshold: float | torch.Tensor = 0.0,
                  forced: torch.Tensor | None = None) -> torch.Tensor:
    """``(C_out, C_in)`` kernel strength: ``sum relu(w - threshold)`` + a tie-breaking L2 term.

    A kernel whose weights are all below the split threshold (an all-zero kernel) scores only the
    tie-breaker, which is smaller than any margin of a real 1-bit. Weights in ``forced`` (bits
    already fixed at 0) add no margin, so wholly forced kernels count among the weakest.
    """
    w = w.detach().double()
    t = torch.as_tensor(threshold, dtype=w.dtype, device=w.device)
    if t.dim() == 1:  # per output channel
        t = t.view(-1, 1, 1, 1)
    kern = w.reshape(w.shape[0], w.shape[1], -1)
    margin = torch.relu(w - t)
    if forced is not None:
        margin = margin.masked_fill(forced, 0.0)
    margin = margin.reshape(kern.shape).sum(-1)
    norm = kern.norm(dim=-1)
    return margin + 1e-9 * norm / (1.0 + float(norm.max()))


def kernel_mask(w: torch.Tensor, share: float, threshold: float | torch.Tensor = 0.0,
                forced: torch.Tensor | None = None) -> torch.Tensor:
    """Bool of ``w``'s shape: every weight of the ``round(share * C_out * C_in)`` weakest kernels
    (:func:`kernel_scores`) of a conv weight ``(C_out, C_in, kh, kw)``."""
    if w.dim() != 4:
        raise ValueError(f"kernel removal needs a conv weight (C_out, C_in, kh, kw), got {w.shape}")
    scores = kernel_scores(w, threshold, forced).reshape(-1)
    k = _count(share, scores.numel())
    chosen = torch.zeros(scores.numel(), dtype=torch.bool, device=w.device)
    if k:
        chosen[torch.sort(scores, stable=True).indices[:k]] = True
    return chosen.view(w.shape[0], w.shape[1], 1, 1).expand(w.shape).clone()


def _kernels(w: torch.Tensor) -> torch.Tensor:
    # (C_out, C_in, kh, kw) -> (C_out * C_in, kh * kw)
    return w.reshape(w.shape[0] * w.shape[1], -1)


def _pattern_costs(v: torch.Tensor, codebook: torch.Tensor, forced: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """``(N, P)``: sum of ``|v_j|`` over taps where the kernel's bit differs from the pattern's
    (the smallest latent change that moves kernel i onto pattern p); ``inf`` where the pattern
    sets a forced-0 bit."""
    a = v.abs().double()
    b = to_bits(v).double()
    cb = codebook.double()
    cost = (a * b) @ (1 - cb).T + (a * (1 - b)) @ cb.T
    if forced is not None:
        clash = (forced.double() @ cb.T) > 0
        cost = cost.masked_fill(clash, math.inf)
    return cost


def assign_patterns(v: torch.Tensor, codebook: torch.Tensor, forced: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Index ``(N,)`` of the nearest pattern for each kernel row of ``v`` ``(N, taps)``; ties go
    to the lower index (row 0, the all-zero pattern, first)."""
    return torch.argmin(_pattern_costs(v, codebook, forced), dim=1)


def learn_patterns(w: torch.Tensor, k: int, iters: int = 10,
                   forced: torch.Tensor | None = None) -> torch.Tensor:
    """A codebook ``(P, kh*kw)`` of at most ``2**k`` bit patterns for a conv's latent weights.

    Start from the all-zero pattern plus the most frequent kernel patterns, then run a weighted
    k-means in Hamming space: assign each kernel to the pattern that is cheapest to reach
    (:func:`assign_patterns`), and set each pattern's bit j to ``sum_i w_ij >= 0`` over its kernels
    (the minimiser of the summed cost). Row 0 stays all-zero: pruned and empty kernels need it.
    """
    if w.dim() != 4:
        raise ValueError(f"kernel patterns need a conv weight (C_out, C_in, kh, kw), got {w.shape}")
    v = _kernels(w.detach())
    f = None if forced is None else _kernels(forced)
    taps = v.shape[1]
    size = min(2 ** k, 2 ** taps)
    bits = to_bits(v)
    weights = 2 ** torch.arange(taps, device=v.device)
    codes = (bits.long() * weights).sum(1)
    uniq, counts = torch.unique(codes, return_counts=True)
    order = torch.sort(counts, descending=True, stable=True).indices
    top = [int(c) for c in uniq[order] if int(c) != 0][: size - 1]
    init = [0] + top
    cb = ((torch.tensor(init, device=v.device).unsqueeze(1) // weights) % 2).bool()
    for _ in range(iters):
        idx = assign_patterns(v, cb, f)
        sums = torch.zeros(cb.shape[0], taps, dtype=torch.float64, device=v.device)
        sums.index_add_(0, idx, v.double())
        used = torch.bincount(idx, minlength=cb.shape[0]) > 0
        new = torch.where(used.unsqueeze(1), to_bits(sums), cb)
        new[0] = False
        if torch.equal(new, cb):
            break
        cb = new
    return cb


@torch.no_grad()
def refine_patterns(w: torch.Tensor, codebook: torch.Tensor,
                    forced: torch.Tensor | None = None) -> torch.Tensor:
    """One weighted k-means step of a codebook ``(P, kh*kw)`` on a conv's current latent
    weights: each kernel is assigned its nearest codeword (:func:`assign_patterns`), each used
    codeword's bit j becomes ``sum_i w_ij >= 0`` over its members, and each unused codeword is
    re-seeded with the bit pattern of the kernel farthest from its own codeword (if that
    pattern is not in the codebook yet). Row 0 stays all-zero; the size never changes. The
    training step of Sub-bit's trained codebook (``PruneConfig.patterns_trained``)."""
    v = _kernels(w.detach())
    f = None if forced is None else _kernels(forced)
    cb = codebook.to(v.device)
    cost = _pattern_costs(v, cb, f)
    best, idx = cost.min(dim=1)
    sums = torch.zeros(cb.shape[0], v.shape[1], dtype=torch.float64, device=v.device)
    sums.index_add_(0, idx, v.double())
    used = torch.bincount(idx, minlength=cb.shape[0]) > 0
    new = torch.where(used.unsqueeze(1), to_bits(sums), cb)
    new[0] = False
    free = [int(i) for i in torch.nonzero(~used).flatten() if int(i) != 0]
    if free:
        bits = to_bits(v)
        if f is not None:
            bits = bits & ~f
        order = torch.argsort(best.masked_fill(~torch.isfinite(best), -1.0), descending=True)
        for i in order.tolist():
            if not free or float(best[i]) <= 0:
                break
            cand = bits[i]
            if bool((new == cand).all(1).any()):
                continue
            new[free.pop(0)] = cand
    return new


@torch.no_grad()
def project_patterns(w: torch.Tensor, codebook: torch.Tensor,
                     forced: torch.Tensor | None = None) -> torch.Tensor:
    """Latent weights of ``w``'s shape whose kernel bits are each a codebook pattern: the nearest
    pattern's signs with the latent magnitudes kept (``|w|``, at least a tiny margin below 0 for
    0-bits)."""
    v = _kernels(w)
    f = None if forced is None else _kernels(forced)
    idx = assign_patterns(v, codebook, f)
    target = codebook[idx]
    out = torch.where(target, v.abs(), -v.abs().clamp(min=_TINY))
    return out.reshape(w.shape).to(w.dtype)


# --------------------------------------------------------------------------------------------
# the graph around a layer
# --------------------------------------------------------------------------------------------

class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, SBLayer) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> fx.GraphModule | None:
    try:
        graph = _Tracer().trace(model)
    except Exception:  # data-dependent control flow: no graph, no structural pruning
        return None
    return fx.GraphModule(model, graph)


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def following_batchnorm(model: nn.Module) -> dict[str, str]:
    """``{layer name: BatchNorm name}`` for sparse-binary layers whose output feeds only a
    BatchNorm of matching width (traced with ``torch.fx``)."""
    gm = _trace(model)
    if gm is None:
        return {}
    mods = dict(model.named_modules())
    out = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), SBLayer):
            continue
        user = _only_user(node)
        if user is not None and user.op == "call_module":
            bn = mods.get(user.target)
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.affine and (
                bn.num_features == mods[node.target].weight.shape[0]
            ):
                out[node.target] = user.target
    return out


# --------------------------------------------------------------------------------------------
# masks for a whole model, and keeping them during training
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def compute_masks(model: nn.Module, cfg: PruneConfig,
                  thresholds: dict[str, torch.Tensor] | None = None) -> dict[str, LayerMasks]:
    """Masks for every sparse-binary layer of ``model`` from its current latent weights.

    ``thresholds``: per layer, the split threshold (scalar or per output channel) the kernel
    scores are measured against (default 0, the sign convention of latent weights). Kernel
    removal and patterns apply to convs with k x k > 1 kernels only. Raises ``ValueError`` when
    filters are to be made dead but a layer has no BatchNorm after it.
    """
    thresholds = thresholds or {}
    bns = following_batchnorm(model) if cfg.filters else {}
    masks: dict[str, LayerMasks] = {}
    for name, m in sb_layers(model):
        w = m.weight
        spatial = w.dim() == 4 and w.shape[2] * w.shape[3] > 1
        lm = LayerMasks()
        zero = torch.zeros_like(w, dtype=torch.bool)
        if cfg.magnitude:
            zero |= magnitude_mask(w, cfg.magnitude)
        if cfg.filters:
            if name not in bns:
                raise ValueError(
                    f"filter pruning needs a BatchNorm right after layer {name!r} (its scale is "
                    "fixed at 0 so the dead channel is a constant); none was found"
                )
            lm.dead = filter_mask(w, cfg.filters)
            zero[lm.dead] = True
        if cfg.kernels and spatial:
            zero |= kernel_mask(w, cfg.kernels, thresholds.get(name, 0.0), zero)
        if bool(zero.any()):
            lm.zero = zero
        if cfg.patterns and spatial:
            lm.codebook = learn_patterns(w, cfg.patterns, forced=lm.zero)
        masks[name] = lm
    return masks


def prune_(model: nn.Module, cfg: PruneConfig) -> dict[str, LayerMasks]:
    """Masks from ``model``'s current latent weights (:func:`compute_masks`), attached so that
    training keeps them (:func:`attach_`); the hook ``train`` calls after its closed-form init.
    Returns the masks (store them with :func:`prune_state` in a checkpoint)."""
    masks = compute_masks(model, cfg)
    for lm in masks.values():
        lm.trained = bool(cfg.patterns_trained and lm.codebook is not None)
    attach_(model, masks)
    return masks


def _project_layer(m: SBLayer, lm: LayerMasks, bn: nn.Module | None) -> None:
    w = m.weight
    if lm.codebook is not None:
        w.copy_(project_patterns(w, lm.codebook.to(w.device),
                                 None if lm.zero is None else lm.zero.to(w.device)))
    if lm.zero is not None:
        z = lm.zero.to(w.device)
        w.copy_(torch.where(z, w.clamp(max=-_TINY), w))
    if lm.dead is not None and bn is not None:
        bn.weight[lm.dead.to(bn.weight.device)] = 0.0


def _pre_hook(mod: nn.Module, args) -> None:
    # runs before every forward, in training too: the optimiser step may have moved a forced bit
    lm = mod._sbnn_prune["masks"]
    with torch.no_grad():
        if lm.trained and lm.codebook is not None and mod.training:
            w = mod.weight
            lm.codebook = refine_patterns(w, lm.codebook.to(w.device),
                                          None if lm.zero is None else lm.zero.to(w.device))
        _project_layer(mod, lm, mod._sbnn_prune["bn"])


@torch.no_grad()
def project_(model: nn.Module) -> nn.Module:
    """Project every attached layer onto its masks now (also done before every forward)."""
    for _, m in sb_layers(model):
        state = getattr(m, "_sbnn_prune", None)
        if state is not None:
            _project_layer(m, state["masks"], state["bn"])
    return model


def attach_(model: nn.Module, masks: dict[str, LayerMasks]) -> nn.Module:
    """Keep ``masks`` on ``model`` through training: project now, before every forward, and zero
    the gradients of forced weights (and of dead filters' BatchNorm scale). Replaces masks
    attached earlier. Returns ``model``."""
    detach_(model)
    mods = dict(model.named_modules())
    unknown = sorted(set(masks) - {n for n, _ in sb_layers(model)})
    if unknown:
        raise ValueError(f"masks name layers that are not sparse-binary layers: {unknown}")
    bns = following_batchnorm(model) if any(lm.dead is not None for lm in masks.values()) else {}
    for name, lm in masks.items():
        m = mods[name]
        if lm.zero is None and lm.dead is None and lm.codebook is None:
            continue
        bn = mods[bns[name]] if lm.dead is not None and name in bns else None
        if lm.dead is not None and bn is None:
            raise ValueError(f"layer {name!r} has dead filters but no BatchNorm after it")
        handles = [m.register_forward_pre_hook(_pre_hook)]
        if lm.zero is not None:
            keep = (~lm.zero).to(m.weight.dtype)
            handles.append(m.weight.register_hook(lambda g, keep=keep: g * keep.to(g.device)))
        if bn is not None:
            keep_bn = (~lm.dead).to(bn.weight.dtype)
            handles.append(bn.weight.register_hook(lambda g, k=keep_bn: g * k.to(g.device)))
        m._sbnn_prune = {"masks": lm, "bn": bn, "handles": handles}
        with torch.no_grad():
            _project_layer(m, lm, bn)
    return model


def detach_(model: nn.Module) -> nn.Module:
    """Remove masks attached by :func:`attach_` (the weights stay as they are)."""
    for _, m in sb_layers(model):
        state = m.__dict__.pop("_sbnn_prune", None)
        if state is not None:
            for h in state["handles"]:
                h.remove()
    return model


def attached_masks(layer: nn.Module) -> LayerMasks | None:
    """The masks :func:`attach_` keeps on one sparse-binary ``layer``, or None (not pruned)."""
    state = layer.__dict__.get("_sbnn_prune")
    return None if state is None else state["masks"]


def prune_state(model: nn.Module) -> dict[str, dict]:
    """The attached masks as plain tensors (``{layer: {"zero", "dead", "codebook"}}``), for a
    checkpoint; :func:`attach_` with ``LayerMasks.from_dict`` restores them."""
    out = {}
    for name, m in sb_layers(model):
        lm = attached_masks(m)
        if lm is not None:
            out[name] = {k: (v.cpu() if isinstance(v, torch.Tensor) else v)
                         for k, v in lm.to_dict().items()}
    return out


# --------------------------------------------------------------------------------------------
# honest statistics
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def prune_stats(model: nn.Module, example: torch.Tensor | None = None) -> dict:
    """What pruning removed, per sparse-binary layer and in total, from the weights themselves.

    Per layer: ``n`` binary weights, ``ones``, ``zero_kernels`` / ``kernels``, ``dead_filters``
    (no 1-bit) / ``filters``, ``distinct_patterns`` (distinct kernel bit patterns), the storage
    in bits of ``dense`` (1 bit per weight), ``kernel`` (presence bit + taps of non-zero kernels),
    ``pattern_fixed`` (a ceil(log2 P)-bit index per kernel + the P x taps codebook, for layers
    with attached patterns) and ``pattern_entropy`` (the indices entropy-coded + codebook), and,
    with ``example`` (one input batch), the per-sample binary operation counts:
    ``ops_dense`` (every binary MAC), ``ops_sparse`` (only 1-bits, plus the window sum shared by
    all filters) and ``ops_kernel_skip`` (1-bits only in kernels that are not all-zero, same as
    sparse; listed apart so the reader sees kernel skipping costs nothing extra).
    """
    out_hw: dict[str, int] = {}
    handles = []
    if example is not None:
        for name, m in sb_layers(model):
            def hook(mod, args, out, name=name):
                # out: (N, C_out, H', W') -> H' * W' output positions per filter
                out_hw[name] = int(out[0, 0].numel()) if out.dim() > 2 else 1
            handles.append(m.register_forward_hook(hook))
        was = model.training
        model.eval()
        model(example[:1])
        model.train(was)
        for h in handles:
            h.remove()
    rows = []
    tot = {"n": 0, "ones": 0, "bits_dense": 0, "bits_kernel": 0, "bits_pattern": 0.0,
           "ops_dense": 0, "ops_sparse": 0}
    for name, m in sb_layers(model):
        bits = m.bits()
        n, ones = bits.numel(), int(bits.sum())
        ks = kernel_stats(bits)
        row = {"name": name, "n": n, "ones": ones, "ones_fraction": ones / n,
               "filters": ks["filters"], "dead_filters": ks["zero_filters"]}
        bits_kernel = ks["storage_bits"]
        if ks["spatial"]:
            kern = _kernels(bits)
            taps = ks["taps"]
            row["kernels"] = ks["kernels"]
            row["zero_kernels"] = ks["zero_kernels"]
            codes = (kern.long() * (2 ** torch.arange(taps, device=kern.device))).sum(1)
            uniq, counts = torch.unique(codes, return_counts=True)
            row["distinct_patterns"] = int(uniq.numel())
            lm = attached_masks(m)
            if lm is not None and lm.codebook is not None:
                size = lm.codebook.shape[0]
                probs = counts.double() / counts.sum()
                h = float(-(probs * probs.log2()).sum())
                row["patterns"] = size
                row["bits_pattern_fixed"] = kern.shape[0] * math.ceil(math.log2(size)) + size * taps
                row["bits_pattern_entropy"] = kern.shape[0] * h + size * taps
        row["bits_dense"] = n
        row["bits_kernel"] = bits_kernel
        row["bits_entropy"] = n * entropy(ones / n)
        best = min(bits_kernel, row.get("bits_pattern_entropy", math.inf), n)
        tot["bits_pattern"] += best
        if name in out_hw:
            hw = out_hw[name]
            per_out = n // bits.shape[0]  # C_in * kh * kw
            row["ops_dense"] = n * hw
            row["ops_sparse"] = ones * hw + per_out * hw  # + the shared window sum
            tot["ops_dense"] += row["ops_dense"]
            tot["ops_sparse"] += row["ops_sparse"]
        tot["n"] += n
        tot["ones"] += ones
        tot["bits_dense"] += n
        tot["bits_kernel"] += bits_kernel
        rows.append(row)
    tot["bits_best"] = tot.pop("bits_pattern")
    if tot["n"]:
        tot["ones_fraction"] = tot["ones"] / tot["n"]
    return {"layers": rows, "total": tot}


# --------------------------------------------------------------------------------------------
# physical removal of dead filters
# --------------------------------------------------------------------------------------------

_PASS = (nn.Identity, nn.MaxPool2d, nn.Hardtanh, nn.ReLU, nn.ReLU6, nn.Dropout, nn.Dropout2d,
         nn.LeakyReLU, nn.PReLU)


def _passes_constant(mod: nn.Module) -> bool:
    """Does ``mod`` map a spatially constant channel to a constant channel, per channel?"""
    if isinstance(mod, nn.PReLU):
        return mod.num_parameters == 1
    if isinstance(mod, _PASS):
        return True
    if isinstance(mod, nn.AvgPool2d):
        return mod.padding in (0, (0, 0))
    return False


def _shrink_param(mod: nn.Module, name: str, keep: torch.Tensor, dim: int = 0) -> None:
    p = getattr(mod, name, None)
    if p is None:
        return
    new = p.detach().index_select(dim, keep).clone()
    if isinstance(p, nn.Parameter):
        setattr(mod, name, nn.Parameter(new, requires_grad=p.requires_grad))
    else:
        setattr(mod, name, new)


def _shrink_bn(bn: nn.Module, keep: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        _shrink_param(bn, name, keep)
    bn.num_features = int(keep.numel())


@torch.no_grad()
def shrink_(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Physically remove dead filters (all bits 0 and BatchNorm scale 0), in place, where exact.

    A dead filter's channel is the constant BatchNorm shift. It is removed, with its BatchNorm
    entries, when the channel reaches exactly one consumer through per-channel operations that
    keep a constant constant (MaxPool, Identity, Hardtanh, ReLU, unpadded AvgPool, ...), and the
    consumer can absorb the constant exactly:

    * ``Flatten`` -> (``BatchNorm1d``) -> ``Linear``: the constant features fold into the
      linear bias;
    * a conv (float, or sparse-binary in the ``"learned"`` domain, whose levels do not depend on
      its other weights) with no padding, followed by a ``BatchNorm2d``: the constant
      contribution folds into that BatchNorm's running mean (exact in eval mode).

    A zero-padded conv consumer sees the constant only inside the border, so the channel is kept
    there (still free at inference: all its bits are 0). ``example``: an input batch, used to read
    the constants. Returns ``{layer: filters removed}``. Call :func:`detach_` first if masks are
    attached (they refer to the old shapes); the model must be in eval mode for the folds.
    """
    gm = _trace(model)
    if gm is None:
        return {}
    mods = dict(model.named_modules())
    # read every module input once
    inputs: dict[str, torch.Tensor] = {}
    leaves = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    hooks = [mods[n].register_forward_pre_hook(
        lambda mod, args, n=n: inputs.__setitem__(n, args[0].detach())) for n in leaves]
    was = model.training
    model.eval()
    model(example)
    for h in hooks:
        h.remove()
    removed: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), SBConv2d):
            continue
        conv = mods[node.target]
        user = _only_user(node)
        if user is None or user.op != "call_module":
            continue
        bn = mods.get(user.target)
        if not isinstance(bn, nn.BatchNorm2d) or bn.weight is None:
            continue
        bits = conv.bits()
        dead = (~bits.reshape(bits.shape[0], -1).any(1)) & (bn.weight.detach() == 0)
        if not bool(dead.any()) or bool(dead.all()):
            continue
        # walk per-channel, constant-preserving modules to the consumer
        cur = user
        while True:
            nxt = _only_user(cur)
            if nxt is None:
                break
            if nxt.op == "call_module" and _passes_constant(mods[nxt.target]):
                cur = nxt
                continue
            break
        if nxt is None:
            continue
        keep = (~dead).nonzero().squeeze(1)
        ok = _fold_consumer(nxt, mods, inputs, dead, keep)
        if not ok:
            continue
        _shrink_param(conv, "weight", keep)
        _shrink_param(conv, "bias", keep)
        for name in ("tau", "phi"):
            p = getattr(conv, name, None)
            if p is not None and p.dim() > 0:
                _shrink_param(conv, name, keep)
        conv.out_channels = int(keep.numel())
        _shrink_bn(bn, keep)
        removed[node.target] = int(dead.sum())
    model.train(was)
    return removed


def _fold_consumer(node: fx.Node, mods: dict, inputs: dict, dead: torch.Tensor,
                   keep: torch.Tensor) -> bool:
    """Fold the constant dead channels into ``node``'s consumer and drop its inputs; False when
    the architecture does not allow an exact fold (then nothing is changed)."""
    c = int(dead.numel())
    if node.op == "call_module" and isinstance(mods[node.target], (nn.Conv2d,)):
        cons = mods[node.target]
        if cons.groups != 1 or cons.padding not in (0, (0, 0)) or cons.padding_mode != "zeros":
            return False
        if isinstance(cons, SBLayer) and cons.domain != "learned":
            return False
        after = _only_user(node)
        bn2 = mods.get(after.target) if after is not None and after.op == "call_module" else None
        if not isinstance(bn2, nn.BatchNorm2d) or bn2.running_mean is None:
            return False
        x = inputs[node.target]  # (N, C, H, W), the dead channels constant
        vals = x[0, dead, 0, 0]
        if isinstance(cons, SBLayer):
            vals = cons.binarize_input(vals.view(1, -1, 1, 1)).view(-1)
            q = cons.quantized_weight().detach()
        else:
            q = cons.weight.detach()
        contrib = (q[:, dead].sum((2, 3)) * vals).sum(1)  # (C_out,)
        bn2.running_mean -= contrib
        _shrink_param(cons, "weight", keep, dim=1)
        cons.in_channels = int(keep.numel())
        return True
    # Flatten (module or call) -> optional BatchNorm1d -> Linear
    is_flatten = (node.op == "call_module" and isinstance(mods[node.target], nn.Flatten)) or (
        node.op == "call_function" and node.target is torch.flatten)
    if not is_flatten:
        return False
    nxt = _only_user(node)
    bn1 = None
    if nxt is not None and nxt.op == "call_module" and isinstance(mods[nxt.target],
                                                                  nn.BatchNorm1d):
        bn1 = mods[nxt.target]
        nxt = _only_user(nxt)
    if nxt is None or nxt.op != "call_module" or type(mods[nxt.target]) is not nn.Linear:
        return False
    lin = mods[nxt.target]
    if lin.in_features % c:
        return False
    hw = lin.in_features // c
    feat_dead = dead.repeat_interleave(hw)
    feat_keep = (~feat_dead).nonzero().squeeze(1)
    x = inputs[nxt.target]  # (N, F): after the BatchNorm1d, the dead features are constant
    vals = x[0, feat_dead]
    if lin.bias is None:
        lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype,
                                            device=lin.weight.device))
    lin.bias += lin.weight.detach()[:, feat_dead] @ vals
    _shrink_param(lin, "weight", feat_keep, dim=1)
    lin.in_features = int(feat_keep.numel())
    if bn1 is not None:
        _shrink_bn(bn1, feat_keep)
    return True
