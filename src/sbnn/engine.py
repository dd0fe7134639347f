"""Run a ``.sbnn`` model from sbnn: the ``sbnn_runtime`` engine, with sbnn's names.

    >>> model = sbnn.engine.load("model.sbnn")            # native engine, all cores
    >>> logits = model(x)                                  # x: float32 (N, C, H, W) -> (N, classes)
    >>> model.run(x, profile=True)                         # (logits, [(op, seconds), ...])

Everything here is the torch-free runtime (:mod:`sbnn_runtime`): ``backend="native"`` is the C++
engine, ``"reference"`` the numpy twin of every op, ``"auto"`` native with a fallback. Inputs
may be numpy arrays or CPU torch tensors (through DLPack); outputs are numpy.

Layer: deployment (imports ``sbnn_runtime`` only).
"""

from __future__ import annotations

import numpy as np

from sbnn_runtime.engine import Engine, load
from sbnn_runtime.kernels import dequantized_weight as _dequantized_weight
from sbnn_runtime.ops import Graph, reference_forward

__all__ = ["Engine", "Graph", "load", "reference_forward", "dequantized_weight"]


def dequantized_weight(params: dict) -> np.ndarray:
    """The float weight of an ``sbconv2d`` node: ``eta'_c * b + xi'_c`` (BatchNorm folded)."""
    return _dequantized_weight(params["bits"], params["eta"], params["xi"])

