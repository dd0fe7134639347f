"""Deprecated: moved to :mod:`sbnn_runtime.lower_onnx` (the ONNX lowering is a runtime backend).

This shim re-exports it and warns (``DeprecationWarning``) for one release; see CHANGELOG.md.
"""

from __future__ import annotations

import warnings

from sbnn_runtime.lower_onnx import OPSET, save_onnx, to_onnx

__all__ = ["to_onnx", "save_onnx", "OPSET"]

warnings.warn("sbnn.deploy.onnx_export moved to sbnn_runtime.lower_onnx; this alias goes in the "
              "next release", DeprecationWarning, stacklevel=2)
