"""Every op with spatial arithmetic against the numpy reference on every small geometry (issue 18).

Square inputs 1-4, kernels 1-5, strides 1-3, paddings 0-2 (exhaustive), plus a fixed random
sample of non-square ones (H != W, kh != kw up to 9 and 5). Two layers:

* the kernels with ISA variants (the float conv, the binary conv on binarised input, sparse and
  dense) called directly on every ISA this CPU runs and the reference one;
* ``SPATIAL_OPS``, one entry per spatial op (the list a new op joins): each is built as a
  one-op graph, run by the native engine against ``reference_forward`` (once more with
  ``SBNN_ISA=scalar`` forced), and its shape rule must accept exactly the geometries PyTorch
  accepts (plus the format's own rule, padding >= kernel, for convs).

``scripts/sanitize.sh`` runs this file once more against the runtime built with ASan + UBSan.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pytest

from sbnn_runtime import kernels, native
from sbnn_runtime.native import core
from sbnn_runtime.ops import Graph, Node, SBNNFormatError, infer_shapes, reference_forward

needs_core = pytest.mark.skipif(core is None, reason=f"no native core: {native.native_error}")


def square_geometries():
    return [(n, n, k, k, s, p) for n in range(1, 5) for k in range(1, 6) for s in range(1, 4)
            for p in range(3)]


def nonsquare_geometries(count: int = 60):
    rng = np.random.default_rng(18)
    out = []
    while len(out) < count:
        out.append(tuple(int(v) for v in (rng.integers(1, 10), rng.integers(1, 10),
                                          rng.integers(1, 6), rng.integers(1, 6),
                                          rng.integers(1, 4), rng.integers(0, 3))))
    return out


def conv_fits(h, w, kh, kw, s, p) -> bool:
    """What PyTorch accepts (the kernel fits the padded input) and the format's p < kernel."""
    return h + 2 * p >= kh and w + 2 * p >= kw and p < max(kh, kw)


GEOMS = square_geometries() + nonsquare_geometries()


def impls():
    return ["ref"] + [i for i in native.available_impls() if i != "ref"] if core else []


@needs_core
def test_float_conv_on_every_small_geometry():
    rng = np.random.default_rng(0)
    n = 0
    for h, w, kh, kw, s, p in GEOMS:
        if not conv_fits(h, w, kh, kw, s, p):
            continue
        x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
        wt = rng.standard_normal((5, 3, kh, kw)).astype(np.float32)
        b = rng.standard_normal(5).astype(np.float32)
        ref = kernels.conv2d_reference(x, wt, b, s, p)
        for impl in impls():
            y = core.conv2d(x, wt, b, s, p, num_threads=1, impl=impl)
            np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4,
                                       err_msg=f"{impl} {h}x{w} k{kh}x{kw} s{s} p{p}")
            n += 1
    assert n > 400


@needs_core
def test_binary_conv_on_every_small_geometry():
    rng = np.random.default_rng(1)
    n = 0
    for h, w, kh, kw, s, p in GEOMS:
        if not conv_fits(h, w, kh, kw, s, p):
            continue
        x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
        bits = (rng.random((5, 3, kh, kw)) < 0.4).astype(np.uint8)
        eta, xi, bias = (rng.standard_normal(5).astype(np.float32) for _ in range(3))
        thr = (0.3 * rng.standard_normal(3)).astype(np.float32)
        ref = kernels.bconv2d_reference(x, bits, eta, xi, bias, s, p, thr)
        for impl in impls():
            for kind in ("sparse", "dense"):
                y = core.bconv2d(x, bits, eta, xi, bias, s, p, thr, impl=impl, kind=kind)
                np.testing.assert_allclose(
                    y, ref, rtol=1e-4, atol=1e-4,
                    err_msg=f"{impl} {kind} {h}x{w} k{kh}x{kw} s{s} p{p}")
                n += 1
    assert n > 800


# ---------------------------------------------------------------------------------------------
# The spatial ops, one entry each: every entry runs through the engine against the reference on
# its geometries (and again with SBNN_ISA=scalar forced; under ASan + UBSan in
# scripts/sanitize.sh), and the shape rules must accept exactly what ``fits`` accepts. A new op
# with spatial arithmetic joins by adding an entry here (see docs/HARDENING.md).


class SpatialOp(NamedTuple):
    """One op with spatial arithmetic, made over a ``(3, h, w)`` input for a geometry.

    ``make(geo, rng)``: the node, or None when the op cannot express the geometry (a square
    window op and ``kh != kw``); ``fits(geo)``: whether PyTorch (and the format's rules) accept
    it; ``geoms``: the geometries to try.
    """

    name: str
    make: Callable[[tuple, np.random.Generator], Node | None]
    fits: Callable[[tuple], bool]
    geoms: list[tuple]


