"""Model-level verbs: swap a model's layers for sparse-binary twins, and start them at a target."""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from sbnn.method import estimators
from sbnn.method.constraint import sb_layers
from sbnn.method.exportable import module_problem
from sbnn.method.layers import DOMAINS, SBConv1d, SBConv2d, SBLayer, SBLinear
from sbnn.method.primitives import closed_form

__all__ = ["BinarizeConfig", "binarize_", "init_closed_form_", "init_authors_", "LEVEL_STARTS",
           "ReLUBeforeBinaryWarning", "relus_feeding", "MIN_GROUP_CHANNELS", "SWAPPED"]

# the torch layers binarize_ swaps for sparse-binary twins
SWAPPED = (nn.Conv2d, nn.Conv1d, nn.Linear)
# A grouped conv with fewer input channels per group stays float (depthwise: 1). Its binary
# twin would sum a handful of +-1 taps per output (9 for a 3x3 depthwise): too coarse to keep
# accuracy, and too little work for the binary kernels to save anything (MobileNets spend ~3 %
# of their MACs there). binarize_ says which it kept.
MIN_GROUP_CHANNELS = 8

# how a closed-form start sets tau/phi: "fit" = least squares under the domain's tie, "unit" =
# the authors' tau = 1, phi = 0 (01: phi = tau = 1)
LEVEL_STARTS = ("fit", "unit")


@dataclass
class BinarizeConfig:
    """How :func:`binarize_` swaps layers.

    Attributes:
        domain: one of ``"learned"``, ``"closed_form"``, ``"pm1"``, ``"01"``.
        weight_estimator: estimator name for the weights' sign
            (see ``sbnn.method.estimators.names()``).
        act: estimator name for the input activations, or ``None`` for real activations.
        keep_first: keep the first conv (``nn.Conv2d`` or ``nn.Conv1d``) in full precision (the
            paper's layout). Depthwise and grouped convs with fewer than
            :data:`MIN_GROUP_CHANNELS` input channels per group always stay float.
        keep_last: keep the last ``nn.Linear`` (the classifier) in full precision.
        linear: also swap ``nn.Linear`` layers other than the kept classifier.
    """

    domain: str = "learned"
    weight_estimator: str = "ste"
    act: str | None = "approx_sign"
    keep_first: bool = True
    keep_last: bool = True
    linear: bool = True

    def __post_init__(self):
        if self.domain not in DOMAINS:
            raise ValueError(f"unknown domain {self.domain!r}; valid domains: {', '.join(DOMAINS)}")
        for field, value in (("weight_estimator", self.weight_estimator), ("act", self.act)):
            if value is not None and value not in estimators.names():
                raise ValueError(
                    f"unknown {field} {value!r}; valid names: {', '.join(estimators.names())}"
                )

    def to_dict(self) -> dict:
        return asdict(self)


def _swap(module: nn.Module, config: BinarizeConfig) -> nn.Module:
    kw = dict(domain=config.domain, weight_estimator=config.weight_estimator, act=config.act)
    dev, dt = module.weight.device, module.weight.dtype
    if isinstance(module, (nn.Conv2d, nn.Conv1d)):
        cls = SBConv2d if isinstance(module, nn.Conv2d) else SBConv1d
        new = cls(
            module.in_channels, module.out_channels, module.kernel_size, module.stride,
            module.padding, module.dilation, module.groups, module.bias is not None,
            module.padding_mode, device=dev, dtype=dt, **kw,
        )
    else:
        new = SBLinear(
            module.in_features, module.out_features, module.bias is not None,
            device=dev, dtype=dt, **kw,
        )
    with torch.no_grad():
        new.weight.copy_(module.weight)
        if module.bias is not None:
            new.bias.copy_(module.bias)
    new.train(module.training)
    return new


class ReLUBeforeBinaryWarning(UserWarning):
    """A ReLU feeds a binary layer whose inputs are binarised by sign: every input is +1."""


# what a ReLU's output goes through and stays >= 0 (so sign() still gives +1 everywhere)
_KEEP_NONNEG_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d,
                        nn.AdaptiveAvgPool2d, nn.Dropout, nn.Dropout2d, nn.Identity, nn.Flatten,
                        nn.ReLU, nn.ReLU6)
_KEEP_NONNEG_FUNCS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
                      F.dropout, torch.flatten, F.relu, torch.relu, F.relu6, operator.getitem}
_KEEP_NONNEG_METHODS = {"view", "reshape", "flatten", "contiguous", "relu", "relu_", "clone"}
_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_RELU_FUNCS = {F.relu, torch.relu, F.relu6, torch.relu_}
_RELU_METHODS = {"relu", "relu_"}


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, SBLayer) or super().is_leaf_module(m, qualname)


