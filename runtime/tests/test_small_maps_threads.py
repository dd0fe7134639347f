"""Issue 20 (ReActNet-18, float ops, threads): the engine's max pool, float linear, tiny-map
binary conv in the engine's choice (the kernel itself: ``test_tiny_maps.py``) and batch split over
threads, each against its reference.

* max pool: any window (non-square, asymmetric pads, ceil_mode), maps narrower and wider than
  a vector, NaN and inf anywhere, on every ISA the engine runs (``SBNN_ISA``, ``ref`` included);
* linear through the float GEMM with the batch as rows: within 1e-5 relative of the reference;
* the engine's batch split: 2 and 3 threads give the 1-thread outputs bit for bit.
numpy only.
"""

from __future__ import annotations

import numpy as np
import pytest

from sbnn_runtime import Engine, native
from sbnn_runtime.native import core, native_error
from sbnn_runtime.ops import Graph, Node, reference_forward

pytestmark = pytest.mark.skipif(core is None, reason=f"no native core: {native_error}")

IMPLS = native.available_impls() if core is not None else []
FAST = [i for i in IMPLS if i != "ref"]


def _inp(c, h, w):
    return Node("input", [], {"shape": [c, h, w]})


# -- max pool ------------------------------------------------------------------------------------

POOLS = [  # (C, H, W), k, stride, pad, ceil_mode
    ((64, 32, 32), 3, 2, 1, False),   # ReActNet-18 after its stem
    ((3, 17, 19), 3, 2, 1, True),
    ((2, 16, 24), 2, 2, 0, False),
    ((2, 15, 9), 2, 2, 0, True),
    ((3, 12, 11), 3, 1, 1, False),
    ((2, 9, 20), [2, 3], [1, 2], [0, 1], True),
    ((2, 10, 13), [3, 1], [2, 1], [1, 0, 0, 0], False),
    ((2, 20, 21), 5, 3, 2, True),
    ((2, 8, 8), 4, 3, 2, False),
    ((3, 5, 5), 3, 3, 0, False),      # narrower than a vector: the plain loop
    ((2, 1, 30), 1, 1, 0, False),
]


