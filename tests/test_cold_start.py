"""benchmarks/cold_start.py: warm and cold calls of a whole network are well-formed, and bad
arguments are one line and exit 2 (no timing is asserted)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

from sbnn_runtime import fileformat  # noqa: E402
from sbnn_runtime.native import core  # noqa: E402
from sbnn_runtime.ops import Graph, Node  # noqa: E402

pytestmark = pytest.mark.skipif(core is None, reason="no native core")


def _tiny(path):
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    g = Graph([
        Node("input", [], {"shape": [3, 8, 8]}, name="input"),
        Node("conv2d", [0], {"stride": 1, "padding": 1}, {"weight": f(8, 3, 3, 3), "bias": f(8)},
             "stem"),
        Node("sbconv2d", [1], {"stride": 1, "padding": 1, "binary_input": False},
             {"bits": (rng.random((8, 8, 3, 3)) < 0.1).astype(np.uint8), "eta": f(8),
              "xi": f(8), "bias": f(8)}, "b1"),
        Node("global_avgpool", [2], name="gap"),
        Node("flatten", [3], name="flat"),
    ], 4)
    fileformat.save(g, path)


def test_warm_cold_and_per_op_figures_are_well_formed(tmp_path, capsys):
    import cold_start

    path, out = tmp_path / "t.sbnn", tmp_path / "r.json"
    _tiny(path)
    assert cold_start.main(["--files", str(path), "--repeat", "2", "--evict-mb", "1",
                            "--layers", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    (m,) = r["models"]
    assert set(m["modes"]) == {"warm", "cold"}
    for mode in m["modes"].values():
        assert mode["p10_ms"] > 0 and mode["median_ms"] > 0 and mode["faults_per_call"] >= 0
        ops = mode["ops_us"]
        assert "outside the ops" in ops and len(ops) == 5  # four ops and the rest of the call
    assert "cold - warm" in capsys.readouterr().out


@pytest.mark.parametrize("argv, what", [
    (["--models", "nosuchnet:0.05"], "nosuchnet"),
    (["--models", "resnet18:2"], "resnet18:2"),
    (["--models", "resnet18:x"], "resnet18:x"),
    (["--repeat", "0"], "--repeat"),
])
def test_bad_arguments_are_one_line_and_exit_2(argv, what, capsys):
    import cold_start

    assert cold_start.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and what in err


def test_a_bad_file_is_one_line_and_exit_2(tmp_path, capsys):
    import cold_start

    bad = tmp_path / "bad.sbnn"
    bad.write_bytes(b"not a model")
    assert cold_start.main(["--files", str(bad), "--repeat", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.sbnn" in err
