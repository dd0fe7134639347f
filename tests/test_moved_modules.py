"""Modules that moved keep their old import path for one release, with a DeprecationWarning
(CHANGELOG.md lists them)."""

from __future__ import annotations

import importlib
import sys

import pytest


def test_onnx_export_is_a_warning_shim_over_the_runtime_lowering():
    sys.modules.pop("sbnn.deploy.onnx_export", None)
    with pytest.warns(DeprecationWarning, match="sbnn_runtime.lower_onnx"):
        old = importlib.import_module("sbnn.deploy.onnx_export")
    from sbnn_runtime import lower_onnx

    assert old.to_onnx is lower_onnx.to_onnx and old.save_onnx is lower_onnx.save_onnx
    assert old.OPSET == lower_onnx.OPSET
