"""sbnn: sparse binary neural networks in the {alpha, beta} binary domain.

Implements Schiavone, Galati, Zuluaga, "Binary domain generalization for sparsifying binary
neural networks", ECML-PKDD 2023 (arXiv:2306.13515).

The package is layered (docs/ARCHITECTURE.md); each layer imports only those below it:

* ``sbnn.method``: primitives, estimators, layers, the sparsity constraint;
* ``sbnn.models`` and ``sbnn.verbs`` (binarize, convert, prune, stats);
* ``sbnn.deploy``: the torch.fx exporter, ONNX, benchmarks, and ``sbnn.engine`` on top of the
  ``sbnn_runtime`` distribution;
* ``sbnn.pipeline``: config, data, run folders, train, evaluate, sweep, plot;
* ``sbnn.cli``: the ``sbnn`` command.

The names below are loaded on first use, so ``import sbnn.X`` imports only what X needs.
"""

from __future__ import annotations

import importlib
import os

# Busy-waiting OpenMP threads make torch 5-10x slower on a shared 2-core machine; this only
# takes effect when sbnn is imported before torch (the `sbnn` command always is).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    # primitives and modules
    "sign": "sbnn.method.primitives",
    "closed_form": "sbnn.method.primitives",
    "dequantize": "sbnn.method.primitives",
    "entropy": "sbnn.method.primitives",
    "pack_bits": "sbnn.method.primitives",
    "unpack_bits": "sbnn.method.primitives",
    "DOMAINS": "sbnn.method.layers",
    "SBLayer": "sbnn.method.layers",
    "SBConv2d": "sbnn.method.layers",
    "SBConv1d": "sbnn.method.layers",
    "SBLinear": "sbnn.method.layers",
    "RSign": "sbnn.method.layers",
    "RPReLU": "sbnn.method.layers",
    "LearnableBias": "sbnn.method.layers",
    "SparsityConstraint": "sbnn.method.constraint",
    "sb_layers": "sbnn.method.constraint",
    # model verbs
    "BinarizeConfig": "sbnn.verbs.binarize",
    "binarize_": "sbnn.verbs.binarize",
    "init_closed_form_": "sbnn.verbs.binarize",
    "ConversionError": "sbnn.verbs.convert",
    "PruneConfig": "sbnn.verbs.prune",
    "layer_stats": "sbnn.verbs.stats",
    "model_bits": "sbnn.verbs.stats",
    # deployment and pipeline
    "SBNNFormatError": "sbnn_runtime.ops",
    "load_model": "sbnn.pipeline.runs",
    "summary": "sbnn.deploy.summary",
}
# subpackages and modules reachable as attributes (sbnn.models, sbnn.engine, ...)
_MODULES = {
    "method": "sbnn.method",
    "verbs": "sbnn.verbs",
    "models": "sbnn.models",
    "deploy": "sbnn.deploy",
    "pipeline": "sbnn.pipeline",
    "engine": "sbnn.engine",
    "estimators": "sbnn.method.estimators",
    "export": "sbnn.deploy.export",
    "fileformat": "sbnn_runtime.fileformat",
}

__all__ = sorted(_LAZY) + sorted(_MODULES)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    else:
        raise AttributeError(f"module 'sbnn' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
