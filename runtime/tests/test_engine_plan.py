"""The engine's plan: per-layer kernel choice and fusion, against the numpy reference twin.

Residual blocks (binary conv -> add -> hardtanh, stride 1 and 2 with a float 1x1 shortcut) on
maps from 1x1 to 32x32, odd sizes, batch 1 and 3, every ISA: the fused plan with its chosen
kernels, the unfused plan, sparse-only and dense-only all match ``reference_forward``.
"""

from __future__ import annotations

import numpy as np
import pytest

from sbnn_runtime import Engine, Graph, Node, native, reference_forward
from sbnn_runtime.native import core, native_error

needs_core = pytest.mark.skipif(core is None or not hasattr(core.Engine, "layer_info"),
                                reason=f"no native core with layer_info: {native_error}")

IMPLS = ["ref", "scalar", "avx2", "avx512"]


def impl_params():
    avail = native.available_impls()
    return [pytest.param(i, marks=pytest.mark.skipif(i not in avail, reason=f"{i} not on this CPU"))
            for i in IMPLS]


def _sb(rng, cin, cout, stride, src, name, p=0.1):
    bits = (rng.random((cout, cin, 3, 3)) < p).astype(np.uint8)
    f = lambda: rng.standard_normal(cout).astype(np.float32)  # noqa: E731
    return Node("sbconv2d", [src], {"stride": stride, "padding": 1, "binary_input": True},
                {"bits": bits, "eta": np.abs(f()) * 0.1 + 0.01, "xi": f() * 0.01,
                 "bias": f() * 0.1, "thr": (rng.standard_normal(cin) * 0.2).astype(np.float32)},
                name)


def block_net(c: int, h: int, w: int, rng) -> Graph:
    """stem -> hardtanh -> [sbconv -> add -> hardtanh] -> [sbconv s2 + 1x1 s2 shortcut -> add
    -> hardtanh] -> sbconv -> hardtanh -> [sbconv -> add -> rprelu] -> global pool -> linear."""
    N = [Node("input", [], {"shape": [3, h, w]})]

    def add(nd):
        N.append(nd)
        return len(N) - 1

    t = add(Node("conv2d", [0], {"stride": 1, "padding": 1},
                 {"weight": rng.standard_normal((c, 3, 3, 3)).astype(np.float32) * 0.3,
                  "bias": rng.standard_normal(c).astype(np.float32) * 0.1}, "stem"))
    t = add(Node("hardtanh", [t], {"lo": -1.0, "hi": 1.0}))
    s = add(_sb(rng, c, c, 1, t, "b1"))
    t = add(Node("add", [s, t]))
    t = add(Node("hardtanh", [t], {"lo": -1.0, "hi": 1.0}))
    s = add(_sb(rng, c, 2 * c, 2, t, "b2"))
    sc = add(Node("conv2d", [t], {"stride": 2, "padding": 0},
                  {"weight": rng.standard_normal((2 * c, c, 1, 1)).astype(np.float32) * 0.3},
                  "short"))
    t = add(Node("add", [sc, s]))
    t = add(Node("hardtanh", [t], {"lo": -1.0, "hi": 1.0}))
    s = add(_sb(rng, 2 * c, 2 * c, 1, t, "b3", p=0.05))
    t = add(Node("hardtanh", [s], {"lo": -0.5, "hi": 0.75}))
    s = add(_sb(rng, 2 * c, 2 * c, 1, t, "b4"))  # a ReActNet block: add, then RPReLU
    t = add(Node("add", [s, t]))
    f = lambda: rng.standard_normal(2 * c).astype(np.float32) * 0.2  # noqa: E731
    t = add(Node("rprelu", [t], {}, {"shift_in": f(), "slope": f() + 0.25, "shift_out": f()}))
    t = add(Node("global_avgpool", [t]))
    t = add(Node("flatten", [t]))
    t = add(Node("linear", [t], {}, {"weight": rng.standard_normal((4, 2 * c))
                                     .astype(np.float32)}))
    return Graph(N, t)


# (channels, H, W): 1x1 .. 32x32, odd sizes, channel counts off the word width
MAPS = [(3, 1, 1), (5, 2, 2), (8, 3, 5), (16, 4, 4), (7, 5, 7), (12, 8, 8), (9, 13, 11),
        (33, 14, 14), (4, 32, 32), (65, 4, 4)]


@needs_core
@pytest.mark.parametrize("impl", impl_params())
@pytest.mark.parametrize("shape", MAPS, ids=lambda s: "x".join(map(str, s)))
def test_fused_and_chosen_plans_match_reference(impl, shape, monkeypatch):
    monkeypatch.setenv("SBNN_ISA", "scalar" if impl == "ref" else impl)  # float GEMM ISA
    c, h, w = shape
    rng = np.random.default_rng(c * 1000 + h * 10 + w)
    g = block_net(c, h, w, rng)
    for n in (1, 3):
        x = rng.standard_normal((n, 3, h, w)).astype(np.float32)
        want = reference_forward(g, x)
        for kw in ({}, {"fuse": False}, {"choose": False}, {"sparse": False},
                   {"sparse": False, "fuse": False}):
            eng = Engine(g, 2 if n == 3 else 1, backend="native", impl=impl, **kw)
            got = eng.run(x)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=str(kw))
            np.testing.assert_array_equal(eng.run(x), got)  # the cached choice, same result