def _f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _conv(geo, rng):
    h, w, kh, kw, s, p = geo
    return Node("conv2d", [0], {"stride": s, "padding": p},
                {"weight": _f32(rng, 4, 3, kh, kw), "bias": _f32(rng, 4)})


def _sbconv(binary_input: bool):
    def make(geo, rng):
        h, w, kh, kw, s, p = geo
        params = {"bits": (rng.random((4, 3, kh, kw)) < 0.5).astype(np.uint8),
                  "eta": _f32(rng, 4), "xi": _f32(rng, 4), "bias": _f32(rng, 4)}
        if binary_input:
            params["thr"] = (0.3 * _f32(rng, 3)).astype(np.float32)
        return Node("sbconv2d", [0], {"stride": s, "padding": p, "binary_input": binary_input},
                    params)
    return make


def _pool(op: str, **attrs):
    def make(geo, rng):
        h, w, kh, kw, s, p = geo
        return Node(op, [0], {"k": kh, "stride": s, "pad": p, **attrs}) if kh == kw else None
    return make


def pool_fits(h, w, kh, kw, s, p) -> bool:
    """PyTorch's pools: padding at most half the window, the window fits the padded input."""
    return 2 * p <= kh and h + 2 * p >= kh and w + 2 * p >= kw


MAPS = [(h, w, 1, 1, 1, 0) for h in range(1, 10) for w in range(1, 10)]

SPATIAL_OPS = [
    SpatialOp("conv2d", _conv, lambda g: conv_fits(*g), GEOMS),
    SpatialOp("sbconv2d real input", _sbconv(False), lambda g: conv_fits(*g), GEOMS),
    SpatialOp("sbconv2d binary input", _sbconv(True), lambda g: conv_fits(*g), GEOMS),
    SpatialOp("maxpool", _pool("maxpool"), lambda g: pool_fits(*g), GEOMS),
    SpatialOp("avgpool", _pool("avgpool", count_include_pad=True), lambda g: pool_fits(*g),
              GEOMS),
    SpatialOp("avgpool excluding pad", _pool("avgpool", count_include_pad=False),
              lambda g: pool_fits(*g), GEOMS),
    SpatialOp("global_avgpool", lambda g, rng: Node("global_avgpool", [0]), lambda g: True,
              MAPS),
]


def check_engine_geometries(ops=None) -> int:
    """Every spatial op on each of its geometries that fits, native engine against the
    reference; returns the number of graphs checked."""
    import sbnn_runtime

    n = 0
    for op in ops or SPATIAL_OPS:
        rng = np.random.default_rng(2)
        for geo in op.geoms:
            nd = op.make(geo, rng)
            if nd is None or not op.fits(geo):
                continue
            h, w = geo[:2]
            g = Graph([Node("input", [], {"shape": [3, h, w]}), nd], 1)
            x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
            y = sbnn_runtime.Engine(g, 1, backend="native")(x)
            np.testing.assert_allclose(y, reference_forward(g, x), rtol=1e-4, atol=1e-4,
                                       err_msg=f"{op.name} {geo}")
            n += 1
    return n


@needs_core
@pytest.mark.parametrize("op", SPATIAL_OPS, ids=[o.name for o in SPATIAL_OPS])
def test_engine_op_on_every_small_geometry(op):
    assert check_engine_geometries([op]) >= min(50, len(op.geoms) // 4)


@needs_core
@pytest.mark.skipif("scalar" not in (native.available_impls() if core else []),
                    reason="no scalar kernels")
def test_engine_ops_on_every_small_geometry_with_scalar_forced():
    here = os.path.dirname(__file__)
    code = (f"import sys; sys.path.insert(0, {here!r}); import test_geometry as t; "
            "from sbnn_runtime.native import core; assert core.default_impl() == 'scalar'; "
            "print(t.check_engine_geometries())")
    env = dict(os.environ, SBNN_ISA="scalar", PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout.split()[-1]) > 500


@pytest.mark.parametrize("op", SPATIAL_OPS, ids=[o.name for o in SPATIAL_OPS])
def test_shape_rules_refuse_only_what_pytorch_refuses(op):
    # conv: a kernel larger than the padded input (PyTorch: "Kernel size can't be greater than
    # actual input size"), plus the format's padding >= kernel; pools: padding over half the
    # window (PyTorch: "pad should be at most half of effective kernel size")
    rng = np.random.default_rng(3)
    for geo in op.geoms:
        nd = op.make(geo, rng)
        if nd is None:
            continue
        g = Graph([Node("input", [], {"shape": [3, *geo[:2]]}), nd], 1)
        try:
            infer_shapes(g)
            ok = True
        except SBNNFormatError:
            ok = False
        assert ok == op.fits(geo), (op.name, geo)
