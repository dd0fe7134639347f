"""benchmarks/profile_layers.py: the split of a binary conv and the argument check (no timing
is asserted: the figures only have to be well-formed)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

from sbnn_runtime.native import core  # noqa: E402

pytestmark = pytest.mark.skipif(core is None, reason="no native core")


def test_split_layer_parts_are_well_formed():
    import profile_layers

    from sbnn_runtime.ops import Node

    rng = np.random.default_rng(0)
    co, ci = 8, 16
    nd = Node("sbconv2d", [0], {"stride": 1, "padding": 1, "binary_input": False},
              {"bits": (rng.random((co, ci, 3, 3)) < 0.05).astype(np.uint8),
               "eta": np.ones(co, np.float32), "xi": np.zeros(co, np.float32),
               "bias": np.zeros(co, np.float32)}, "c")
    for kind in ("sparse", "dense"):
        r = profile_layers.split_layer(nd, 8, 8, kind, rounds=3)
        assert set(r) == {"alone_s", "kernel_s", "epilogue_s", "layout_s"}
        assert all(v >= 0.0 for v in r.values())
        assert r["alone_s"] > 0.0


def test_bad_model_spec_is_one_line_and_exit_2(capsys):
    import profile_layers

    assert profile_layers.main(["--models", "nosuchnet:0.05"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nosuchnet" in err
