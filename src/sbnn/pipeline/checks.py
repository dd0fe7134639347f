"""Warnings that matter, checked at the end of ``sbnn train`` and ``sbnn convert``.

A run can end without an error and still be wrong: far from its target ones fraction, with a
layer whose levels swapped sides, with a layer or filters that collapsed, or at chance. Each
check here returns warnings as plain dicts (``kind``, ``message``, ``hint`` and the figures
behind them), stored in ``report.json`` under ``warnings`` and printed after the report; each
says what to try.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["ONES_HIGH", "ONES_LOW", "ones_warnings", "level_warnings", "collapse_warnings",
           "dead_filters", "chance_warnings", "run_warnings", "format_warnings"]

ONES_HIGH, ONES_LOW = 1.25, 0.8  # achieved / target outside [0.8, 1.25]: warn
CHANCE_MARGIN = 1.5  # test accuracy below 1.5 / num_classes counts as chance


def _w(kind: str, message: str, hint: str, **data: Any) -> dict[str, Any]:
    return {"kind": kind, "message": message, "hint": hint, **data}


def ones_warnings(report: dict, target: float | None) -> list[dict]:
    """The achieved ones fraction above ``ONES_HIGH`` or below ``ONES_LOW`` times ``target``,
    naming the (up to three) layers whose own fraction misses the target most."""
    got = report.get("ones_fraction")
    if target is None or got is None or target >= 0.5:  # 0.5: the dense BNN, no target
        return []
    ratio = got / target
    if ONES_LOW <= ratio <= ONES_HIGH:
        return []
    layers = [r for r in report.get("layers", []) if r.get("n")]
    worst = sorted(layers, key=lambda r: -abs(math.log(max(r["ones_fraction"], 1e-9) / target)))
    worst = [{"layer": r["name"], "ones_fraction": r["ones_fraction"]} for r in worst[:3]]
    named = ", ".join(f"{w['layer']} {w['ones_fraction']:.4f}" for w in worst)
    if ratio > 1:
        hint = ("raise sparsity.gamma (the penalty's share of the loss) or train more epochs; "
                "sparsity.init=closed_form starts at the target")
    else:
        hint = ("lower sparsity.gamma: the penalty pushed past the target (a layer at 0 ones "
                "has collapsed)")
    return [_w("ones_off_target",
               f"ones fraction {got:.4f} is {ratio:.2f}x the target {target:g} (outside "
               f"{ONES_LOW}x-{ONES_HIGH}x); layers furthest off: {named}", hint,
               target=target, ones_fraction=got, ratio=ratio, layers=worst)]


def _levels(v) -> list[float]:
    return [float(x) for x in v] if isinstance(v, list) else [float(v)]


def level_warnings(report: dict) -> list[dict]:
    """A layer whose ``alpha > beta`` (in any channel): bit 1 then stands for the smaller value,
    the sign convention flipped."""
    out = []
    for r in report.get("layers", []):
        a, b = _levels(r.get("alpha", [])), _levels(r.get("beta", []))
        flipped = sum(x > y for x, y in zip(a, b, strict=False))
        if flipped:
            out.append(_w(
                "alpha_above_beta",
                f"layer {r['name']}: alpha > beta in {flipped} of {len(a)} level pair(s) "
                f"(alpha {min(a):+.3g}..{max(a):+.3g}, beta {min(b):+.3g}..{max(b):+.3g}): the "
                "sign convention flipped, bit 1 now means the smaller value",
                "lower optim.lr, or start the levels from the data (sparsity.levels=fit, "
                "sparsity.init=closed_form); model.domain=closed_form keeps alpha < beta",
                layer=r["name"], flipped=flipped, pairs=len(a)))
    return out


def collapse_warnings(report: dict, dead: dict[str, int] | None = None,
                      pruned_filters: float = 0.0) -> list[dict]:
    """A layer with no 1-bit at all or only all-zero filters, and a layer with filters whose
    output is the same on all test data (``dead``: layer -> dead filters, from
    :func:`dead_filters`; filters pruned on purpose, ``pruned_filters`` of each layer, are
    expected)."""
    out = []
    for r in report.get("layers", []):
        name, filters = r["name"], (r.get("shape") or [0])[0]
        if r.get("n") and (r.get("ones") == 0 or r.get("zero_filters") == 1.0):
            out.append(_w("collapsed_layer",
                          f"layer {name} collapsed: all its kernels are zero (0 ones of "
                          f"{r['n']})",
                          "lower sparsity.gamma or raise the layer's share of ones; "
                          "sparsity.init=closed_form starts every layer at the target",
                          layer=name))
            continue
        n_dead = (dead or {}).get(name, 0)
        if n_dead > round(pruned_filters * filters):
            out.append(_w("dead_filters",
                          f"layer {name}: {n_dead} of {filters} filters give the same output on "
                          "all test data (dead)",
                          "lower sparsity.gamma or optim.lr; if they were pruned on purpose, "
                          "prune.shrink removes them",
                          layer=name, dead=n_dead, filters=filters))
    return out


def dead_filters(model, loader, max_batches: int | None = None) -> dict[str, int]:
    """Per sparse-binary layer of ``model``: the output channels whose value is one constant
    over all of ``loader`` (every image and position; or its first ``max_batches`` batches)."""
    import torch

    from sbnn.method.constraint import sb_layers

    named = dict(sb_layers(model))
    lo: dict[str, torch.Tensor] = {}
    hi: dict[str, torch.Tensor] = {}

    def hook(name):
        def f(_m, _i, y):
            y = y.detach().transpose(0, 1).reshape(y.shape[1], -1)  # (C, N*H*W)
            a, b = y.min(1).values, y.max(1).values
            lo[name] = a if name not in lo else torch.minimum(lo[name], a)
            hi[name] = b if name not in hi else torch.maximum(hi[name], b)
        return f

    handles = [m.register_forward_hook(hook(n)) for n, m in named.items()]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for k, (x, _) in enumerate(loader):
                if max_batches is not None and k >= max_batches:
                    break
                model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return {n: int((hi[n] == lo[n]).sum()) for n in lo}


def chance_warnings(report: dict, num_classes: int | None) -> list[dict]:
    """Test accuracy below ``CHANCE_MARGIN / num_classes``: the network guesses."""
    acc = report.get("test_accuracy")
    if acc is None or not num_classes or acc >= CHANCE_MARGIN / num_classes:
        return []
    return [_w("at_chance",
               f"test accuracy {100 * acc:.1f} % is at chance (1/{num_classes} = "
               f"{100 / num_classes:.1f} %)",
               "check the data (data.root) and labels; lower optim.lr or sparsity.gamma; train "
               "more epochs; a conversion needs --bn-batches and --finetune-epochs",
               test_accuracy=acc, num_classes=num_classes)]


def run_warnings(model, report: dict, target: float | None, num_classes: int | None,
                 loader=None, pruned_filters: float = 0.0) -> list[dict]:
    """Every check on a finished run (``loader``: test data for the dead-filter check)."""
    dead = dead_filters(model, loader) if loader is not None and report.get("layers") else None
    return (ones_warnings(report, target) + level_warnings(report)
            + collapse_warnings(report, dead, pruned_filters)
            + chance_warnings(report, num_classes))


def format_warnings(warnings: list[dict]) -> str:
    """The warnings as text, each with what to try; empty when there are none."""
    lines = []
    for w in warnings:
        lines.append(f"warning: {w['message']}")
        lines.append(f"  try: {w['hint']}")
    return "".join(ln + "\n" for ln in lines)