def _is_relu(node: fx.Node, mods: dict) -> bool:
    if node.op == "call_module":
        return isinstance(mods.get(node.target), _RELU_MODULES)
    if node.op == "call_function":
        return node.target in _RELU_FUNCS
    return node.op == "call_method" and node.target in _RELU_METHODS


def _keeps_nonneg(node: fx.Node, mods: dict) -> bool:
    if node.op == "call_module":
        return isinstance(mods.get(node.target), _KEEP_NONNEG_MODULES)
    if node.op == "call_function":
        return node.target in _KEEP_NONNEG_FUNCS
    return node.op == "call_method" and node.target in _KEEP_NONNEG_METHODS


def _relus_by_graph(model: nn.Module, targets: set[str]) -> list[tuple[str, str]]:
    graph = _LeafTracer().trace(model)
    mods = dict(model.named_modules())
    found = []
    for node in graph.nodes:
        if not _is_relu(node, mods):
            continue
        relu = node.target if node.op == "call_module" else node.name
        todo, seen = list(node.users), set()
        while todo:
            u = todo.pop()
            if u in seen:
                continue
            seen.add(u)
            if u.op == "call_module" and u.target in targets:
                found.append((relu, u.target))
            elif _keeps_nonneg(u, mods):
                todo.extend(u.users)
    return found


def _relus_by_order(model: nn.Module, targets: set[str]) -> list[tuple[str, str]]:
    """Without a graph: a ReLU module followed, in registration order, by a target layer."""
    found, pending = [], None
    for name, m in model.named_modules():
        if list(m.children()):
            continue
        if isinstance(m, _RELU_MODULES):
            pending = name
        elif name in targets:
            if pending is not None:
                found.append((pending, name))
            pending = None
        elif not isinstance(m, _KEEP_NONNEG_MODULES):
            pending = None
    return found


def relus_feeding(model: nn.Module, targets: set[str]) -> tuple[list[tuple[str, str]], str]:
    """``([(relu, layer), ...], how)``: ReLUs (modules, ``F.relu``, ``.relu()``) whose output
    reaches one of the ``targets`` layers through ops that keep it >= 0 (pooling, dropout,
    flatten). ``how`` is ``"graph"`` (torch.fx) or ``"module order"`` when fx cannot trace."""
    try:
        return _relus_by_graph(model, targets), "graph"
    except Exception:  # noqa: BLE001 - fx cannot trace data-dependent control flow
        return _relus_by_order(model, targets), "module order"


def _warn_relus(model: nn.Module, targets: set[str]) -> None:
    pairs, how = relus_feeding(model, targets)
    if not pairs:
        return
    shown = ", ".join(f"{r} -> {c}" for r, c in pairs[:8]) + (" ..." if len(pairs) > 8 else "")
    warnings.warn(
        f"binarize_: {len(pairs)} ReLU(s) feed binary layers whose inputs are binarised by sign "
        f"({shown}; found by {how}). A ReLU's output is >= 0 and sign(0) = +1, so every input "
        "bit of those layers is +1 and the model cannot learn. Replace the ReLU by nn.Hardtanh, "
        "put a learnable shift (sbnn.RSign) before the layer, or keep that layer in float "
        "(filter_fn, or BinarizeConfig(act=None) for float inputs).",
        ReLUBeforeBinaryWarning, stacklevel=3)


class UnexportableLayerWarning(UserWarning):
    """``binarize_`` skipped a layer, or left one that ``sbnn export`` cannot take."""


def _warn_unexportable(model: nn.Module) -> None:
    """One warning naming every weight layer ``binarize_`` passes over (it swaps only
    ``nn.Conv2d`` and ``nn.Linear``) and every layer export would refuse."""
    found = []
    for name, m in model.named_modules():
        why = module_problem(m, name)
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear)) and not isinstance(
                m, SBLayer) and type(m) not in SWAPPED:
            why = (f"{name!r} ({type(m).__name__}) skipped: binarize_ swaps only nn.Conv2d, "
                   f"nn.Conv1d and nn.Linear" + (f"; {why}" if why else ""))
        if why:
            found.append(why)
    if found:
        warnings.warn(f"binarize_: {len(found)} layer(s) skipped or not exportable: "
                      + "; ".join(found), UnexportableLayerWarning, stacklevel=3)