@needs_core
@pytest.mark.parametrize("impl", [i for i in impl_params() if i.values[0] != "ref"])
def test_fused_epilogue_post_identical_to_two_passes(impl, monkeypatch):
    # The sparse kernel adds the residual and clamps inside its epilogue's pass (issue 20);
    # SBNN_FUSED_POST=0 runs the epilogue and then the post-op pass. Same floats, bit for bit,
    # on maps whose rows take the 8-wide, 4-wide and scalar tails, and narrow maps (4 <= Wo < 8)
    # packed into one flat run, batch 1 and 3.
    monkeypatch.setenv("SBNN_ISA", impl)
    for c, h, w in [(5, 2, 2), (7, 5, 7), (12, 8, 8), (9, 13, 11), (4, 32, 32), (65, 4, 4),
                    (20, 6, 6), (9, 7, 5)]:
        rng = np.random.default_rng(c * 100 + h + w)
        g = block_net(c, h, w, rng)
        eng = Engine(g, 1, backend="native", impl=impl, choose=False)
        for n in (1, 3):
            x = rng.standard_normal((n, 3, h, w)).astype(np.float32)
            monkeypatch.setenv("SBNN_FUSED_POST", "0")
            two = eng.run(x)
            monkeypatch.setenv("SBNN_FUSED_POST", "1")
            np.testing.assert_array_equal(eng.run(x), two)
            np.testing.assert_allclose(two, reference_forward(g, x), rtol=1e-4, atol=1e-4)


@needs_core
def test_layer_info_reports_fusion_and_choice():
    rng = np.random.default_rng(0)
    g = block_net(16, 8, 8, rng)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    eng = Engine(g, 1, backend="native")
    before = eng.layer_info()
    assert [d["kernel"] for d in before if d["name"].startswith("sbconv2d")] == ["auto"] * 4
    eng.run(x)
    info = eng.layer_info()
    names = [d["name"] for d in info]
    assert names.count("sbconv2d+add+hardtanh") == 2 and "sbconv2d+hardtanh" in names
    assert "sbconv2d+add+rprelu" in names and "rprelu" not in names
    assert "add" not in names and "hardtanh" not in names
    assert names[0] == "conv2d+hardtanh"  # the float stem clamps in its GEMM tasks
    assert len(info) == eng._native.num_ops == len(eng.run(x, profile=True)[1])
    for d in info:
        if d["name"].startswith("sbconv2d"):
            assert d["kernel"] in ("sparse", "dense", "tiny") and d["batch"] == 2
            assert d["sparse_s"] > 0 and d["dense_s"] > 0
            # the fastest candidate (the tiny-map kernel too, where the output map is tiny)
            t = {k: d[f"{k}_s"] for k in ("sparse", "dense", "tiny") if d[f"{k}_s"] >= 0}
            assert d["kernel"] == min(t, key=t.get)
        if d["name"].startswith("conv2d"):
            assert d["kernel"].startswith("gemm:")
    dense = Engine(g, 1, backend="native", sparse=False)
    dense.run(x)
    assert {d["kernel"] for d in dense.layer_info() if "conv2d" in d["name"]
            and not d["name"].startswith("conv2d")} == {"dense"}
    only_sparse = Engine(g, 1, backend="native", choose=False)
    only_sparse.run(x)
    assert {d["kernel"] for d in only_sparse.layer_info()
            if d["name"].startswith("sbconv2d")} == {"sparse"}
    unfused = Engine(g, 1, backend="native", fuse=False)
    assert len(unfused.layer_info()) == len(g.nodes) - 1


@needs_core
def test_no_fusion_when_the_conv_output_is_read_twice():
    # the sbconv output feeds the add and the graph output: it must stay a tensor of its own
    rng = np.random.default_rng(1)
    N = [Node("input", [], {"shape": [4, 5, 5]}), _sb(rng, 4, 4, 1, 0, "a")]
    N.append(Node("add", [1, 0]))
    N.append(Node("hardtanh", [1], {"lo": -1.0, "hi": 1.0}))
    N.append(Node("add", [2, 3]))
    g = Graph(N, 4)
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    eng = Engine(g, 1, backend="native")
    np.testing.assert_allclose(eng.run(x), reference_forward(g, x), rtol=1e-5, atol=1e-5)
    assert [d["name"] for d in eng.layer_info()] == ["sbconv2d", "add", "hardtanh", "add"]
