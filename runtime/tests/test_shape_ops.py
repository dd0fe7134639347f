"""Issue 19's reshapes, channel shuffle, pools (non-square, asymmetric pads, ceil_mode),
upsampling (nearest, bilinear with and without align_corners) and the binary linear layer
(a binary 1x1 conv on a (F, 1, 1) map), each against its numpy reference on many shapes: on
the native engine at every ISA this CPU has (scalar forced too), through onnxruntime, and the
C99 kernels (sbnn_pool2d, sbnn_channel_shuffle, sbnn_upsample) through ctypes. The reference
itself is held to hand-computed PyTorch values in test_reference_semantics_are_torchs (and to
torch itself in tests/test_shape_ops_export.py)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from sbnn_runtime import Engine, Graph, Node, native, reference_forward
from sbnn_runtime.lower_c import kernel_files
from sbnn_runtime.native import core, native_error
from sbnn_runtime.ops import OPS, SBNNFormatError, infer_shapes

needs_core = pytest.mark.skipif(core is None or not hasattr(core.Engine, "upsample"),
                                reason=f"no native core with upsample: {native_error}")
TOL = 1e-5  # of the largest |output|

# (C, H, W) and the pooling windows: k, stride, pad, ceil_mode (square ints are the old form)
SHAPES = [(1, 1, 1), (3, 5, 7), (2, 4, 4), (4, 9, 2), (1, 7, 11)]
POOLS = [(2, 2, 0, False), (3, 2, 1, True), ([3, 1], [2, 1], [1, 0], False),
         ([2, 3], [1, 2], [1, 1, 0, 1], True), (3, 3, 0, True), ([1, 3], 2, [0, 1], True),
         (2, 1, [0, 0, 1, 1], False), (3, 1, 1, False),
         ([2, 3], [1, 3], 0, True)]  # ceil_mode: a window wider than a 2-wide input


def _f(rng, *s):
    return rng.standard_normal(s).astype(np.float32)


def _fits(shape, pool) -> bool:
    try:
        infer_shapes(Graph([Node("input", [], {"shape": list(shape)}),
                            Node("maxpool", [0], {"k": pool[0], "stride": pool[1],
                                                  "pad": pool[2], "ceil_mode": pool[3]})], 1))
        return True
    except SBNNFormatError:
        return False


def _graph(shape, rng, case: str) -> Graph | None:
    c, h, w = shape
    nodes = [Node("input", [], {"shape": [c, h, w]})]

    def add(op, inputs, attrs=None, params=None):
        nodes.append(Node(op, inputs, attrs or {}, params or {}, name=f"n{len(nodes)}"))
        return len(nodes) - 1

    kind, _, arg = case.partition(":")
    if kind in ("maxpool", "avgpool"):
        pool = POOLS[int(arg.split("/")[0])]
        if not _fits(shape, pool):
            return None
        attrs = {"k": pool[0], "stride": pool[1], "pad": pool[2]}
        if pool[3]:
            attrs["ceil_mode"] = True
        if kind == "avgpool":
            attrs["count_include_pad"] = arg.endswith("cip")
        add(kind, [add("relu", [0]) if kind == "maxpool" and c > 1 else 0], attrs)
    elif kind == "reshape":  # image -> features -> (C', H', W') -> image again
        f = add("reshape", [0], {"shape": [c * h * w]})
        t = add("reshape", [add("affine", [f], {}, {"scale": _f(rng, c * h * w),
                                                     "shift": _f(rng, c * h * w)})],
                {"shape": [h, w, c]})
        add("reshape", [add("relu", [t])], {"shape": [c, h, w]})
    elif kind == "shuffle":
        g = int(arg)
        if c % g:
            c2 = c * g  # a conv to a channel count the groups divide
            add("channel_shuffle", [add("conv2d", [0], {"stride": 1, "padding": 0},
                                        {"weight": _f(rng, c2, c, 1, 1)})], {"groups": g})
        else:
            add("channel_shuffle", [0], {"groups": g})
    elif kind == "upsample":
        mode, _, ac = arg.partition("/")
        scale = 3 if ac == "s3" else 2
        add("upsample", [0], {"scale": scale, "mode": mode, "align_corners": ac == "ac"})
    elif kind == "blinear":  # binary linear on binary activations: a binary 1x1 conv of a map
        f = c * h * w
        o = int(arg)
        t = add("reshape", [add("flatten", [0])], {"shape": [f, 1, 1]})
        t = add("sbconv2d", [t], {"stride": 1, "padding": 0, "binary_input": True},
                {"bits": (rng.random((o, f, 1, 1)) < 0.3).astype(np.uint8),
                 "eta": _f(rng, o), "xi": _f(rng, o), "bias": _f(rng, o),
                 "thr": 0.3 * _f(rng, f)})
        add("reshape", [t], {"shape": [o]})
    else:  # pragma: no cover - a typo in CASES
        raise ValueError(case)
    return Graph(nodes, len(nodes) - 1)


CASES = ([f"maxpool:{i}" for i in range(len(POOLS))]
         + [f"avgpool:{i}/{c}" for i in range(len(POOLS)) for c in ("cip", "nocip")]
         + ["reshape", "shuffle:1", "shuffle:2", "shuffle:3", "upsample:nearest",
            "upsample:bilinear", "upsample:bilinear/ac", "upsample:bilinear/s3",
            "upsample:nearest/s3", "blinear:1", "blinear:7", "blinear:70"])


def _close(got, want, tol=TOL):
    got = np.asarray(got).reshape(want.shape)
    scale = max(float(np.abs(want).max()), 1e-6)
    assert float(np.abs(got - want).max()) <= tol * scale, float(np.abs(got - want).max())


def _impls():
    avail = native.available_impls() if core is not None else []
    return [pytest.param(i, marks=pytest.mark.skipif(i not in avail, reason=f"no {i} here"))
            for i in ("scalar", "avx2", "avx512", "neon")]


def _cases_for(case, seed):
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        g = _graph(shape, rng, case)
        if g is not None:
            yield g, 3 * _f(rng, 3, *shape)


@needs_core
@pytest.mark.parametrize("impl", _impls())
@pytest.mark.parametrize("case", CASES)
def test_engine_matches_reference(case, impl, monkeypatch):
    monkeypatch.setenv("SBNN_ISA", impl)
    n = 0
    for g, x in _cases_for(case, len(case)):
        want = reference_forward(g, x)
        _close(Engine(g, 1, backend="native", impl=impl).run(x), want)
        _close(Engine(g, 2, backend="native", impl=impl).run(x[:1]), want[:1])
        n += 1
    assert n >= 2  # every case runs on several shapes


@pytest.mark.parametrize("case", CASES)
def test_onnx_matches_reference(case):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from sbnn_runtime import lower_onnx

    for g, x in _cases_for(case, len(case) + 1):
        sess = ort.InferenceSession(lower_onnx.to_onnx(g).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        _close(sess.run(None, {"x": x})[0], reference_forward(g, x))


COMPILERS = [c for c in ("gcc", "clang") if shutil.which(c)]
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wshadow",
          "-Wdouble-promotion", "-Wconversion", "-O2"]


@pytest.fixture(scope="module")
def clib(tmp_path_factory):
    if not COMPILERS:
        pytest.skip("no C compiler (gcc/clang) on PATH")
    d = tmp_path_factory.mktemp("micro_shape")
    for name, data in kernel_files().items():
        (d / name).write_bytes(data)
    srcs = [d / "sbnn_pool.c", d / "sbnn_shape.c"]
    so = d / "libshape.so"
    r = subprocess.run([COMPILERS[0], *STRICT, "-fPIC", "-shared", "-ffp-contract=off",
                        *map(str, srcs), "-o", str(so)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return ctypes.CDLL(str(so))


def _c_run(lib, g: Graph, x: np.ndarray) -> np.ndarray:
    """Run the last node of ``g`` (a pool, shuffle or upsample of node 0 or 1) with its C
    kernel, one image at a time, the C statement its op table entry writes."""
    shapes = infer_shapes(g)
    nd = g.nodes[-1]
    src = reference_forward(Graph(g.nodes, nd.inputs[0]), x) if nd.inputs[0] else x
    out = np.zeros((x.shape[0], *shapes[-1]), np.float32)
    fp = ctypes.POINTER(ctypes.c_float)
    for n in range(x.shape[0]):
        xi = np.ascontiguousarray(src[n], np.float32)
        yi = out[n]

        class CN:  # the CNode fields these lowerings read
            node, ins, out = nd, [shapes[nd.inputs[0]]], shapes[-1]
            x, y = ["X"], "Y"

        call = OPS[nd.op].lower_c(CN)
        name, _, args = call.rstrip(";").partition("(")
        ints = [int(a) for a in args.rstrip(")").split(", ")[2:]]
        getattr(lib, name)(xi.ctypes.data_as(fp), yi.ctypes.data_as(fp),
                           *map(ctypes.c_int, ints))
    return out


@pytest.mark.parametrize("case", [c for c in CASES if not c.startswith(("reshape", "blinear"))])
def test_c_kernels_match_reference(clib, case):
    for g, x in _cases_for(case, len(case) + 2):
        _close(_c_run(clib, g, x), reference_forward(g, x))


def test_reference_semantics_are_torchs():
    """A few points by hand, as PyTorch computes them."""
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)

    def run(op, attrs):
        return reference_forward(Graph([Node("input", [], {"shape": [1, 3, 3]}),
                                        Node(op, [0], attrs)], 1), x)[0, 0]

    # ceil_mode: windows at 0 and 2; the second holds column/row 2 only (past the input)
    np.testing.assert_array_equal(run("maxpool", {"k": 2, "stride": 2, "pad": 0,
                                                  "ceil_mode": True}), [[5, 6], [8, 9]])
    np.testing.assert_allclose(run("avgpool", {"k": 2, "stride": 2, "pad": 0, "ceil_mode": True,
                                               "count_include_pad": True}),
                               [[3, 4.5], [7.5, 9]])
    # torch.nn.AvgPool2d(2, 2, padding=1, ceil_mode=True, count_include_pad=True) on this input:
    # every window divides by 4, the pad cells count
    np.testing.assert_allclose(run("avgpool", {"k": 2, "stride": 2, "pad": 1, "ceil_mode": True,
                                               "count_include_pad": True}),
                               [[0.25, 5 / 4], [11 / 4, 28 / 4]])
    np.testing.assert_allclose(run("upsample", {"scale": 2, "mode": "nearest",
                                                "align_corners": False})[0], [1, 1, 2, 2, 3, 3])
    # bilinear, half-pixel: out[1] = 0.75 * x[0] + 0.25 * x[1]; align_corners: ends match
    np.testing.assert_allclose(run("upsample", {"scale": 2, "mode": "bilinear",
                                                "align_corners": False})[0],
                               [1, 1.25, 1.75, 2.25, 2.75, 3])
    np.testing.assert_allclose(run("upsample", {"scale": 2, "mode": "bilinear",
                                                "align_corners": True})[0],
                               [1, 1.4, 1.8, 2.2, 2.6, 3], rtol=1e-6)
    y = reference_forward(Graph([Node("input", [], {"shape": [6, 1, 1]}),
                                 Node("channel_shuffle", [0], {"groups": 2})], 1),
                          np.arange(6, dtype=np.float32).reshape(1, 6, 1, 1))
    np.testing.assert_array_equal(y.ravel(), [0, 3, 1, 4, 2, 5])


def test_old_pool_attributes_load_and_bad_ones_are_refused_by_name():
    def g(**attrs):
        return Graph([Node("input", [], {"shape": [2, 5, 5]}), Node("maxpool", [0], attrs)], 1)

    assert infer_shapes(g(k=3, stride=2, pad=1))[1] == (2, 3, 3)  # a file from before
    assert infer_shapes(g(k=[3, 1], stride=[2, 1], pad=[1, 0], ceil_mode=True))[1] == (2, 3, 5)
    for attrs, msg in [({"k": [3, 1, 2], "stride": 1, "pad": 0}, "k must be an int or a list"),
                       ({"k": 2, "stride": 1, "pad": 2}, "pads at most k/2"),
                       ({"k": 2, "stride": 0, "pad": 0}, "bad window"),
                       ({"k": 2, "stride": "2", "pad": 0}, "attribute 'stride' must be an int or "
                                                           "a list"),
                       ({"k": 2, "stride": 1, "pad": 0, "ceil_mode": 1}, "ceil_mode")]:
        with pytest.raises(SBNNFormatError, match=msg):
            infer_shapes(g(**attrs))
    bad = [Graph([Node("input", [], {"shape": [6, 2, 2]}), Node(op, [0], a)], 1) for op, a in (
        ("channel_shuffle", {"groups": 4}), ("reshape", {"shape": [5, 5]}),
        ("reshape", {"shape": [25]}), ("upsample", {"scale": 2, "mode": "cubic",
                                                    "align_corners": False}))]
    for gr, msg in zip(bad, ["4 groups do not divide 6", "shape must be", "cannot reshape",
                             "unknown mode 'cubic'"], strict=True):
        with pytest.raises(SBNNFormatError, match=msg):
            infer_shapes(gr)


def test_flat_and_sequence_inputs_take_the_user_shape():
    """A graph whose metadata records (F,) or (C, L) takes that shape (and the (C, H, W) it
    runs as); anything else is refused naming the expected shape."""
    for user, node in (([12], [12, 1, 1]), ([3, 4], [3, 1, 4])):
        g = Graph([Node("input", [], {"shape": node}), Node("relu", [0])], 1,
                  {"input_shape": user})
        assert g.user_input_shape == tuple(user)
        eng = Engine(g, 1, backend="reference")
        x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, *user)
        np.testing.assert_array_equal(eng(x).reshape(2, -1), np.maximum(x, 0).reshape(2, -1))
        eng(x.reshape(2, *node))
        with pytest.raises(ValueError, match=r"expected \(N, " + ", ".join(map(str, user))):
            eng(np.zeros((2, 24), np.float32) if len(user) == 2 else
                np.zeros((2, 3, 4), np.float32))
    # a header whose recorded shape does not run as the input node's is ignored
    g = Graph([Node("input", [], {"shape": [3, 2, 2]})], 0, {"input_shape": [5]})
    assert g.user_input_shape == (3, 2, 2)