@pytest.mark.parametrize("impl", IMPLS)
def test_maxpool_matches_reference_with_nan_and_inf(impl, monkeypatch):
    monkeypatch.setenv("SBNN_ISA", impl)
    rng = np.random.default_rng(3)
    for (c, h, w), k, s, p, ceil in POOLS:
        x = rng.standard_normal((2, c, h, w)).astype(np.float32)
        x[0, 0, h // 2, w - 1] = np.nan        # a NaN in one plane, at its last column
        x[1, c - 1, 0, 0] = np.nan             # and at a first cell
        x[1, 0, h - 1, w // 2] = np.inf
        x[0, c - 1, 0, w // 3] = -np.inf
        x[0, c - 1, h - 1, :] = np.inf         # inf and -inf in one plane: its sum is NaN
        x[0, c - 1, 0, :] = -np.inf
        g = Graph([_inp(c, h, w), Node("maxpool", [0], {"k": k, "stride": s, "pad": p,
                                                        "ceil_mode": ceil})], 1)
        got = Engine(g, 1, backend="native").run(x)
        want = reference_forward(g, x)
        np.testing.assert_array_equal(got, want, err_msg=f"{(c, h, w)} k{k} s{s} p{p} {ceil}")
    assert np.isnan(got).any()


def test_maxpool_threads_and_batches_agree():
    rng = np.random.default_rng(4)
    g = Graph([_inp(5, 16, 16), Node("maxpool", [0], {"k": 3, "stride": 2, "pad": 1})], 1)
    x = rng.standard_normal((7, 5, 16, 16)).astype(np.float32)
    want = reference_forward(g, x)
    for t in (1, 2, 3):
        np.testing.assert_array_equal(Engine(g, t, backend="native").run(x), want)


# -- linear --------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
def test_linear_through_the_gemm(impl, monkeypatch):
    monkeypatch.setenv("SBNN_ISA", impl)
    rng = np.random.default_rng(5)
    for n, i, o, bias in [(1, 640, 128, True), (32, 640, 128, False), (7, 13, 10, True),
                          (37, 5, 33, True), (2, 1, 1, False), (13, 100, 17, True)]:
        w = rng.standard_normal((o, i)).astype(np.float32)
        params = {"weight": w}
        if bias:
            params["bias"] = rng.standard_normal(o).astype(np.float32)
        g = Graph([_inp(i, 1, 1), Node("flatten", [0]), Node("linear", [1], {}, params)], 2)
        x = rng.standard_normal((n, i, 1, 1)).astype(np.float32)
        want = reference_forward(g, x)
        for t in (1, 3):
            eng = Engine(g, t, backend="native")
            got = eng.run(x)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        if impl != "ref":
            assert eng.layer_info()[-1]["kernel"].startswith("gemm:")


# -- the engine: batch split over threads, the tiny-map kernel in the choice ---------------------

def _net(rng, c=12, h=10):
    """stem, max pool, binary convs with a residual + RPReLU down to 2x2 and 1x1, linear."""
    def sb(i, ci, co, s, hw):
        bits = (rng.random((co, ci, 3, 3)) < 0.2).astype(np.uint8)
        p = {"bits": bits, **{k: rng.standard_normal(co).astype(np.float32)
                              for k in ("eta", "xi", "bias")}}
        return Node("sbconv2d", [i], {"stride": s, "padding": 1, "binary_input": True}, p)
    nodes = [_inp(3, 2 * h, 2 * h),
             Node("conv2d", [0], {"stride": 1, "padding": 1},
                  {"weight": rng.standard_normal((c, 3, 3, 3)).astype(np.float32)}),
             Node("maxpool", [1], {"k": 3, "stride": 2, "pad": 1}),   # 2 -> h x h
             sb(2, c, c, 2, h)]                                        # 3: h/2
    nodes.append(sb(3, c, c, 1, h // 2))                                # 4
    nodes.append(Node("add", [4, 3]))                                   # 5
    nodes.append(Node("rprelu", [5], {}, {k: rng.standard_normal(c).astype(np.float32)
                                          for k in ("shift_in", "slope", "shift_out")}))
    nodes.append(sb(6, c, 2 * c, 2, h // 2))  # 7: 3x3, where the tiny-map kernel competes
    nodes.append(Node("global_avgpool", [7]))
    nodes.append(Node("flatten", [8]))
    nodes.append(Node("linear", [9], {}, {"weight": rng.standard_normal((5, 2 * c))
                                          .astype(np.float32)}))
    return Graph(nodes, len(nodes) - 1)


def test_batch_split_over_threads_is_bit_exact():
    rng = np.random.default_rng(11)
    g = _net(rng)
    for n in (1, 2, 3, 5, 8):
        x = rng.standard_normal((n, 3, 20, 20)).astype(np.float32)
        one = Engine(g, 1, backend="native").run(x)
        np.testing.assert_allclose(one, reference_forward(g, x), rtol=1e-4, atol=1e-4)
        for t in (2, 3):
            eng = Engine(g, t, backend="native")
            want = eng.run(x)
            np.testing.assert_array_equal(want, one)
            np.testing.assert_array_equal(eng.run(x), one)  # the cached choice
            y, _ = eng.run(x, profile=True)  # the per-op path (threads inside each op)
            np.testing.assert_array_equal(y, one)


def test_choice_reports_the_tiny_kernel_where_built(monkeypatch):
    monkeypatch.delenv("SBNN_TINY_MAPS", raising=False)
    rng = np.random.default_rng(12)
    g = _net(rng)
    x = rng.standard_normal((2, 3, 20, 20)).astype(np.float32)
    eng = Engine(g, 1, backend="native")
    y = eng.run(x)
    info = [d for d in eng.layer_info() if d["kernel"] in ("sparse", "dense", "tiny")]
    assert len(info) == 3
    for d in info:
        assert d["kernel"] == min((("sparse", d["sparse_s"]), ("dense", d["dense_s"]),
                                   ("tiny", d["tiny_s"])),
                                  key=lambda kv: kv[1] if kv[1] >= 0 else np.inf)[0]
    assert info[-1]["tiny_s"] > 0        # the 3x3 output timed the tiny-map kernel too
    assert info[0]["tiny_s"] == -1.0     # a 5x5 output: not built
    monkeypatch.setenv("SBNN_TINY_MAPS", "0")
    eng = Engine(g, 1, backend="native")  # left out on request
    np.testing.assert_array_equal(eng.run(x), y)
    assert all(d["tiny_s"] == -1.0 for d in eng.layer_info())
