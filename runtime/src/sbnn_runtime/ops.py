"""The graph of a ``.sbnn`` model and the one table of its operations.

A model is a :class:`Graph`: a list of :class:`Node` in topological order (node ``i`` produces
tensor ``i`` and reads only tensors ``< i``; node 0 is the input). Every op a node may name is one
:class:`OpSpec` in :data:`OPS`, which says everything sbnn knows about it:

* ``inputs``, ``attrs`` (name -> type) and ``params`` (name -> (dtype, required));
* ``shape(node, input_shapes, where)``: the output shape of one image, checking the node's
  parameters against its inputs (raises :class:`SBNNFormatError`);
* ``reference(node, inputs)``: the numpy float32 semantics (the reference twin of the engine);
* its lowering per backend (each backend looks the op up here and dispatches on nothing else):

  - ``lower_native(native_engine, node, input_ids, options)``: adds the op to the native engine
    (``sbnn_runtime._core.Engine``) and returns its tensor id;
  - ``lower_onnx(ctx, node, inputs, output)``: standard ONNX operators, written against a small
    builder (``ctx.node``, ``ctx.const``, ``ctx.chan``, ``ctx.tmp``; see
    :mod:`sbnn_runtime.lower_onnx`) so that this module never imports onnx;
  - ``lower_c(cnode)``: the C99 backend's lowering, one statement calling a kernel, written
    against :class:`sbnn_runtime.lower_c.CNode` (pointers, shapes, constant emitters); the
    kernels are the C files of ``runtime/csrc/micro``, or ``c_source``: C text (static
    functions) that the model file then carries, for an op whose kernel is not among them;

  ``None`` for any of them: the op has no lowering there, and that backend refuses a graph
  that uses it, naming the op and the node;
* ``macs(node, input_shapes, output_shape)``: multiply-accumulates (binary ones for binary
  convs) per image, for summaries and for the loader's work limit;
* ``workspace(node, input_shapes, output_shape)``: bytes of scratch the native kernel allocates
  per image it works on at once (im2col columns, bit planes), for the loader's memory limit;
* ``bit_params``: the params that hold 0/1 weights (the file stores them run-length coded,
  summaries count them as binary weights); ``binary(node)``: whether the node's MACs are
  binary (XNOR/popcount) ones.

Shape rules read only the shapes and dtypes of the parameters (the 0/1 check of ``bits`` aside,
which :class:`ShapeOnly` stand-ins skip), so that :func:`infer_shapes` and
:func:`sbnn_runtime.passes.graph_cost` can check a graph read from a file header before a
single parameter is decoded.

Fusion, weight encodings and memory planning are graph passes (:mod:`sbnn_runtime.passes`),
written once for every backend. Adding an op means one entry here plus its kernels (C++ in
``runtime/csrc``, C99 for the C backend); see ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sbnn_runtime import kernel_costs as kc
from sbnn_runtime import kernels, qkernels

__all__ = [
    "SBNNFormatError",
    "Node",
    "Graph",
    "OpSpec",
    "OPS",
    "DTYPES",
    "MAX_ELEMS",
    "infer_shapes",
    "lowering",
    "reference_forward",
    "graph_macs",
    "ShapeOnly",
    "shape_only",
    "GraphCost",
    "SBNNLimitError",
    "Limits",
    "DEFAULT_MAX_MACS",
    "DEFAULT_MAX_MEMORY",
    "PoolGeometry",
    "pool_geometry",
    "user_input_shape",
    "UPSAMPLE_MODES",
    "INTS",
    "conv_geometry",
    "conv_is_simple",
]

DTYPES = {"f32": np.dtype("<f4"), "u8": np.dtype("u1"), "i8": np.dtype("i1")}
MAX_ELEMS = 1 << 28  # per tensor: guards allocations driven by header numbers

Shape = tuple[int, ...]


class SBNNFormatError(ValueError):
    """A ``.sbnn`` file, bytes or graph is not a valid model; the message says what is wrong."""


class SBNNLimitError(SBNNFormatError):
    """A valid model needs more work or memory than the limits allow (see :class:`Limits`)."""


class ShapeOnly(np.ndarray):
    """A zero-byte stand-in for a parameter whose values are not read yet (see :func:`shape_only`).

    It has the shape and dtype the file declares, so the shape rules and the cost of a graph can
    be checked from the header alone; its values (all zero, one shared element) mean nothing.
    """


def shape_only(shape: tuple[int, ...], dtype, ones: int | None = None) -> ShapeOnly:
    """A :class:`ShapeOnly` array of ``shape`` and ``dtype`` that allocates one element.

    ``ones``: how many of its elements are 1 (binary weights: the file header says it, and the
    sparse kernel's cost depends on it); None counts every element.
    """
    a = np.broadcast_to(np.zeros((), dtype), tuple(shape)).view(ShapeOnly)
    a.ones = math.prod(shape) if ones is None else int(ones)
    return a


@dataclass
class Node:
    """One operation. ``inputs`` are indices of earlier nodes; ``params`` are numpy arrays."""

    op: str
    inputs: list[int] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = ""


@dataclass
class Graph:
    """A model as a DAG of :class:`Node` in topological order; node 0 is the input."""

    nodes: list[Node]
    output: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.nodes[0].attrs["shape"])  # type: ignore[return-value]

    @property
    def user_input_shape(self) -> tuple[int, ...]:
        """The input shape the model's user feeds: the ``input_shape`` the exporter records
        in the metadata, (C, H, W), (C, L) or (F,), which runs as the input node's (C, H, W):
        (C, L) as (C, 1, L) and (F,) as (F, 1, 1). Files without one: the input node's."""
        return user_input_shape(self.input_shape, self.metadata.get("input_shape"))

    def shapes(self) -> list[Shape]:
        """Per-node output shape without the batch dimension (checks the graph)."""
        return infer_shapes(self)


@dataclass(frozen=True)
class OpSpec:
    """Everything about one op; see the module docstring."""

    name: str
    inputs: int
    attrs: dict[str, type]
    params: dict[str, tuple[str, bool]]
    shape: Callable[[Node, list[Shape], str], Shape]
    reference: Callable[[Node, list[np.ndarray]], np.ndarray]
    lower_native: Callable[[Any, Node, list[int], dict], int] | None
    lower_onnx: Callable[[Any, Node, list[str], str], None] | None
    lower_c: Callable[..., Any] | None = None
    macs: Callable[[Node, list[Shape], Shape], int] = lambda nd, ins, out: 0
    workspace: Callable[[Node, list[Shape], Shape], int] = lambda nd, ins, out: 0
    # kernel steps per image (see sbnn_runtime.kernel_costs); None: the MACs plus one pass
    # over the output
    work: Callable[[Node, list[Shape], Shape], int] | None = None
    # bytes the native engine holds for the node's parameters; None: one copy of them
    engine_bytes: Callable[[Node, list[Shape], Shape], int] | None = None
    bit_params: tuple[str, ...] = ()
    binary: Callable[[Node], bool] = lambda nd: False
    c_source: str = ""
    # what the C backend's memory plan needs to know of the op's C kernel:
    c_alias: bool = False  # no code: the output is its input's memory (a reshape)
    c_inplace: bool = False  # element-wise: may write its output over a dying input
    # (node, input_shapes, output_shape, input_is_int8_map) -> {name: 4-byte cells} of scratch
    c_scratch: Callable[[Node, list[Shape], Shape, bool], dict[str, int]] | None = None
    # (node) -> the kernel reads all its input before writing: may write over it
    c_input_first: Callable[[Node], bool] | None = None
    # (node, output_shape) -> k, stride, pad, oh, ow, is_max, count_include_pad of an
    # sbnn_epi: a pooling a conv may run channel by channel in its epilogue
    c_epilogue: Callable[[Node, Shape], list[int]] | None = None
    # attributes a node may leave out (files written before them; each op's rule then reads
    # its default)
    optional_attrs: tuple[str, ...] = ()
    # (node, x_scale, x_zero) -> the node's int8 twin (its input quantised to uint8 with that
    # scale and zero point, its weight to per-channel int8; see sbnn_runtime.quantize); None:
    # the op stays as it is under --int8
    int8: Callable[[Node, float, int], Node] | None = None


OPS: dict[str, OpSpec] = {}


def _register(spec: OpSpec) -> OpSpec:
    if spec.name in OPS:
        raise ValueError(f"op {spec.name!r} is already registered")
    OPS[spec.name] = spec
    return spec


def _err(msg: str) -> SBNNFormatError:
    return SBNNFormatError(msg)


def _expect(where: str, name: str, arr: np.ndarray, shape: Shape) -> None:
    if tuple(arr.shape) != tuple(shape):
        raise _err(f"{where}: param {name!r} has shape {tuple(arr.shape)}, expected {shape}")


def _spatial(where: str, s: Shape) -> tuple[int, int, int]:
    if len(s) != 3:
        raise _err(f"{where}: needs a (C, H, W) input, got {s}")
    return s  # type: ignore[return-value]


def _cview(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    # per-channel vector (C,) against x: (N, C, H, W) or (N, F)
    return np.asarray(v, np.float32).reshape((1, -1) + (1,) * (x.ndim - 2))


_I, _F, _B = int, float, bool


class INTS:
    """Attribute type: an int or a list of ints per axis / side (a conv's stride, padding,
    dilation; a pool's k, stride, pad)."""


def _int_or_ints(v: Any) -> bool:
    def small(u: Any) -> bool:
        return isinstance(u, int) and not isinstance(u, bool) and 0 <= u <= 1 << 16
    return small(v) or (isinstance(v, (list, tuple)) and 1 <= len(v) <= 4
                        and all(small(u) for u in v))
_F32_MAX = float(np.finfo(np.float32).max)  # float attributes run as float32


# -- conv2d / sbconv2d ------------------------------------------------------------------------

ConvGeometry = tuple[int, int, int, int, int, int, int, int, int]


def conv_geometry(nd: Node) -> ConvGeometry:
    """A conv-like node's attributes as ``(sh, sw, pt, pl, pb, pr, dh, dw, groups)``.

    The one reader of a conv's geometry (shape rules, references, costs, every lowering):
    ``stride`` is an int or ``[sh, sw]``; ``padding`` an int or ``[top, left, bottom, right]``;
    ``dilation`` (default 1) an int or ``[dh, dw]``; ``groups`` (default 1) an int. Files
    written before these forms existed (ints, no dilation or groups) read unchanged. Raises
    :class:`SBNNFormatError` on any other form.
    """
    A = nd.attrs

    def ints(name: str, n: int, default: int = 0) -> tuple[int, ...]:
        v = A.get(name, default)
        if isinstance(v, int) and not isinstance(v, bool):
            return (v,) * n
        if isinstance(v, (list, tuple)) and len(v) == n and all(
                isinstance(u, int) and not isinstance(u, bool) for u in v):
            return tuple(v)
        raise _err(f"{nd.op} {nd.name!r}: attribute {name!r} must be an int or a list of {n} "
                   f"ints, got {v!r}")

    sh, sw = ints("stride", 2)
    pt, pl, pb, pr = ints("padding", 4)
    dh, dw = ints("dilation", 2, 1)
    (groups,) = ints("groups", 1, 1)
    if min(sh, sw, dh, dw, groups) < 1 or min(pt, pl, pb, pr) < 0:
        raise _err(f"{nd.op} {nd.name!r}: stride, dilation and groups must be >= 1, padding "
                   f">= 0 (stride {A.get('stride')!r}, padding {A.get('padding')!r}, dilation "
                   f"{A.get('dilation', 1)!r}, groups {A.get('groups', 1)!r})")
    return sh, sw, pt, pl, pb, pr, dh, dw, groups


def conv_is_simple(geom: ConvGeometry) -> bool:
    """One stride, one padding on every side, no dilation, no groups: the geometry every
    backend had before grouped, dilated and non-square convs (the fast binary kernels')."""
    sh, sw, pt, pl, pb, pr, dh, dw, groups = geom
    return sh == sw and pt == pl == pb == pr and dh == dw == groups == 1


def _conv_out(where: str, geom: ConvGeometry, h: int, w: int, kh: int, kw: int) -> tuple[int, int]:
    sh, sw, pt, pl, pb, pr, dh, dw, _ = geom
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1  # the dilated kernel's extent
    if min(kh, kw) < 1 or max(pt, pl, pb, pr) >= max(ekh, ekw):
        raise _err(f"{where}: bad kernel {kh}x{kw} (dilation {dh}x{dw}) or padding "
                   f"{[pt, pl, pb, pr]}: each pad must be smaller than the kernel's extent "
                   "(a larger one: a zeropad node before the conv)")
    oh, ow = (h + pt + pb - ekh) // sh + 1, (w + pl + pr - ekw) // sw + 1
    if min(oh, ow) < 1:
        raise _err(f"{where}: kernel {kh}x{kw} (dilation {dh}x{dw}, padding "
                   f"{[pt, pl, pb, pr]}) does not fit input {h}x{w}")
    return oh, ow


def _conv_shape(nd: Node, ins: list[Shape], where: str) -> Shape:
    c, h, w = _spatial(where, ins[0])
    P = nd.params
    geom = conv_geometry(nd)
    groups = geom[8]
    wt = P["weight"] if nd.op == "conv2d" else P["bits"]
    if wt.ndim != 4 or c % groups or wt.shape[1] * groups != c:
        raise _err(f"{where}: weight shape {wt.shape} does not take {c} input channels in "
                   f"{groups} group(s)")
    co, _, kh, kw = wt.shape
    if co < 1 or co % groups:
        raise _err(f"{where}: {co} output channels do not split into {groups} groups")
    oh, ow = _conv_out(where, geom, h, w, kh, kw)
    for p in (["bias"] if nd.op == "conv2d" else ["eta", "xi", "bias"]):
        if p in P:
            _expect(where, p, P[p], (co,))
    if nd.op == "sbconv2d":
        if P["bits"].size and not isinstance(P["bits"], ShapeOnly) and int(P["bits"].max()) > 1:
            raise _err(f"{where}: bits must be 0/1")
        if "thr" in P:
            _expect(where, "thr", P["thr"], (c,))
        if _is_fast_bconv(nd):  # every limit of the native binary conv, before it runs
            why = kc.bconv_limit_error(c, h, w, kh, kw, geom[0], geom[2])
            if why:
                raise _err(f"{where}: {why}")
    return (co, oh, ow)


def _conv_macs(nd: Node, ins: list[Shape], out: Shape) -> int:
    wt = nd.params["weight"] if nd.op == "conv2d" else nd.params["bits"]
    return int(np.prod(out)) * int(np.prod(wt.shape[1:]))


def _ones(bits: np.ndarray) -> int:
    """1-bits of a binary weight: counted, or as the file header declares them (stand-ins)."""
    if isinstance(bits, ShapeOnly):
        return int(getattr(bits, "ones", bits.size))  # views of a stand-in lose it
    return int(np.count_nonzero(bits))


def _bgeom(nd: Node, ins: list[Shape]) -> kc.BConvGeometry:
    co, ci, kh, kw = nd.params["bits"].shape
    _, h, w = ins[0]
    geom = conv_geometry(nd)
    return kc.bconv_geometry(ci, h, w, kh, kw, geom[0], geom[2], 64)


def _is_bconv(nd: Node) -> bool:
    return nd.op == "sbconv2d" and nd.attrs["binary_input"]


def _is_fast_bconv(nd: Node) -> bool:
    """A binary conv the engine's packed sparse/dense kernels take (sbnn::BConvLayer); a
    grouped, dilated or non-square one runs sbnn::BConvDirect (bconv.cpp) instead."""
    return _is_bconv(nd) and conv_is_simple(conv_geometry(nd))


def _conv_workspace(nd: Node, ins: list[Shape], out: Shape) -> int:
    # float conv (and sbconv2d on real inputs): the im2col column panels of one image (one
    # group's); binary conv: the larger scratch of its sparse, dense and tiny-map kernels
    # (kernel_costs); the direct binary conv: its +-1 padded input and one int32 output plane
    wt = nd.params["weight"] if nd.op == "conv2d" else nd.params["bits"]
    if _is_fast_bconv(nd):
        g = _bgeom(nd, ins)
        return max(kc.bconv_workspace(g, wt.shape[0]), kc.tiny_workspace(g, wt.shape[0]))
    if _is_bconv(nd):
        sh, sw, pt, pl, pb, pr, *_ = conv_geometry(nd)
        c, h, w = ins[0]
        return c * (h + pt + pb) * (w + pl + pr) + 8 * out[1] * out[2] + 64
    return kc.fconv_workspace(int(np.prod(wt.shape[1:])), out[1] * out[2])


def _conv_work(nd: Node, ins: list[Shape], out: Shape) -> int:
    wt = nd.params["weight"] if nd.op == "conv2d" else nd.params["bits"]
    co = wt.shape[0]
    if _is_fast_bconv(nd):  # every kernel may run (the engine times them at the first run,
        # after building the sparse plan for the batch's group size; tiny maps: three)
        g, ones = _bgeom(nd, ins), _ones(wt)
        return (kc.sparse_steps(g, co, ones) + kc.dense_steps(g, co) + kc.plan_steps(g, ones)
                + kc.tiny_steps(g, co))
    if _is_bconv(nd):  # the direct kernel: every tap of the window sum, every 1-bit
        return (int(np.prod(out)) * int(np.prod(wt.shape[1:]))
                + out[1] * out[2] * _ones(wt) + int(np.prod(ins[0])))
    c, h, w = ins[0]
    return kc.fconv_steps(co, int(np.prod(wt.shape[1:])), out[1] * out[2], c, h, w)


def _conv_engine_bytes(nd: Node, ins: list[Shape], out: Shape) -> int:
    wt = nd.params["weight"] if nd.op == "conv2d" else nd.params["bits"]
    co = wt.shape[0]
    vecs = sum(int(a.size) for p, a in nd.params.items() if p not in ("weight", "bits"))
    if _is_fast_bconv(nd):
        g = _bgeom(nd, ins)
        return 4 * vecs + kc.bconv_param_bytes(g, co, _ones(wt)) + kc.tiny_param_bytes(g, co)
    if _is_bconv(nd):  # its bits and one 4-byte offset per 1-bit
        return 4 * vecs + int(wt.size) + 4 * _ones(wt) + 64
    # the float weight (dequantized from the bits: a transient numpy array) and FloatConv's
    return (4 * wt.size if nd.op == "sbconv2d" else 0) + 4 * vecs + kc.fconv_param_bytes(
        co, int(np.prod(wt.shape[1:])))


def _onnx_conv(ctx, nd: Node, ins: list[str], out: str, w: np.ndarray, x: str) -> None:
    P = nd.params
    sh, sw, pt, pl, pb, pr, dh, dw, groups = conv_geometry(nd)
    args = [x, ctx.const("w", w)]
    if "bias" in P:
        args.append(ctx.const("b", P["bias"]))
    ctx.node("Conv", args, [out], kernel_shape=list(w.shape[2:]), strides=[sh, sw],
             pads=[pt, pl, pb, pr], dilations=[dh, dw], group=groups)


def _conv_reference(x: np.ndarray, nd: Node, w: np.ndarray, bias) -> np.ndarray:
    sh, sw, pt, pl, pb, pr, dh, dw, groups = conv_geometry(nd)
    return kernels.conv2d_reference(x, w, bias, (sh, sw), (pt, pl, pb, pr), (dh, dw), groups)


def _conv_native(eng, src: int, nd: Node, w: np.ndarray, bias) -> int:
    geom = conv_geometry(nd)
    if conv_is_simple(geom):
        return eng.conv2d(src, w, bias, geom[0], geom[2])
    return eng.conv2d_ex(src, w, bias, list(geom))


def _conv_c_call(cn, w: np.ndarray, bias, x: str) -> str:
    # x: (ci, h, w) -> y: (co, oh, ow), through the fused epilogue when there is one
    (ci, h, wd), (co, oh, ow) = cn.ins[0], cn.out
    kh, kw = w.shape[2:]
    geom = conv_geometry(cn.node)
    wa, ba = cn.farr("w", w), cn.farr("b", bias)
    if conv_is_simple(geom):
        return (f"sbnn_conv2d({x}, {cn.y}, {wa}, {ba}, {ci}, {h}, {wd}, {co}, {kh}, {kw}, "
                f"{geom[0]}, {geom[2]}, {oh}, {ow}, {cn.epilogue()});")
    # sh, sw, pt, pl, dh, dw, groups: the bottom and right pads follow from oh and ow
    g = "{" + ", ".join(str(v) for v in (*geom[:4], *geom[6:])) + "}"
    return (f"{{ static const int G[7] = {g}; sbnn_conv2d_ex({x}, {cn.y}, {wa}, {ba}, {ci}, "
            f"{h}, {wd}, {co}, {kh}, {kw}, G, {oh}, {ow}, {cn.epilogue()}); }}")


_CONV_ATTRS = {"stride": INTS, "padding": INTS, "dilation": INTS, "groups": _I}

_register(OpSpec(
    "conv2d", 1, dict(_CONV_ATTRS),
    {"weight": ("f32", True), "bias": ("f32", False)},
    shape=_conv_shape,
    reference=lambda nd, x: _conv_reference(x[0], nd, nd.params["weight"],
                                            nd.params.get("bias")),
    lower_native=lambda eng, nd, src, opt: _conv_native(eng, src[0], nd, nd.params["weight"],
                                                        nd.params.get("bias")),
    lower_onnx=lambda ctx, nd, ins, out: _onnx_conv(ctx, nd, ins, out, nd.params["weight"], ins[0]),
    macs=_conv_macs, workspace=_conv_workspace, work=_conv_work,
    lower_c=lambda cn: _conv_c_call(cn, cn.node.params["weight"], cn.node.params.get("bias"),
                                    cn.x[0]),
    engine_bytes=_conv_engine_bytes, optional_attrs=("dilation", "groups"),
    int8=lambda nd, s, z: _int8_twin(nd, s, z),
))


def _sbconv_reference(nd: Node, x: list[np.ndarray]) -> np.ndarray:
    P, A = nd.params, nd.attrs
    if not A["binary_input"]:  # real activations: a float conv with the folded weight
        w = kernels.dequantized_weight(P["bits"], P["eta"], P["xi"])
        return _conv_reference(x[0], nd, w, P["bias"])
    sh, sw, pt, pl, pb, pr, dh, dw, groups = conv_geometry(nd)
    return kernels.bconv2d_reference(x[0], P["bits"], P["eta"], P["xi"], P["bias"], (sh, sw),
                                     (pt, pl, pb, pr), P.get("thr"), (dh, dw), groups)


def _sbconv_build(eng, nd: Node, src: list[int], opt: dict) -> int:
    P, A = nd.params, nd.attrs
    if not A["binary_input"]:
        w = kernels.dequantized_weight(P["bits"], P["eta"], P["xi"])
        return _conv_native(eng, src[0], nd, w, P["bias"])
    geom = conv_geometry(nd)
    if not conv_is_simple(geom):  # grouped, dilated, non-square: the direct binary kernel
        return eng.sbconv2d_ex(src[0], P["bits"], P["eta"], P["xi"], P["bias"], P.get("thr"),
                               list(geom))
    return eng.sbconv2d(src[0], P["bits"], P["eta"], P["xi"], P["bias"], geom[0], geom[2],
                        P.get("thr"), opt.get("sparse", True), opt.get("impl", "auto"))


def _sbconv_onnx(ctx, nd: Node, ins: list[str], out: str) -> None:
    # sign(0) = +1, so Where(x >= thr, 1, -1) rather than Sign; zero padding then stays 0
    P = nd.params
    x = ins[0]
    if nd.attrs["binary_input"]:
        c = P["thr"].shape[0] if "thr" in P else P["bits"].shape[1] * conv_geometry(nd)[8]
        thr = P.get("thr", np.zeros(c, np.float32))
        ge = ctx.tmp("ge")
        ctx.node("GreaterOrEqual", [x, ctx.const("thr", thr.reshape(1, -1, 1, 1))], [ge])
        x = ctx.tmp("xb")
        ctx.node("Where", [ge, ctx.const("one", np.float32(1)), ctx.const("mone", np.float32(-1))],
                 [x])
    _onnx_conv(ctx, nd, ins, out, kernels.dequantized_weight(P["bits"], P["eta"], P["xi"]), x)


def _sbconv_c_scratch(nd: Node, ins: list[Shape], out: Shape, in_map: bool) -> dict[str, int]:
    # the padded input planes (int8 when binarised, unless the producer wrote them) and the
    # window sums with the channel-sum plane; a grouped, dilated or non-square binary conv:
    # its +-1 input as floats (then the float conv of its folded weight)
    ci, h, w = ins[0]
    if not conv_is_simple(conv_geometry(nd)):  # sign into xp (binary), then the float conv
        return {"xp": ci * h * w} if nd.attrs["binary_input"] else {}
    p = conv_geometry(nd)[2]
    planes = ci * (h + 2 * p) * (w + 2 * p)
    sc = {} if in_map else {"xp": (planes + 3) // 4 if nd.attrs["binary_input"] else planes}
    sc["ws"] = out[1] * out[2] + (h + 2 * p) * (w + 2 * p)
    return sc


def _sbconv_bits_c(cn, x: str) -> str:
    # a grouped, dilated or non-square binary conv: the float conv of its folded weight, whose
    # two values per output channel it looks up from the packed bits (1 bit a weight in flash)
    P = cn.node.params
    (ci, h, wd), (co, oh, ow) = cn.ins[0], cn.out
    _, _, kh, kw = P["bits"].shape
    b01 = np.tile(np.array([0, 1], np.uint8), (co, 1))  # a 0-bit and a 1-bit per channel
    w01 = cn.farr("w01", kernels.dequantized_weight(b01, P["eta"], P["xi"]))  # (co, 2)
    bits = cn.sb_bits()
    geom = conv_geometry(cn.node)
    g = "{" + ", ".join(str(v) for v in (*geom[:4], *geom[6:])) + "}"
    return (f"{{ static const int G[7] = {g}; sbnn_conv2d_bits({x}, {cn.y}, {bits}, {w01}, "
            f"{cn.farr('bias', P['bias'])}, {ci}, {h}, {wd}, {co}, {kh}, {kw}, G, {oh}, {ow}, "
            f"{cn.epilogue()}); }}")


def _sbconv_c(cn) -> str:
    nd = cn.node
    if not conv_is_simple(conv_geometry(nd)):  # a geometry the encoded kernels do not take
        P = nd.params
        if not nd.attrs["binary_input"]:
            return _sbconv_bits_c(cn, cn.x[0])
        ci, h, wd = cn.ins[0]
        xp = cn.scratch("xp")
        # its input as +-1 floats (sbnn_sign_planes), then the conv from its bits
        return (f"sbnn_sign_planes({cn.x[0]}, {xp}, {cn.farr('thr', P.get('thr'))}, {ci}, "
                f"{h * wd}); " + _sbconv_bits_c(cn, xp))
    layer = cn.sb_layer()  # its encoded weights and vectors
    tail = f"{cn.scratch('ws')}, offs, {cn.epilogue()}"
    if not nd.attrs["binary_input"]:
        return f"sbnn_sbconv_real({layer}, {cn.x[0]}, {cn.y}, {cn.scratch('xp')}, {tail});"
    if cn.in_map:  # the producer wrote the padded int8 map already
        return f"sbnn_sbconv_bin({layer}, 0, {cn.y}, (int8_t *){cn.x[0]}, {tail});"
    return (f"sbnn_sbconv_bin({layer}, {cn.x[0]}, {cn.y}, (int8_t *){cn.scratch('xp')}, "
            f"{tail});")


_register(OpSpec(
    "sbconv2d", 1, {**_CONV_ATTRS, "binary_input": _B},
    {"bits": ("u8", True), "eta": ("f32", True), "xi": ("f32", True), "bias": ("f32", True),
     "thr": ("f32", False)},
    shape=_conv_shape, reference=_sbconv_reference, lower_native=_sbconv_build,
    lower_onnx=_sbconv_onnx,
    macs=_conv_macs, workspace=_conv_workspace, work=_conv_work, lower_c=_sbconv_c,
    engine_bytes=_conv_engine_bytes,
    bit_params=("bits",), binary=lambda nd: bool(nd.attrs["binary_input"]),
    c_scratch=_sbconv_c_scratch, c_input_first=_is_fast_bconv,
    optional_attrs=("dilation", "groups"),
))


# -- zeropad: nn.ZeroPad2d / F.pad that no conv could take as its own padding --------------
# (the tracer folds a zero pad into the float conv after it; before a binary conv it pads with
# zeros that the conv then binarises to +1, so it stays a node). Every backend runs it as the
# identity depthwise 1x1 conv with these pads: no kernel of its own.

def _zeropad_pads(nd: Node, where: str) -> tuple[int, int, int, int]:
    p = nd.attrs["pads"]
    if len(p) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                              for v in p):
        raise _err(f"{where}: pads must be 4 ints >= 0 (top, left, bottom, right), got {p!r}")
    return tuple(p)  # type: ignore[return-value]


def _zeropad_shape(nd: Node, ins: list[Shape], where: str) -> Shape:
    c, h, w = _spatial(where, ins[0])
    t, left, b, r = _zeropad_pads(nd, where)
    return (c, h + t + b, w + left + r)


def _zeropad_geom(nd: Node, c: int) -> list[int]:
    t, left, b, r = nd.attrs["pads"]
    return [1, 1, t, left, b, r, 1, 1, c]


def _zeropad_reference(nd: Node, x: list[np.ndarray]) -> np.ndarray:
    t, left, b, r = nd.attrs["pads"]
    return np.pad(x[0], ((0, 0), (0, 0), (t, b), (left, r)))


def _zeropad_onnx(ctx, nd: Node, ins: list[str], out: str) -> None:
    c = ctx.shapes[nd.inputs[0]][0]
    t, left, b, r = nd.attrs["pads"]
    ctx.node("Conv", [ins[0], ctx.const("one", np.ones((c, 1, 1, 1), np.float32))], [out],
             kernel_shape=[1, 1], pads=[t, left, b, r], group=c)


def _zeropad_c(cn) -> str:
    (c, h, w), (_, oh, ow) = cn.ins[0], cn.out
    g = "{" + ", ".join(str(v) for v in _zeropad_geom(cn.node, c)[:4] + [1, 1, c]) + "}"
    return (f"{{ static const int G[7] = {g}; sbnn_conv2d_ex({cn.x[0]}, {cn.y}, "
            f"{cn.farr('one', np.ones((c, 1, 1, 1), np.float32))}, 0, {c}, {h}, {w}, {c}, 1, 1, "
            f"G, {oh}, {ow}, 0, 0, 0, 0); }}")


_register(OpSpec(
    "zeropad", 1, {"pads": list}, {},
    shape=_zeropad_shape, reference=_zeropad_reference,
    lower_native=lambda eng, nd, src, opt: eng.conv2d_ex(
        src[0], np.ones((eng.shape(src[0])[0], 1, 1, 1), np.float32), None,
        _zeropad_geom(nd, eng.shape(src[0])[0])),
    lower_onnx=_zeropad_onnx, lower_c=_zeropad_c, macs=lambda nd, ins, out: int(np.prod(out)),
))


# -- per-channel and element-wise ops --------------------------------------------------------

def _same_channels(nd: Node, ins: list[Shape], where: str) -> Shape:
    c = ins[0][0]
    for p, arr in nd.params.items():
        _expect(where, p, arr, (c,))
    return ins[0]


def _same(nd: Node, ins: list[Shape], where: str) -> Shape:
    return ins[0]


def _elementwise(nd: Node, ins: list[Shape], out: Shape) -> int:
    return int(np.prod(out))


def _affine_onnx(ctx, nd: Node, ins: list[str], out: str) -> None:
    m = ctx.tmp("mul")
    ctx.node("Mul", [ins[0], ctx.chan("s", nd.params["scale"])], [m])
    ctx.node("Add", [m, ctx.chan("t", nd.params["shift"])], [out])


_register(OpSpec(
    "affine", 1, {}, {"scale": ("f32", True), "shift": ("f32", True)},
    shape=_same_channels,
    reference=lambda nd, x: (x[0] * _cview(nd.params["scale"], x[0])
                             + _cview(nd.params["shift"], x[0])),
    lower_native=lambda eng, nd, src, opt: eng.affine(src[0], nd.params["scale"],
                                                      nd.params["shift"]),
    lower_onnx=_affine_onnx, macs=_elementwise,
    c_inplace=True,
    lower_c=lambda cn: (f"sbnn_affine({cn.x[0]}, {cn.y}, "
                        f"{cn.farr('scale', cn.node.params['scale'])}, "
                        f"{cn.farr('shift', cn.node.params['shift'])}, {cn.out[0]}, "
                        f"{math.prod(cn.out) // cn.out[0]});"),
))


def _hardtanh_shape(nd: Node, ins: list[Shape], where: str) -> Shape:
    if not nd.attrs["lo"] <= nd.attrs["hi"]:
        raise _err(f"{where}: lo > hi")
    return ins[0]


_register(OpSpec(
    "hardtanh", 1, {"lo": _F, "hi": _F}, {},
    shape=_hardtanh_shape,
    reference=lambda nd, x: np.clip(x[0], np.float32(nd.attrs["lo"]), np.float32(nd.attrs["hi"])),
    lower_native=lambda eng, nd, src, opt: eng.hardtanh(src[0], nd.attrs["lo"],
                                                        nd.attrs["hi"]),
    lower_onnx=lambda ctx, nd, ins, out: ctx.node(
        "Clip", [ins[0], ctx.const("lo", np.float32(nd.attrs["lo"])),
                 ctx.const("hi", np.float32(nd.attrs["hi"]))], [out]),
    macs=_elementwise,
    c_inplace=True,
    lower_c=lambda cn: (f"sbnn_hardtanh({cn.x[0]}, {cn.y}, {cn.flt(cn.node.attrs['lo'])}, "
                  f"{cn.flt(cn.node.attrs['hi'])}, {math.prod(cn.out)});"),
))

_register(OpSpec(
    "relu", 1, {}, {},
    shape=_same,
    reference=lambda nd, x: np.maximum(x[0], np.float32(0)),
    lower_native=lambda eng, nd, src, opt: eng.relu(src[0]),
    lower_onnx=lambda ctx, nd, ins, out: ctx.node("Relu", ins, [out]),
    macs=_elementwise,
    c_inplace=True,
    lower_c=lambda cn: f"sbnn_relu({cn.x[0]}, {cn.y}, {math.prod(cn.out)});",
))


# The element-wise activations of one op, `kind` picks which: its index in ACTIVATION_KINDS is
# the kind code of the native and the C kernels (sbnn::Engine::activation, sbnn_activation).
# ReLU6 is a hardtanh (0, 6), which the passes fuse into a conv. The C kernels of this op and
# of softmax need libm (expf, tanhf): they travel in the model file (c_source), which may use
# it, while the micro kernels stay free of libc.
_ACTIVATION_C = """
static float sbnn_clamp06(float v)
{
    return v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v);
}

static void sbnn_activation(const float *x, float *y, int kind, float alpha, int n)
{
    int i;
    for (i = 0; i < n; ++i) {
        const float v = x[i];
        float r;
        switch (kind) {
        case 0: r = v >= 0.0f ? v : alpha * v; break;
        case 1: r = 1.0f / (1.0f + expf(-v)); break;
        case 2: r = tanhf(v); break;
        case 3: r = v / (1.0f + expf(-v)); break;
        case 4: r = v * sbnn_clamp06(v + 3.0f) / 6.0f; break;
        default: r = sbnn_clamp06(v + 3.0f) / 6.0f; break;
        }
        y[i] = r;
    }
}
"""
_SOFTMAX_C = """
static void sbnn_softmax(const float *x, float *y, int c, int hw)
{
    int p, k;
    for (p = 0; p < hw; ++p) {
        float m = x[p], sum = 0.0f;
        for (k = 1; k < c; ++k)
            m = x[k * hw + p] > m ? x[k * hw + p] : m;
        for (k = 0; k < c; ++k) {
            const float e = expf(x[k * hw + p] - m);
            y[k * hw + p] = e;
            sum += e;
        }
        for (k = 0; k < c; ++k)
            y[k * hw + p] /= sum;
    }
}
"""
ACTIVATION_KINDS = ("leaky_relu", "sigmoid", "tanh", "silu", "hardswish", "hardsigmoid")


def _activation_shape(nd: Node, ins: list[Shape], where: str) -> Shape:
    if nd.attrs["kind"] not in ACTIVATION_KINDS:
        raise _err(f"{where}: unknown activation kind {nd.attrs['kind']!r}; known: "
                   f"{', '.join(ACTIVATION_KINDS)}")
    return ins[0]


def _activation_reference(nd: Node, x: list[np.ndarray]) -> np.ndarray:
    v, kind = x[0].astype(np.float32), nd.attrs["kind"]
    one, six = np.float32(1), np.float32(6)
    with np.errstate(over="ignore"):
        sig = one / (one + np.exp(-v))
    y = {"leaky_relu": lambda: np.where(v >= 0, v, np.float32(nd.attrs["alpha"]) * v),
         "sigmoid": lambda: sig,
         "tanh": lambda: np.tanh(v),
         "silu": lambda: v * sig,
         "hardswish": lambda: v * np.clip(v + 3, 0, six) / six,
         "hardsigmoid": lambda: np.clip(v + 3, 0, six) / six}[kind]()
    return y.astype(np.float32)


def _activation_onnx(ctx, nd: Node, ins: list[str], out: str) -> None:
    kind = nd.attrs["kind"]
    if kind == "leaky_relu":
        ctx.node("LeakyRelu", ins, [out], alpha=float(nd.attrs["alpha"]))
    elif kind == "silu":
        s = ctx.tmp("sig")
        ctx.node("Sigmoid", ins, [s])
        ctx.node("Mul", [ins[0], s], [out])
    elif kind == "hardsigmoid":
        ctx.node("HardSigmoid", ins, [out], alpha=1.0 / 6.0, beta=0.5)
    else:
        ctx.node({"sigmoid": "Sigmoid", "tanh": "Tanh", "hardswish": "HardSwish"}[kind], ins,
                 [out])


_register(OpSpec(
    "activation", 1, {"kind": str, "alpha": _F}, {},
    shape=_activation_shape, reference=_activation_reference,
    lower_native=lambda eng, nd, src, opt: eng.activation(
        src[0], ACTIVATION_KINDS.index(nd.attrs["kind"]), nd.attrs["alpha"]),
    lower_onnx=_activation_onnx, macs=_elementwise,
    c_inplace=True,
    c_source=_ACTIVATION_C,
    lower_c=lambda cn: (f"sbnn_activation({cn.x[0]}, {cn.y}, "
                        f"{ACTIVATION_KINDS.index(cn.node.attrs['kind'])}, "
                        f"{cn.flt(cn.node.attrs['alpha'])}, {math.prod(cn.out)});"),
))


def _softmax_reference(nd: Node, x: list[np.ndarray]) -> np.ndarray:
    v = x[0].astype(np.float32)
    e = np.exp(v - v.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


_register(OpSpec(
    "softmax", 1, {}, {},
    shape=_same, reference=_softmax_reference,
    lower_native=lambda eng, nd, src, opt: eng.softmax(src[0]),
    lower_onnx=lambda ctx, nd, ins, out: ctx.node("Softmax", ins, [out], axis=1),
    macs=_elementwise,
    c_source=_SOFTMAX_C,
    lower_c=lambda cn: (f"sbnn_softmax({cn.x[0]}, {cn.y}, {cn.out[0]}, "
                        f"{math.prod(cn.out) // cn.out[0]});"),
))


def _rprelu_reference(nd: Node, x: list[np.ndarray]) -> np.ndarray:
    P = nd.params
    z = x[0] - _cview(P["shift_in"], x[0])
    return np.where(z >= 0, z, z * _cview(P["slope"], x[0])) + _cview(P["shift_out"], x[0])


def _rprelu_onnx(ctx, nd: Node, ins: list[str], out: str) -> None:
    P = nd.params
    z, pz = ctx.tmp("z"), ctx.tmp("pz")
    ctx.node("Sub", [ins[0], ctx.chan("si", P["shift_in"])], [z])
    ctx.node("PRelu", [z, ctx.chan("sl", P["slope"])], [pz])
    ctx.node("Add", [pz, ctx.chan("so", P["shift_out"])], [out])


_register(OpSpec(
    "rprelu", 1, {},
    {"shift_in": ("f32", True), "slope": ("f32", True), "shift_out": ("f32", True)},
    shape=_same_channels, reference=_rprelu_reference,
    lower_native=lambda eng, nd, src, opt: eng.rprelu(
        src[0], nd.params["shift_in"], nd.params["slope"], nd.params["shift_out"]),
    lower_onnx=_rprelu_onnx, macs=_elementwise,
    c_inplace=True,
    lower_c=lambda cn: "sbnn_rprelu({}, {}, {}, {}, {}, {}, {});".format(
        cn.x[0], cn.y, *(cn.farr(k, cn.node.params[k]) for k in ("shift_in", "slope", "shift_out")),
        cn.out[0], math.prod(cn.out) // cn.out[0]),
))


def _add_shape(nd: Node, ins: list[Shape], where: str) -> Shape:
    if ins[0] != ins[1]:
        raise _err(f"{where}: adds shapes {ins[0]} and {ins[1]}")
    return ins[0]


_register(OpSpec(
    "add", 2, {}, {},
    shape=_add_shape,
    reference=lambda nd, x: x[0] + x[1],
    lower_native=lambda eng, nd, src, opt: eng.add(src[0], src[1]),
    lower_onnx=lambda ctx, nd, ins, out: ctx.node("Add", ins, [out]),
    macs=_elementwise,
    c_inplace=True,
    lower_c=lambda cn: f"sbnn_add({cn.x[0]}, {cn.x[1]}, {cn.y}, {math.prod(cn.out)});",
))


ELTWISE_KINDS = ("mul", "add")  # the kind code of sbnn::Engine::eltwise and sbnn_eltwise


def _eltwise_shape(nd: Node, ins: list[Shape], where: str) -> Shape:
    a, b = ins
    if nd.attrs["kind"] not in ELTWISE_KINDS:
        raise _err(f"{where}: unknown kind {nd.attrs['kind']!r}; known: {', '.join(ELTWISE_KINDS)}")
    if b != a and not (len(a) == 3 and b == (a[0], 1, 1)):
        raise _err(f"{where}: cannot broadcast {b} to {a} (the second input must have the first's "
                   "shape or one value per channel, (C, 1, 1))")
    return a


def _eltwise_reference(nd: Node, x: list[np.ndarray]) -> np.ndarray:
    return (x[0] * x[1] if nd.attrs["kind"] == "mul" else x[0] + x[1]).astype(np.float32)


def _eltwise_c(cn) -> str:
    c, hw = cn.out[0], math.prod(cn.out) // cn.out[0]
    bhw = math.prod(cn.ins[1]) // c
    return (f"sbnn_eltwise({cn.x[0]}, {cn.x[1]}, {cn.y}, "
            f"{ELTWISE_KINDS.index(cn.node.attrs['kind'])}, {c}, {hw}, {bhw});")


_register(OpSpec(
    "eltwise", 2, {"kind": str}, {},
    shape=_eltwise_shape, reference=_eltwise_reference,
    lower_native=lambda eng, nd, src, opt: eng.eltwise(
        src[0], src[1], ELTWISE_KINDS.index(nd.attrs["kind"])),
    lower_onnx=lambda ctx, nd, ins, out: ctx.node(
        {"mul": "Mul", "add": "Add"}[nd.attrs["kind"]], ins, [out]),
    macs=_elementwise, lower_c=_eltwise_c,
))


def _concat_shape(nd: Node, ins: list[Shape], where: str) -> Shape:
    a, b = ins
    if len(a) != len(b) or a[1:] != b[1:]:
        raise _err(f"{where}: cannot join {a} and {b} along channels")
    return (a[0] + b[0],) + tuple(a[1:])


_register(OpSpec(
    "concat", 2, {}, {},
    shape=_concat_shape,
    reference=lambda nd, x: np.concatenate(x, axis=1),
    lower_native=lambda eng, nd, src, opt: eng.concat(src[0], src[1]),
    lower_onnx=lambda ctx, nd, ins, out: ctx.node("Concat", ins, [out], axis=1),
    lower_c=lambda cn: (f"sbnn_concat({cn.x[0]}, {cn.x[1]}, {cn.y}, {math.prod(cn.ins[0])}, "
                        f"{math.prod(cn.ins[1])});"),
))


# -- reshapes, channel shuffle, upsampling (issue 19) ---------------------------------------

def user_input_shape(node_shape: Shape, recorded: Any) -> Shape:
    """``recorded`` (a model's ``input_shape`` metadata) when it is (C, H, W), (C, L) or (F,)
    and runs as ``node_shape`` (the input node's (C, H, W)); else ``node_shape``."""
    if not isinstance(recorded, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in recorded):
        return tuple(node_shape)
    r = tuple(recorded)
    runs_as = {3: r, 2: r[:1] + (1,) + r[1:], 1: r + (1, 1)}.get(len(r))
    return r if runs_as == tuple(node_shape) else tuple(node_shape)


def _reshape_shape(nd: Node, ins: list[Shape], where: str) -> Shape:
    s = nd.attrs["shape"]
    if len(s) not in (1, 3) or not all(isinstance(v, int) and not isinstance(v, bool)
                                       and v >= 1 for v in s):
        raise _err(f"{where}: shape must be (F,) or (C, H, W) of positive ints, got {s}")
    if math.prod(s) != math.prod(ins[0]):
        raise _err(f"{where}: cannot reshape {ins[0]} to {tuple(s)}")
    return tuple(s)


def _reshape_native(eng, nd: Node, src: list[int], opt: dict) -> int:
    s = nd.attrs["shape"]
    return eng.reshape(src[0], *(s if len(s) == 3 else (s[0], 1, 1)), flat=len(s) == 1)


# The same values in another shape (an image as features, features as a 1x1 map): free in C (the
# output is its input's memory), a copy on the engine. The batch dimension never changes.
_register(OpSpec(
    "reshape", 1, {"shape": list}, {},
    shape=_reshape_shape,
    reference=lambda nd, x: x[0].reshape(x[0].shape[0], *nd.attrs["shape"]),
    lower_native=_reshape_native,
    lower_onnx=lambda ctx, nd, ins, out: ctx.node(
        "Reshape", [ins[0], ctx.ints("shape", [-1, *nd.attrs["shape"]])], [out]),
    lower_c=lambda cn: "/* reshape: aliases its input */", c_alias=True,
))


def _shuffle_shape(nd: Node, ins: list[Shape], where: str) -> Shape:
    c = _spatial(where, ins[0])[0]
    g = nd.attrs["groups"]
    if g < 1 or c % g:
        raise _err(f"{where}: {g} groups do not divide {c} channels")
    return ins[0]


def _shuffle_reference(nd: Node, x: list[np.ndarray]) -> np.ndarray:
    n, c, h, w = x[0].shape
    g = nd.attrs["groups"]
    return x[0].reshape(n, g, c // g, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)


def _shuffle_onnx(ctx, nd: Node, ins: list[str], out: str) -> None:
    c, h, w = ctx.shapes[ctx.i]
    g = nd.attrs["groups"]
    a, b = ctx.tmp("split"), ctx.tmp("swap")
    ctx.node("Reshape", [ins[0], ctx.ints("s5", [-1, g, c // g, h, w])], [a])
    ctx.node("Transpose", [a], [b], perm=[0, 2, 1, 3, 4])
    ctx.node("Reshape", [b, ctx.ints("s4", [-1, c, h, w])], [out])


# ShuffleNet's x.view(N, g, C // g, H, W).transpose(1, 2).reshape(N, C, H, W), the one
# permutation the tracer takes (it recognises the three calls)
_register(OpSpec(
    "channel_shuffle", 1, {"groups": _I}, {},
    shape=_shuffle_shape, reference=_shuffle_reference,
    lower_native=lambda eng, nd, src, opt: eng.channel_shuffle(src[0], nd.attrs["groups"]),
    lower_onnx=_shuffle_onnx,
    lower_c=lambda cn: (f"sbnn_channel_shuffle({cn.x[0]}, {cn.y}, {cn.out[0]}, "
                        f"{math.prod(cn.out) // cn.out[0]}, {cn.node.attrs['groups']});"),
))

UPSAMPLE_MODES = ("nearest", "bilinear")  # the mode code of sbnn::Engine::upsample, sbnn_upsample


def _upsample_shape(nd: Node, ins: list[Shape], where: str) -> Shape:
    c, h, w = _spatial(where, ins[0])
    A = nd.attrs
    if A["mode"] not in UPSAMPLE_MODES:
        raise _err(f"{where}: unknown mode {A['mode']!r}; known: {', '.join(UPSAMPLE_MODES)}")
    if not 1 <= A["scale"] <= 64:
        raise _err(f"{where}: scale {A['scale']} is not in 1..64")
    return (c, h * A["scale"], w * A["scale"])


def _bilinear_taps(n: int, scale: int, align_corners: bool):
    # per output position: source index, its neighbour, the neighbour's weight (float32 as
    # PyTorch's upsample_bilinear2d computes them)
    o = np.arange(n * scale, dtype=np.float32)
    if align_corners:
        r = np.float32(n - 1) / np.float32(n * scale - 1) if n * scale > 1 else np.float32(0)
        src = r * o
    else:
        src = np.maximum(np.float32(1.0 / scale) * (o + np.float32(0.5)) - np.float32(0.5),
                         np.float32(0))
    i0 = np.minimum(src.astype(np.int64), n - 1)
    return i0, np.minimum(i0 + 1, n - 1), (src - i0).astype(np.float32)


def _upsample_reference(nd: Node, x: list[np.ndarray]) -> np.ndarray:
    s, v = nd.attrs["scale"], x[0].astype(np.float32)
    _, _, h, w = v.shape
    if nd.attrs["mode"] == "nearest":
        return v.repeat(s, axis=2).repeat(s, axis=3)
    ac = nd.attrs["align_corners"]
    h0, h1, lh = _bilinear_taps(h, s, ac)
    w0, w1, lw = _bilinear_taps(w, s, ac)
    one = np.float32(1)
    lh, lw = lh[:, None], lw[None, :]
    r0, r1 = v[:, :, h0], v[:, :, h1]
    return ((one - lh) * ((one - lw) * r0[..., w0] + lw * r0[..., w1])
            + lh * ((one - lw) * r1[..., w0] + lw * r1[..., w1])).astype(np.float32)


def _upsample_onnx(ctx, nd: Node, ins: list[str], out: str) -> None:
    A = nd.attrs
    s = float(A["scale"])
    scales = ctx.const("scales", np.array([1, 1, s, s], np.float32))
    if A["mode"] == "nearest":
        kw = dict(mode="nearest", nearest_mode="floor", coordinate_transformation_mode="asymmetric")
    else:
        kw = dict(mode="linear", coordinate_transformation_mode="align_corners"
                  if A["align_corners"] else "pytorch_half_pixel")
    ctx.node("Resize", [ins[0], "", scales], [out], **kw)


def _upsample_macs(nd: Node, ins: list[Shape], out: Shape) -> int:
    return math.prod(out) * (4 if nd.attrs["mode"] == "bilinear" else 0)


# nn.Upsample / F.interpolate by an integer scale; align_corners matters to bilinear only
_register(OpSpec(
    "upsample", 1, {"scale": _I, "mode": str, "align_corners": _B}, {},
    shape=_upsample_shape, reference=_upsample_reference,
    lower_native=lambda eng, nd, src, opt: eng.upsample(
        src[0], nd.attrs["scale"], UPSAMPLE_MODES.index(nd.attrs["mode"]),
        nd.attrs["align_corners"]),
    lower_onnx=_upsample_onnx, macs=_upsample_macs,
    lower_c=lambda cn: (f"sbnn_upsample({cn.x[0]}, {cn.y}, {cn.ins[0][0]}, {cn.ins[0][1]}, "
                        f"{cn.ins[0][2]}, {cn.node.attrs['scale']}, "
                        f"{UPSAMPLE_MODES.index(cn.node.attrs['mode'])}, "
                        f"{int(cn.node.attrs['align_corners'])});"),
))


# -- pooling ---------------------------------------------------------------------------------
# A pool's window may be non-square and its padding asymmetric, with PyTorch's ceil_mode:
# ``k`` is an int or [kh, kw], ``stride`` an int or [sh, sw], ``pad`` an int, [ph, pw] or
# [top, left, bottom, right], ``ceil_mode`` (optional, default false) rounds the output size up
# (a last window must still start inside the input or its leading pad). An average counts the
# window's cells inside the padded input (count_include_pad) or inside the input; cells past the
# trailing pad, which only ceil_mode reaches, never count. Files written before these forms keep
# their int attributes and load unchanged.


@dataclass(frozen=True)
class PoolGeometry:
    """The window of a pooling node: kernel, stride, pads (top, left, bottom, right), ceil."""

    kh: int
    kw: int
    sh: int
    sw: int
    pt: int
    pl: int
    pb: int
    pr: int
    ceil: bool

    @property
    def simple(self) -> bool:
        """A square window with one stride and one pad and no ceil_mode (the pre-19 form)."""
        return (self.kh == self.kw and self.sh == self.sw and not self.ceil
                and self.pt == self.pl == self.pb == self.pr)


def _int_list(v: Any, sizes: tuple[int, ...], what: str, where: str) -> list[int]:
    vals = [v] if isinstance(v, int) and not isinstance(v, bool) else v
    if not isinstance(vals, (list, tuple)) or len(vals) not in sizes or not all(
            isinstance(e, int) and not isinstance(e, bool) and 0 <= e <= 1 << 16 for e in vals):
        raise _err(f"{where}: {what} must be an int or a list of {' or '.join(map(str, sizes))} "
                   f"small non-negative ints, got {v!r}")
    return list(vals)


def pool_geometry(nd: Node, where: str = "") -> PoolGeometry:
    """The :class:`PoolGeometry` of a ``maxpool`` / ``avgpool`` node (checks its attributes)."""
    A = nd.attrs
    k = _int_list(A["k"], (1, 2), "k", where)
    s = _int_list(A["stride"], (1, 2), "stride", where)
    p = _int_list(A["pad"], (1, 2, 4), "pad", where)
    kh, kw = k * (2 // len(k))
    sh, sw = s * (2 // len(s))
    pt, pl, pb, pr = p * (4 // len(p)) if len(p) != 2 else (p[0], p[1], p[0], p[1])
    return PoolGeometry(kh, kw, sh, sw, pt, pl, pb, pr, bool(A.get("ceil_mode", False)))


def _pool_out(n: int, k: int, s: int, p0: int, p1: int, ceil: bool, where: str) -> int:
    # PyTorch's rule, with the leading pad p0 and the trailing pad p1 (floor division: with
    # ceil_mode a window may be larger than the padded input when the stride reaches past it)
    if k < 1 or s < 1 or 2 * max(p0, p1) > k:
        raise _err(f"{where}: bad window k={k} stride={s} pad=({p0}, {p1}) (pads at most k/2)")
    out = (n + p0 + p1 - k + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= n + p0:
        out -= 1
    if out < 1:
        raise _err(f"{where}: window {k} with pads ({p0}, {p1}) does not fit input size {n}")
    return out


def _pool_shape(nd: Node, ins: list[Shape], where: str) -> Shape:
    c, h, w = _spatial(where, ins[0])
    g = pool_geometry(nd, where)
    return (c, _pool_out(h, g.kh, g.sh, g.pt, g.pb, g.ceil, where),
            _pool_out(w, g.kw, g.sw, g.pl, g.pr, g.ceil, where))


def _pool_macs(nd: Node, ins: list[Shape], out: Shape) -> int:
    g = pool_geometry(nd)
    return int(np.prod(out)) * g.kh * g.kw


_POOL_TAP_STEPS = 16  # a window tap of the engine's pools (bounds checks, scalar) in kernel steps


def _pool_work(nd: Node, ins: list[Shape], out: Shape) -> int:
    g = pool_geometry(nd)
    return (_POOL_TAP_STEPS * g.kh * g.kw + 1) * int(np.prod(out))


def _pool_counts(n: int, k: int, s: int, p0: int, p1: int, out: int, cip: bool) -> np.ndarray:
    # per output position along one axis: the window's cells that count in an average
    start = np.arange(out) * s - p0
    end = np.minimum(start + k, n + p1)
    if not cip:
        start, end = np.maximum(start, 0), np.minimum(end, n)
    return (end - start).astype(np.float32)


def _pool_windows(x: np.ndarray, g: PoolGeometry, out: Shape, fill: float) -> np.ndarray:
    from numpy.lib.stride_tricks import sliding_window_view

    _, _, h, w = x.shape
    # pad past the trailing pad too, where ceil_mode's last window reaches
    eb = max(0, (out[1] - 1) * g.sh + g.kh - (h + g.pt))
    er = max(0, (out[2] - 1) * g.sw + g.kw - (w + g.pl))
    x = np.pad(x, ((0, 0), (0, 0), (g.pt, eb), (g.pl, er)), constant_values=fill)
    v = sliding_window_view(x, (g.kh, g.kw), axis=(2, 3))[:, :, ::g.sh, ::g.sw]
    return v[:, :, :out[1], :out[2]]


def _avgpool_reference(nd: Node, x: list[np.ndarray]) -> np.ndarray:
    g = pool_geometry(nd)
    _, _, h, w = x[0].shape
    out = _pool_shape(nd, [x[0].shape[1:]], "avgpool")
    tot = _pool_windows(x[0], g, out, 0.0).sum(axis=(4, 5), dtype=np.float32)
    cip = nd.attrs["count_include_pad"]
    ch = _pool_counts(h, g.kh, g.sh, g.pt, g.pb, out[1], cip)
    cw = _pool_counts(w, g.kw, g.sw, g.pl, g.pr, out[2], cip)
    return (tot / np.outer(ch, cw)).astype(np.float32)


def _maxpool_reference(nd: Node, x: list[np.ndarray]) -> np.ndarray:
    g = pool_geometry(nd)
    out = _pool_shape(nd, [x[0].shape[1:]], "maxpool")
    return _pool_windows(x[0], g, out, -np.inf).max(axis=(4, 5))


def _pool_c(cn) -> str:
    (c, h, w), A = cn.ins[0], cn.node.attrs
    g = pool_geometry(cn.node)
    cip = int(bool(A.get("count_include_pad", True)))
    return (f"sbnn_pool2d({cn.x[0]}, {cn.y}, {c}, {h}, {w}, {g.kh}, {g.kw}, {g.sh}, {g.sw}, "
            f"{g.pt}, {g.pl}, {g.pb}, {g.pr}, {cn.out[1]}, {cn.out[2]}, "
            f"{int(cn.node.op == 'maxpool')}, {cip});")


def _pool_c_epilogue(is_max: int):
    # a conv's epilogue pools with the square, symmetric, floor-mode window of sbnn_epi only
    # (passes.fuse_pool_residual fuses no other)
    def fields(nd: Node, out: Shape) -> list[int]:
        g = pool_geometry(nd)
        return [g.kh, g.sh, g.pt, out[1], out[2], is_max,
                int(bool(nd.attrs.get("count_include_pad", True)))]
    return fields


def _pool_onnx(op_type: str):
    def lower(ctx, nd: Node, ins: list[str], out: str) -> None:
        A = nd.attrs
        g = pool_geometry(nd)
        kw = dict(kernel_shape=[g.kh, g.kw], strides=[g.sh, g.sw],
                  pads=[g.pt, g.pl, g.pb, g.pr])
        if g.ceil:
            kw["ceil_mode"] = 1
        if "count_include_pad" in A:
            kw["count_include_pad"] = int(A["count_include_pad"])
        ctx.node(op_type, ins, [out], **kw)
    return lower


def _pool_native(eng, nd: Node, src: list[int], opt: dict) -> int:
    g = pool_geometry(nd)
    geom = (g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.pb, g.pr, g.ceil)
    return eng.pool2d(src[0], nd.op == "maxpool", *geom,
                      nd.attrs.get("count_include_pad", True))


_register(OpSpec(
    "avgpool", 1,
    {"k": INTS, "stride": INTS, "pad": INTS, "count_include_pad": _B, "ceil_mode": _B},
    {},
    shape=_pool_shape, reference=_avgpool_reference,
    lower_native=_pool_native,
    lower_onnx=_pool_onnx("AveragePool"), macs=_pool_macs, work=_pool_work, lower_c=_pool_c,
    c_epilogue=_pool_c_epilogue(0), optional_attrs=("ceil_mode",),
))

_register(OpSpec(
    "maxpool", 1, {"k": INTS, "stride": INTS, "pad": INTS, "ceil_mode": _B}, {},
    shape=_pool_shape, reference=_maxpool_reference,
    lower_native=_pool_native,
    lower_onnx=_pool_onnx("MaxPool"), macs=_pool_macs, work=_pool_work, lower_c=_pool_c,
    c_epilogue=_pool_c_epilogue(1), optional_attrs=("ceil_mode",),
))


def _gap_shape(nd: Node, ins: list[Shape], where: str) -> Shape:
    return (_spatial(where, ins[0])[0], 1, 1)


_register(OpSpec(
    "global_avgpool", 1, {}, {},
    shape=_gap_shape,
    reference=lambda nd, x: x[0].mean(axis=(2, 3), keepdims=True, dtype=np.float32),
    lower_native=lambda eng, nd, src, opt: eng.global_avgpool(src[0]),
    lower_onnx=lambda ctx, nd, ins, out: ctx.node("GlobalAveragePool", ins, [out]),
    macs=lambda nd, ins, out: int(np.prod(ins[0])),
    lower_c=lambda cn: (f"sbnn_global_avgpool({cn.x[0]}, {cn.y}, {cn.ins[0][0]}, "
                  f"{cn.ins[0][1] * cn.ins[0][2]});"),
))

_register(OpSpec(
    "flatten", 1, {}, {},
    shape=lambda nd, ins, where: (int(np.prod(ins[0])),),
    reference=lambda nd, x: x[0].reshape(x[0].shape[0], -1),
    lower_native=lambda eng, nd, src, opt: eng.flatten(src[0]),
    lower_onnx=lambda ctx, nd, ins, out: ctx.node("Flatten", ins, [out], axis=1),
    lower_c=lambda cn: "/* flatten: aliases its input */", c_alias=True,
))


def _linear_shape(nd: Node, ins: list[Shape], where: str) -> Shape:
    wt = nd.params["weight"]
    if len(ins[0]) != 1 or wt.ndim != 2 or wt.shape[1] != ins[0][0] or wt.shape[0] < 1:
        raise _err(f"{where}: weight {wt.shape} does not fit a flat input {ins[0]}")
    if "bias" in nd.params:
        _expect(where, "bias", nd.params["bias"], (wt.shape[0],))
    return (wt.shape[0],)


def _linear_reference(nd: Node, x: list[np.ndarray]) -> np.ndarray:
    y = x[0] @ nd.params["weight"].T
    if "bias" in nd.params:
        y = y + nd.params["bias"]
    return y.astype(np.float32)


def _linear_onnx(ctx, nd: Node, ins: list[str], out: str) -> None:
    args = [ins[0], ctx.const("w", nd.params["weight"])]
    if "bias" in nd.params:
        args.append(ctx.const("b", nd.params["bias"]))
    ctx.node("Gemm", args, [out], transB=1)


_register(OpSpec(
    "linear", 1, {}, {"weight": ("f32", True), "bias": ("f32", False)},
    shape=_linear_shape, reference=_linear_reference,
    lower_native=lambda eng, nd, src, opt: eng.linear(
        src[0], nd.params["weight"], nd.params.get("bias")),
    lower_onnx=_linear_onnx,
    macs=lambda nd, ins, out: int(nd.params["weight"].size),
    lower_c=lambda cn: "sbnn_linear({}, {}, {}, {}, {}, {});".format(
        cn.x[0], cn.y, cn.farr("w", cn.node.params["weight"]),
        cn.farr("b", cn.node.params.get("bias")), *cn.node.params["weight"].shape),
    int8=lambda nd, s, z: _int8_twin(nd, s, z),
))


# -- int8 twins of the layers kept in float (qconv2d, qlinear) --------------------------------
# Per-output-channel symmetric int8 weights (`weight` i8, `w_scale` f32), the input quantised
# per tensor to uint8 (`x_scale`, `x_zero` attributes), an exact int32 sum and a float32 output
# (sbnn_runtime.qkernels states the arithmetic; every backend follows it). The passes make
# them from conv2d / linear nodes (OpSpec.int8, sbnn_runtime.quantize), nothing else does.

def _int8_twin(nd: Node, x_scale: float, x_zero: int) -> Node:
    w, ws = qkernels.quantize_weight(nd.params["weight"])
    params = {"weight": w, "w_scale": ws}
    if "bias" in nd.params:
        params["bias"] = np.asarray(nd.params["bias"], np.float32)
    attrs = {"x_scale": float(np.float32(x_scale)), "x_zero": int(x_zero)}
    if w.ndim == 4:
        attrs.update({k: nd.attrs[k] for k in ("stride", "padding", "dilation", "groups")
                      if k in nd.attrs})
        return Node("qconv2d", list(nd.inputs), attrs, params, nd.name)
    return Node("qlinear", list(nd.inputs), attrs, params, nd.name)


def _qcheck(where: str, nd: Node, k: int) -> None:
    if not 0 <= nd.attrs["x_zero"] <= 255:
        raise _err(f"{where}: x_zero {nd.attrs['x_zero']} is not in [0, 255]")
    if not nd.attrs["x_scale"] > 0:
        raise _err(f"{where}: x_scale must be > 0, got {nd.attrs['x_scale']}")
    if k > qkernels.MAX_K:
        raise _err(f"{where}: {k} taps per output could overflow the int32 sum "
                   f"(at most {qkernels.MAX_K})")


def _qconv_shape(nd: Node, ins: list[Shape], where: str) -> Shape:
    c, h, w = _spatial(where, ins[0])
    P = nd.params
    wt = P["weight"]
    sh, sw, pt, pl, pb, pr, dh, dw, g = conv_geometry(nd)
    if wt.ndim != 4 or g < 1 or c % g or wt.shape[0] % g or wt.shape[1] * g != c:
        raise _err(f"{where}: weight shape {wt.shape} in {g} group(s) does not take {c} input "
                   "channels")
    co, cig, kh, kw = wt.shape
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if min(co, kh, kw, sh, sw, dh, dw) < 1 or max(pt, pb) >= ekh or max(pl, pr) >= ekw:
        raise _err(f"{where}: bad kernel {kh}x{kw}, stride {sh}x{sw}, dilation {dh}x{dw} or "
                   f"padding {(pt, pl, pb, pr)}")
    oh, ow = (h + pt + pb - ekh) // sh + 1, (w + pl + pr - ekw) // sw + 1
    if min(oh, ow) < 1:
        raise _err(f"{where}: kernel {kh}x{kw} does not fit input {h}x{w}")
    _expect(where, "w_scale", P["w_scale"], (co,))
    if "bias" in P:
        _expect(where, "bias", P["bias"], (co,))
    _qcheck(where, nd, cig * kh * kw)
    return (co, oh, ow)


def _qconv_reference(nd: Node, x: list[np.ndarray]) -> np.ndarray:
    P, A = nd.params, nd.attrs
    sh, sw, pt, pl, pb, pr, dh, dw, g = conv_geometry(nd)
    return qkernels.qconv2d_reference(x[0], P["weight"], P["w_scale"], P.get("bias"),
                                      A["x_scale"], A["x_zero"], (sh, sw), (pt, pl, pb, pr),
                                      (dh, dw), g)


def _qconv_native(eng, nd: Node, src: list[int], opt: dict) -> int:
    P, A = nd.params, nd.attrs
    sh, sw, pt, pl, pb, pr, dh, dw, g = conv_geometry(nd)
    return eng.qconv2d(src[0], P["weight"], qkernels.out_scale(A["x_scale"], P["w_scale"]),
                       P.get("bias"), A["x_scale"], A["x_zero"], [sh, sw], [pt, pl, pb, pr],
                       [dh, dw], g, opt.get("impl", "auto"))


def _qlinear_native(eng, nd: Node, src: list[int], opt: dict) -> int:
    P, A = nd.params, nd.attrs
    return eng.qlinear(src[0], P["weight"], qkernels.out_scale(A["x_scale"], P["w_scale"]),
                       P.get("bias"), A["x_scale"], A["x_zero"], opt.get("impl", "auto"))


def _onnx_qdq(ctx, nd: Node, x: str) -> tuple[str, str]:
    # QuantizeLinear -> DequantizeLinear on the input (round half to even, saturate: the same
    # uint8 as the engine's), DequantizeLinear on the int8 weight, per output channel
    P, A = nd.params, nd.attrs
    s = ctx.const("xs", np.float32(A["x_scale"]))
    z = ctx.const("xz", np.uint8(A["x_zero"]), dtype=np.uint8)
    q, dq, wf = ctx.tmp("xq"), ctx.tmp("xdq"), ctx.tmp("wdq")
    ctx.node("QuantizeLinear", [x, s, z], [q])
    ctx.node("DequantizeLinear", [q, s, z], [dq])
    co = P["weight"].shape[0]
    ctx.node("DequantizeLinear", [ctx.const("wq", P["weight"], dtype=np.int8),
                                  ctx.const("ws", P["w_scale"]),
                                  ctx.const("wz", np.zeros(co, np.int8), dtype=np.int8)],
             [wf], axis=0)
    return dq, wf


def _qconv_onnx(ctx, nd: Node, ins: list[str], out: str) -> None:
    dq, wf = _onnx_qdq(ctx, nd, ins[0])
    sh, sw, pt, pl, pb, pr, dh, dw, g = conv_geometry(nd)
    args = [dq, wf] + ([ctx.const("b", nd.params["bias"])] if "bias" in nd.params else [])
    ctx.node("Conv", args, [out], kernel_shape=list(nd.params["weight"].shape[2:]),
             strides=[sh, sw], pads=[pt, pl, pb, pr], dilations=[dh, dw], group=g)


def _qlinear_onnx(ctx, nd: Node, ins: list[str], out: str) -> None:
    dq, wf = _onnx_qdq(ctx, nd, ins[0])
    args = [dq, wf] + ([ctx.const("b", nd.params["bias"])] if "bias" in nd.params else [])
    ctx.node("Gemm", args, [out], transB=1)


def _qconv_c(cn) -> str:
    # x: (ci, h, w) float -> y: (co, oh, ow) float; the uint8 input lives in the scratch xq
    nd, (ci, h, w), (co, oh, ow) = cn.node, cn.ins[0], cn.out
    P, A = nd.params, nd.attrs
    _, _, kh, kw = P["weight"].shape
    sh, sw, pt, pl, pb, pr, dh, dw, g = conv_geometry(nd)
    wq = cn.em.uarr(f"L{cn.index}_wq", "int8_t", 1, P["weight"])
    geo = f"{ci}, {h}, {w}, {co}, {kh}, {kw}, {sh}, {sw}, {pt}, {pl}, {dh}, {dw}, {g}, {oh}, {ow}"
    ithr = cn.plan.memory.ithr.get(cn.index)
    if ithr is not None:  # folded into its readers' binarisation (passes.int8_thresholds)
        pad = cn.plan.memory.binmaps[cn.step.output][1]
        t = cn.em.uarr(f"L{cn.index}_ithr", "int32_t", 4, ithr)
        return (f"sbnn_qconv2d({cn.x[0]}, {cn.y}, {wq}, 0, 0, {cn.flt(A['x_scale'])}, "
                f"{A['x_zero']}, {geo}, (uint8_t *){cn.scratch('xq')}, {t}, {pad}, 0, 0, 0, 0);")
    return (f"sbnn_qconv2d({cn.x[0]}, {cn.y}, {wq}, "
            f"{cn.farr('scale', qkernels.out_scale(A['x_scale'], P['w_scale']))}, "
            f"{cn.farr('b', P.get('bias'))}, {cn.flt(A['x_scale'])}, {A['x_zero']}, {geo}, "
            f"(uint8_t *){cn.scratch('xq')}, 0, 0, {cn.epilogue()});")


def _qlinear_c(cn) -> str:
    nd = cn.node
    P, A = nd.params, nd.attrs
    o, n = P["weight"].shape
    wq = cn.em.uarr(f"L{cn.index}_wq", "int8_t", 1, P["weight"])
    return (f"sbnn_qconv2d({cn.x[0]}, {cn.y}, {wq}, "
            f"{cn.farr('scale', qkernels.out_scale(A['x_scale'], P['w_scale']))}, "
            f"{cn.farr('b', P.get('bias'))}, {cn.flt(A['x_scale'])}, {A['x_zero']}, "
            f"{n}, 1, 1, {o}, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, (uint8_t *){cn.scratch('xq')}, "
            "0, 0, 0, 0, 0, 0);")


def _qlinear_shape(nd: Node, ins: list[Shape], where: str) -> Shape:
    wt = nd.params["weight"]
    if len(ins[0]) != 1 or wt.ndim != 2 or wt.shape[1] != ins[0][0] or wt.shape[0] < 1:
        raise _err(f"{where}: weight {wt.shape} does not fit a flat input {ins[0]}")
    _expect(where, "w_scale", nd.params["w_scale"], (wt.shape[0],))
    if "bias" in nd.params:
        _expect(where, "bias", nd.params["bias"], (wt.shape[0],))
    _qcheck(where, nd, wt.shape[1])
    return (wt.shape[0],)


def _qconv_workspace(nd: Node, ins: list[Shape], out: Shape) -> int:
    # the engine's uint8 input, its uint8 columns (taps padded to 64) and the int32 sums
    co, cig, kh, kw = nd.params["weight"].shape
    p = out[1] * out[2]
    groups = conv_geometry(nd)[8]
    return math.prod(ins[0]) + p * (-(-cig * kh * kw // 64) * 64) * groups + 4 * co * p


def _q_c_scratch(nd: Node, ins: list[Shape], out: Shape, in_map: bool) -> dict[str, int]:
    return {"xq": (math.prod(ins[0]) + 3) // 4}  # the uint8 input, four to a cell


_QATTRS = {"x_scale": _F, "x_zero": _I}

_register(OpSpec(
    "qconv2d", 1, {**_CONV_ATTRS, **_QATTRS},
    {"weight": ("i8", True), "w_scale": ("f32", True), "bias": ("f32", False)},
    shape=_qconv_shape, reference=_qconv_reference, lower_native=_qconv_native,
    lower_onnx=_qconv_onnx, lower_c=_qconv_c,
    macs=lambda nd, ins, out: math.prod(out) * math.prod(nd.params["weight"].shape[1:]),
    workspace=_qconv_workspace, c_scratch=_q_c_scratch, optional_attrs=("dilation", "groups"),
))

_register(OpSpec(
    "qlinear", 1, dict(_QATTRS),
    {"weight": ("i8", True), "w_scale": ("f32", True), "bias": ("f32", False)},
    shape=_qlinear_shape,
    reference=lambda nd, x: qkernels.qlinear_reference(
        x[0], nd.params["weight"], nd.params["w_scale"], nd.params.get("bias"),
        nd.attrs["x_scale"], nd.attrs["x_zero"]),
    lower_native=_qlinear_native, lower_onnx=_qlinear_onnx, lower_c=_qlinear_c,
    macs=lambda nd, ins, out: int(nd.params["weight"].size),
    workspace=lambda nd, ins, out: 64 * (-(-ins[0][0] // 64)) + 4 * out[0] + ins[0][0],
    c_scratch=_q_c_scratch,
))


def _input_shape(nd: Node, ins: list[Shape], where: str) -> Shape:
    s = nd.attrs["shape"]
    if len(s) != 3 or not all(isinstance(v, int) and not isinstance(v, bool)
                              and 1 <= v <= 1 << 16 for v in s):
        raise _err(f"{where}: input shape must be 3 positive ints (C, H, W), got {s}")
    return tuple(s)


def _no_lowering(ctx, nd, ins, out):  # pragma: no cover - the input is the graph's input
    raise ValueError("the input node has no lowering")


_register(OpSpec(
    "input", 0, {"shape": list}, {},
    shape=_input_shape,
    reference=lambda nd, x: x[0],
    lower_native=lambda eng, nd, src, opt: eng.input(*nd.attrs["shape"]),
    lower_onnx=_no_lowering,
))


# -- checking and running a graph ------------------------------------------------------------

def _check_node(i: int, nd: Node) -> OpSpec:
    """The checks every op shares: inputs, attribute types, parameter dtypes."""
    where = f"node {i} ({nd.op} {nd.name!r})"
    spec = OPS.get(nd.op)
    if spec is None:
        raise _err(f"{where}: unknown op; known ops: {', '.join(OPS)}")
    if (i == 0) != (nd.op == "input"):
        raise _err(f"{where}: node 0 and only node 0 is the input")
    if len(nd.inputs) != spec.inputs or any(
        not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < i for j in nd.inputs
    ):
        raise _err(f"{where}: needs {spec.inputs} input(s) among earlier nodes, got {nd.inputs}")
    for a, t in spec.attrs.items():
        v = nd.attrs.get(a)
        if v is None and a in spec.optional_attrs:
            continue
        if t is INTS:  # an int or a list of ints: the op's shape rule checks the values
            if not _int_or_ints(v):
                raise _err(f"{where}: attribute {a!r} must be an int or a list of ints, got "
                           f"{v!r}")
            continue
        ok = isinstance(v, t) and not (t is int and isinstance(v, bool))
        if t is float and isinstance(v, int) and not isinstance(v, bool):
            ok = True
        if ok and t is int and not 0 <= v <= 1 << 16:
            ok = False  # strides, paddings, windows: small non-negative ints
        if ok and t is float and not abs(v) <= _F32_MAX:
            ok = False  # NaN, inf, and numbers float32 cannot hold (a 400-digit int literal)
        if not ok:
            raise _err(f"{where}: attribute {a!r} must be {t.__name__}, got {v!r}")
    for p, (dt, required) in spec.params.items():
        arr = nd.params.get(p)
        if arr is None:
            if required:
                raise _err(f"{where}: missing param {p!r}")
            continue
        if not isinstance(arr, np.ndarray) or arr.dtype != DTYPES[dt]:
            raise _err(f"{where}: param {p!r} must be a {dt} array")
    extra = set(nd.params) - set(spec.params)
    if extra:
        raise _err(f"{where}: unexpected params {sorted(extra)}")
    return spec


def lowering(graph: Graph, backend: str) -> list[Callable[..., Any] | None]:
    """Per node, its op's lowering for ``backend`` (``"native"``, ``"onnx"`` or ``"c"``); raises
    :class:`ValueError` naming the first node (after the input) whose op has none."""
    out: list[Callable[..., Any] | None] = [getattr(OPS["input"], f"lower_{backend}")]
    for i, nd in enumerate(graph.nodes[1:], start=1):
        fn = getattr(OPS[nd.op], f"lower_{backend}")
        if fn is None:
            raise ValueError(f"node {i} ({nd.op} {nd.name!r}): op {nd.op!r} has no {backend} "
                             "lowering")
        out.append(fn)
    return out


def infer_shapes(graph: Graph) -> list[Shape]:
    """Check every node against its inputs and return the per-node shapes (no batch dim).

    Raises :class:`SBNNFormatError` naming the node when anything is inconsistent, so the
    native engine only ever sees graphs whose parameter shapes match their inputs.
    """
    nodes = graph.nodes
    if not nodes:
        raise _err("graph has no nodes")
    shapes: list[Shape] = []
    for i, nd in enumerate(nodes):
        spec = _check_node(i, nd)
        out = spec.shape(nd, [shapes[j] for j in nd.inputs], f"node {i} ({nd.op} {nd.name!r})")
        if int(np.prod(out)) > MAX_ELEMS:
            raise _err(f"node {i} ({nd.op} {nd.name!r}): output of {out} elements is too large")
        shapes.append(tuple(out))
    if not isinstance(graph.output, int) or isinstance(graph.output, bool) or \
            not 0 <= graph.output < len(nodes):
        raise _err(f"output {graph.output!r} is not a node index")
    return shapes


def graph_macs(graph: Graph) -> list[int]:
    """Multiply-accumulates per image of every node (binary ones for binary convs)."""
    shapes = infer_shapes(graph)
    return [OPS[nd.op].macs(nd, [shapes[j] for j in nd.inputs], shapes[i])
            for i, nd in enumerate(graph.nodes)]


def reference_forward(graph: Graph, x: np.ndarray, profile: bool = False):
    """Run ``graph`` with the numpy reference of every op: ``x (N, C, H, W) -> (N, ...)``.

    With ``profile``, returns ``(y, [(op:name, seconds), ...])``.
    """
    import time

    vals: list[np.ndarray | None] = [np.ascontiguousarray(x, dtype=np.float32)]
    last_use = {j: i for i, nd in enumerate(graph.nodes) for j in nd.inputs}
    times = []
    for i, nd in enumerate(graph.nodes[1:], start=1):
        t0 = time.perf_counter()
        y = OPS[nd.op].reference(nd, [vals[j] for j in nd.inputs])
        vals.append(np.ascontiguousarray(y, dtype=np.float32))
        times.append((f"{nd.op}:{nd.name}", time.perf_counter() - t0))
        for j in nd.inputs:  # free activations nobody reads again
            if last_use.get(j) == i and j != graph.output:
                vals[j] = None
    y = vals[graph.output]
    return (y, times) if profile else y


# -- what a graph costs, and the limits a loader holds it to ---------------------------------

DEFAULT_MAX_MACS = 3 * 10**10  # kernel steps per image: seconds of run time (docs/HARDENING.md)
DEFAULT_MAX_MEMORY = 4 << 30  # bytes, at the batch being run


@dataclass(frozen=True)
class GraphCost:
    """What running a graph costs, from its shapes alone (see :func:`graph_cost`).

    ``macs``: multiply-accumulates per image (``node_macs`` per node); ``work``: kernel steps
    per image (``node_work``; what the native kernels really iterate, see
    :mod:`sbnn_runtime.kernel_costs`), the quantity ``max_macs`` bounds; ``param_bytes``: the
    decoded parameters; ``engine_param_bytes``: those plus what the native engine builds from
    them (its copies, sparse offsets, packed weights, border tables); ``activation_bytes``: per
    image, the arena of the native engine's memory plan (:func:`sbnn_runtime.passes.plan_buffers`,
    the very plan the engine allocates from) plus the output handed back; ``workspace_bytes``:
    the largest kernel scratch of one thread. Built by :func:`sbnn_runtime.passes.graph_cost`.
    """

    macs: int
    node_macs: tuple[int, ...]
    param_bytes: int
    engine_param_bytes: int
    activation_bytes: int
    workspace_bytes: int
    work: int = 0
    node_work: tuple[int, ...] = ()

    def memory(self, batch: int = 1, threads: int = 1) -> int:
        """Bytes an engine needs to run ``batch`` images with ``threads`` threads (a bound)."""
        return (self.engine_param_bytes + batch * self.activation_bytes
                + max(threads, 1) * self.workspace_bytes)


def _amount(value: Any, name: str, unit: int) -> float:
    """A positive limit: a number, ``math.inf`` (no limit) or a string such as ``"8G"``."""
    if isinstance(value, str):
        text = value.strip().upper().removesuffix("B").removesuffix("I")
        scale = 1
        if text and text[-1] in "KMGT":
            scale = unit ** ("KMGT".index(text[-1]) + 1)
            text = text[:-1]
        try:
            value = float(text) * scale
        except ValueError:
            raise ValueError(f"{name}={value!r} is not a number (e.g. 8e9, 8G or inf)") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}={value!r}: must be a positive number (math.inf: no limit)")
    return value


@dataclass(frozen=True)
class Limits:
    """The most work and memory a loader lets one model take; past them it raises
    :class:`SBNNLimitError` before decoding or allocating anything.

    ``max_macs``: kernel steps per image (multiply-accumulates and the rest of what the native
    kernels iterate, :attr:`GraphCost.work`; default :data:`DEFAULT_MAX_MACS`, 3e10, seconds);
    ``max_memory``: bytes for parameters, activations and kernel scratch at the batch being run
    (default :data:`DEFAULT_MAX_MEMORY`, 4 GiB). Both defaults fit our CIFAR-style ResNet-18
    (``resnet18_irnet``) at 224x224 with room to spare (27.3 GMACs, about 154 MiB at batch 1,
    37 MiB more per image). Raise them on purpose for a model you
    trust: ``sbnn_runtime.load(path, max_macs=1e12, max_memory="16G")``, or ``$SBNN_MAX_MACS``
    / ``$SBNN_MAX_MEMORY`` (numbers, ``K/M/G/T`` suffixes, ``inf`` for no limit).
    """

    max_macs: float = DEFAULT_MAX_MACS
    max_memory: float = DEFAULT_MAX_MEMORY

    @classmethod
    def resolve(cls, max_macs: Any = None, max_memory: Any = None) -> Limits:
        """Arguments first, then ``$SBNN_MAX_MACS`` / ``$SBNN_MAX_MEMORY``, then the defaults."""
        import os

        def pick(arg: Any, env: str, default: int, unit: int) -> float:
            if arg is not None:
                return _amount(arg, env.removeprefix("SBNN_").lower(), unit)
            text = os.environ.get(env)
            return default if text is None else _amount(text, f"${env}", unit)

        return cls(pick(max_macs, "SBNN_MAX_MACS", DEFAULT_MAX_MACS, 1000),
                   pick(max_memory, "SBNN_MAX_MEMORY", DEFAULT_MAX_MEMORY, 1024))

    def check(self, cost: GraphCost, batch: int = 1, threads: int = 1,
              what: str = "the model") -> None:
        """Raise :class:`SBNNLimitError` when ``cost`` at ``batch`` exceeds a limit."""
        if cost.work > self.max_macs:
            top = max(range(len(cost.node_work)), key=cost.node_work.__getitem__)
            raise SBNNLimitError(
                f"{what} needs {cost.work / 1e9:.4g} G kernel steps per image (multiply-"
                f"accumulates and the kernels' other work; node {top}: "
                f"{cost.node_work[top] / 1e9:.4g} G), above the limit of "
                f"{self.max_macs / 1e9:.4g} G; if you trust it, raise max_macs (e.g. "
                "sbnn_runtime.load(path, max_macs=...)) or $SBNN_MAX_MACS")
        need = cost.memory(batch, threads)
        if need > self.max_memory:
            mib = 1 << 20
            raise SBNNLimitError(
                f"{what} needs about {need / mib:.1f} MiB at batch {batch} (parameters "
                f"{cost.engine_param_bytes / mib:.1f}, activations "
                f"{batch * cost.activation_bytes / mib:.1f}, kernel scratch "
                f"{max(threads, 1) * cost.workspace_bytes / mib:.1f}), above the "
                f"limit of {self.max_memory / mib:.1f} MiB; run smaller batches or, if you trust "
                "it, raise max_memory (e.g. sbnn_runtime.load(path, max_memory=...)) or "
                "$SBNN_MAX_MEMORY")