def binarize_(
    model: nn.Module,
    config: BinarizeConfig | None = None,
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
) -> nn.Module:
    """Swap ``nn.Conv2d`` / ``nn.Conv1d`` / ``nn.Linear`` layers of ``model`` for sparse-binary
    twins, in place.

    Weights and biases are copied. Depthwise convs, and grouped convs with fewer than
    :data:`MIN_GROUP_CHANNELS` input channels per group, stay float (a warning names them).
    The first conv and the last linear (the classifier) stay full precision unless
    ``config.keep_first`` / ``config.keep_last`` say otherwise. ``filter_fn(name, module)`` can
    veto further layers (return False to keep one). Returns ``model``.
    """
    config = config or BinarizeConfig()
    candidates = [
        (name, m)
        for name, m in model.named_modules()
        if type(m) in SWAPPED and not isinstance(m, SBLayer)
    ]
    convs = [n for n, m in candidates if isinstance(m, (nn.Conv2d, nn.Conv1d))]
    linears = [n for n, m in candidates if isinstance(m, nn.Linear)]
    skip = set()
    if config.keep_first and convs:
        skip.add(convs[0])
    if config.keep_last and linears:
        skip.add(linears[-1])
    if not config.linear:
        skip.update(linears)
    thin = [n for n, m in candidates if isinstance(m, (nn.Conv2d, nn.Conv1d)) and m.groups > 1
            and m.in_channels // m.groups < MIN_GROUP_CHANNELS and n not in skip]
    if thin:
        skip.update(thin)
        warnings.warn(f"binarize_: kept {len(thin)} depthwise/grouped conv(s) in float (fewer "
                      f"than {MIN_GROUP_CHANNELS} input channels per group): "
                      + ", ".join(repr(n) for n in thin), UserWarning, stacklevel=2)
    swap = [(name, m) for name, m in candidates
            if name not in skip and (filter_fn is None or filter_fn(name, m))]
    if config.act is not None and swap:
        _warn_relus(model, {name for name, _ in swap})
    for name, m in swap:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _swap(m, config))
    _warn_unexportable(model)
    return model


def _unit_levels_(m: SBLayer) -> None:
    if hasattr(m, "tau"):
        m.tau.fill_(1.0)
    if m.domain == "learned":
        m.phi.fill_(0.0)


@torch.no_grad()
def init_authors_(model: nn.Module, scale: float = 1e-3, generator=None) -> nn.Module:
    """The authors' CIFAR-100 start: latent weights ``rand * scale`` (uniform in [0, scale), all
    positive, so the ones fraction starts at 1.0 and the constraint brings it down), tau = 1,
    phi = 0."""
    layers = sb_layers(model)
    if not layers:
        raise ValueError("model has no sparse-binary layers; call sbnn.binarize_ first")
    for _, m in layers:
        w = m.weight
        w.copy_(torch.rand(w.shape, generator=generator, dtype=w.dtype).to(w.device) * scale)
        _unit_levels_(m)
    return model


@torch.no_grad()
def init_closed_form_(model: nn.Module, ones: float, levels: str = "fit") -> nn.Module:
    """Start every sparse-binary layer at ones fraction ``ones``, in closed form.

    For each layer, the closed-form split of its latent weights at ``ones`` (the
    ``k = floor(ones * n + 0.5)`` largest weights) becomes the sign pattern: the latent weights are
    shifted by a threshold between the k-th and (k+1)-th largest value, so exactly those k are
    ``>= 0``. ``levels="fit"`` sets tau (and phi) to the least-squares levels of the original
    weights on that split under the domain's tie (learned: ``tau = (beta - alpha) / 2``,
    ``phi = (beta + alpha) / 2`` with the group means; pm1 and 01: see
    :meth:`SBLayer.fit_levels_`); ``levels="unit"`` keeps the authors' tau = 1, phi = 0.
    """
    if levels not in LEVEL_STARTS:
        raise ValueError(f"unknown levels start {levels!r}; valid: {', '.join(LEVEL_STARTS)}")
    if not 0.0 < float(ones) < 1.0:
        raise ValueError(f"ones must be a fraction in (0, 1), got {ones}")
    layers = sb_layers(model)
    if not layers:
        raise ValueError("model has no sparse-binary layers; call sbnn.binarize_ first")
    for name, m in layers:
        w = m.weight
        n = w.numel()
        k = int(math.floor(float(ones) * n + 0.5))
        if k == 0 or k == n:
            raise ValueError(
                f"layer {name!r} has {n} weights: ones={ones} rounds to {k} one-bits; "
                "choose a fraction that leaves at least one 1-bit and one 0-bit"
            )
        alpha, beta, bits = closed_form(w, ones=ones)
        vals = torch.sort(w.reshape(-1), descending=True).values
        thr = (vals[k - 1] + vals[k]) / 2
        shifted = w - thr
        # ties at the threshold: force the closed form's (position-ordered) bits exactly
        eps = torch.finfo(w.dtype).tiny
        shifted = torch.where(bits, shifted.clamp(min=0), shifted.clamp(max=-eps))
        if levels == "unit":
            _unit_levels_(m)
        elif m.domain == "learned":
            m.tau.fill_(float((beta - alpha) / 2))
            m.phi.fill_(float((beta + alpha) / 2))
        else:
            m.fit_levels_(w.clone(), bits)
        w.copy_(shifted)
    return model
