"""Graph passes, written once for every backend: folding, fusion, weight encodings, memory.

Each pass is a plain function of a :class:`~sbnn_runtime.ops.Graph` (and what earlier passes
returned); none of them knows a backend. The backends (the native engine, the C99 generator,
ONNX) consume what :func:`plan` puts together and decide nothing of this on their own::

    Plan                                  (what a backend runs)
      graph      Graph                    the graph after the folding passes
      shapes     list[Shape]              per node, one image, no batch dimension
      steps      list[Step]               in run order; one kernel call each
      encodings  dict[int, Encoding]      per binary conv node: how its 0/1 weights are stored
      memory     Memory                   where every tensor lives (plan_buffers), below
      buffers    dict[int, Buffer]        memory.buffers: per buffer, size, lifetime, offset
      arena      int                      memory.arena: cells (4 bytes, one image) placed

    Step                                  (one op, with the ops fused into its epilogue)
      node       int                      the node whose op runs (the anchor: a conv, ...)
      fused      tuple[int, ...]          later nodes folded into it, in order (add, hardtanh,
                                          rprelu for the engine; a pooling or add for C)
      inputs     tuple[int, ...]          tensors read: the anchor's inputs, then the residual
      output     int                      the tensor written: the last fused node's, or node
      residual   int | None               the add's other operand, when an add is fused

    Encoding                              (storage of one binary conv's bits)
      kind       str                      "gap8", "idx8", "idx16", "idx32" or "packed"
      data       ndarray                  the gap stream, tap indices, or packed bytes (LSB first)
      starts     ndarray | None           per output channel + 1: starts into data (sparse)
      nbytes     int                      data + starts, as stored

    Memory                                (the one memory plan; every backend reads it)
      buffers    dict[int, Buffer]        per buffer (keyed by the tensor that owns it)
      store      dict[int, int]           per tensor: the buffer holding it (-1: the caller's
                                          input); an in-place or aliasing step shares its input's
      scratch    dict[int, dict[str, Buffer]]  per step index: its kernel's scratch buffers
      binmaps    dict[int, tuple]         C: tensors stored as their readers' int8 map
      in_map     dict[int, bool]          C: per node, whether it reads such a map
      ithr       dict[int, ndarray]       C: per int8 conv folded into the binarisation
                                          after it, its int32 thresholds (int8_thresholds)
      arena      int                      cells placed (every offset a multiple of ``align``)
      tail       int                      cells after them (C: one channel's decoded offsets)
      align      int                      cells (native: 16, i.e. 64 bytes; C: 1, 4 bytes)
      workspace  int                      bytes of kernel scratch per thread the native kernels
                                          take on their own (bounded by the op table's rule)

The passes:

* :func:`fold_affine_linear`: a flat ``affine`` (BatchNorm1d) read only by a ``linear`` folds
  into it. It is not bit-exact (one rounding instead of two), so only the C backend runs it;
  the native engine runs the graph unfolded (the floor there: bit-identical outputs).
  BatchNorm2d is already folded by the tracer (into ``sbconv2d``'s ``eta``/``xi``/``bias`` or an
  ``affine``), so there is nothing more to fold on the graph today.
* :func:`fuse_epilogues`: the native engine's fusion (a binary conv with the residual add and
  the hardtanh or RPReLU after it; a float conv with the hardtanh after it).
* :func:`fuse_pool_residual`: the C backend's fusion (a conv with the pooling, or the residual
  add, that is its only reader) and :func:`binary_maps` (a conv output read only by binary convs
  that binarise alike is stored as their int8 map); :func:`int8_thresholds` folds an int8 conv
  so stored into that binarisation (one int32 threshold per channel instead of its float scale
  and bias; the same bits).
* :func:`choose_encoding`: the per-layer weight storage (gaps, indices or packed bits, the
  smallest unless forced).
* :func:`lifetimes` and :func:`place`: each tensor's first and last step, and the arena offsets
  (greedy by size: each buffer at the lowest offset free over its lifetime).
* :func:`plan_buffers`: the one memory planner. For the native engine every tensor a step
  writes gets its own buffer, 64-byte aligned, planned for one image: at batch ``N`` the engine
  allocates one arena of ``N * nbytes`` and puts every tensor at ``N`` times its offset (all
  sizes scale with ``N``, so buffers that do not meet at one image do not meet at ``N``).
  For C it also decides what the op table allows (``c_alias``: a reshape shares its input's
  buffer; ``c_inplace``: an element-wise op writes over an input that dies there;
  ``c_input_first``: a binary conv writes over its residual), int8 maps and each step's
  scratch. :func:`graph_cost` (what the loader's memory limit checks) reads the same plan.

Which op each rule matches is said here once, in the ``_FUSE_*`` sets below; the op table
(:mod:`sbnn_runtime.ops`) holds what each op means and how each backend lowers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sbnn_runtime.ops import (
    OPS,
    Graph,
    GraphCost,
    Node,
    conv_geometry,
    conv_is_simple,
    infer_shapes,
    pool_geometry,
)

__all__ = ["Step", "Encoding", "Buffer", "Plan", "readers", "live_nodes", "unfused_steps",
           "fold_affine_linear", "fuse_epilogues", "fuse_pool_residual", "binary_maps",
           "qconv_thresholds", "int8_thresholds",
           "choose_encoding", "choose_encodings", "lifetimes", "place", "plan_buffers", "plan",
           "graph_cost", "Memory", "ENCODINGS", "BINARY_FORMATS", "TARGETS", "ALIGN"]

Shape = tuple[int, ...]

ENCODINGS = ("gap8", "idx8", "idx16", "idx32", "packed")
BINARY_FORMATS = ("auto", "sparse", "packed")
TARGETS = ("native", "c")
# bytes: the alignment of the arena and of every tensor in it, per target (the native kernels
# load 64-byte vectors; a C arena cell is a float, an int32 or four int8)
ALIGN = {"native": 64, "c": 4}
# sum over steps of (buffers alive there)^2 past which :func:`place` lays buffers end to end
# (no reuse, linear time) instead of searching gaps: no real network comes near it
_MAX_PLACE_WORK = 1_000_000

# The ops each fusion rule matches (the only place outside the op table and the tracer that
# names them).
_CONV = "conv2d"
_BCONV = "sbconv2d"
_QCONV = "qconv2d"  # the int8 conv: a float output per channel, so the C epilogues apply
_ADD = "add"
_CLAMP = "hardtanh"
_RPRELU = "rprelu"
_POOLS = ("maxpool", "avgpool")
_AFFINE, _LINEAR = "affine", "linear"


# -- the data -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One kernel call: node ``node``'s op with the nodes in ``fused`` done in its epilogue."""

    node: int
    fused: tuple[int, ...] = ()
    inputs: tuple[int, ...] = ()
    output: int = -1
    residual: int | None = None

    @property
    def nodes(self) -> tuple[int, ...]:
        """The nodes this step computes: the anchor, then the fused ones."""
        return (self.node, *self.fused)


@dataclass(frozen=True)
class Encoding:
    """How one binary conv's bits are stored (see the module docstring)."""

    kind: str
    data: np.ndarray
    starts: np.ndarray | None
    data_bytes: int        # bytes per element of data (1 for gaps and packed bits)
    start_bytes: int       # bytes per element of starts (0 when packed)
    nbytes: int            # what this encoding stores
    sparse_bytes: int      # the smaller sparse encoding's size
    packed_bytes: int      # the packed encoding's size
    ones: int              # 1-bits in the layer
    max_ones: int          # the most 1-bits of one output channel
    zero_kernels: float    # fraction of (output, input) channel kernels with no 1-bit

    @property
    def format(self) -> str:
        """``"sparse"`` or ``"packed"``."""
        return "packed" if self.kind == "packed" else "sparse"


@dataclass
class Buffer:
    """A tensor's memory: ``size`` cells (4 bytes, one image), alive from step ``start`` to step
    ``end`` (both included), at ``offset`` cells into the arena once placed."""

    size: int
    start: int
    end: int
    offset: int = -1


@dataclass
class Memory:
    """Where every tensor of a plan lives: one arena (see the module docstring)."""

    buffers: dict[int, Buffer] = field(default_factory=dict)
    store: dict[int, int] = field(default_factory=dict)
    scratch: dict[int, dict[str, Buffer]] = field(default_factory=dict)
    binmaps: dict[int, tuple] = field(default_factory=dict)
    in_map: dict[int, bool] = field(default_factory=dict)
    ithr: dict[int, np.ndarray] = field(default_factory=dict)
    arena: int = 0
    tail: int = 0
    align: int = 1
    workspace: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the arena for one image (placed cells and the tail)."""
        return 4 * (self.arena + self.tail)

    def offset(self, t: int) -> int:
        """Cells into the arena of tensor ``t`` (-1: the caller's input, or not stored)."""
        b = self.store.get(t, -1)
        return -1 if b < 0 else self.buffers[b].offset


@dataclass
class Plan:
    """A graph ready to run; see the module docstring."""

    graph: Graph
    shapes: list[Shape]
    steps: list[Step]
    encodings: dict[int, Encoding] = field(default_factory=dict)
    memory: Memory = field(default_factory=Memory)

    @property
    def buffers(self) -> dict[int, Buffer]:
        return self.memory.buffers

    @property
    def arena(self) -> int:
        return self.memory.arena

    def groups(self) -> list[list[int]]:
        """The nodes of each step that fuses something (what the native engine is told)."""
        return [list(s.nodes) for s in self.steps if s.fused]


# -- small helpers ----------------------------------------------------------------------------

def readers(graph: Graph) -> dict[int, list[int]]:
    """Per node, the nodes that read its output, in order (a node reading twice, twice)."""
    out: dict[int, list[int]] = {}
    for i, nd in enumerate(graph.nodes):
        for j in nd.inputs:
            out.setdefault(j, []).append(i)
    return out


def live_nodes(graph: Graph) -> list[int]:
    """The nodes after the input that the output depends on, in order."""
    need = {graph.output}
    for i in range(len(graph.nodes) - 1, -1, -1):
        if i in need:
            need.update(graph.nodes[i].inputs)
    return [i for i in range(1, len(graph.nodes)) if i in need]


def unfused_steps(graph: Graph, order: list[int] | None = None) -> list[Step]:
    """One step per node (all nodes after the input, or those in ``order``)."""
    order = range(1, len(graph.nodes)) if order is None else order
    return [Step(i, (), tuple(graph.nodes[i].inputs), i) for i in order]


def _is_binary_conv(nd: Node) -> bool:
    # the packed binary kernels' convs (a grouped, dilated or non-square one runs alone)
    return nd.op == _BCONV and bool(nd.attrs["binary_input"]) and \
        conv_is_simple(conv_geometry(nd))


def _is_float_conv(nd: Node) -> bool:
    # an sbconv2d on real inputs runs as a float conv with its dequantized weight
    return nd.op == _CONV or (nd.op == _BCONV and not nd.attrs["binary_input"])


# -- folding ----------------------------------------------------------------------------------

def fold_affine_linear(graph: Graph, shapes: list[Shape] | None = None) -> Graph:
    """A flat ``affine`` (BatchNorm1d) read only by a ``linear`` folds into it:
    ``W (s x + t) + b = (W s) x + (W t + b)`` (float64, then float32). The affine node is left
    in place, dead (no reader), so node numbers stay; backends run only :func:`live_nodes`.
    Not bit-exact, so the native engine does not run it."""
    shapes = infer_shapes(graph) if shapes is None else shapes
    rd = readers(graph)
    nodes = list(graph.nodes)
    for i, nd in enumerate(graph.nodes):
        if nd.op != _LINEAR:
            continue
        a = nd.inputs[0]
        src = graph.nodes[a]
        if src.op != _AFFINE or len(shapes[a]) != 1 or rd[a] != [i] or a == graph.output:
            continue
        w = nd.params["weight"].astype(np.float64)
        scale = src.params["scale"].astype(np.float64)
        shift = src.params["shift"].astype(np.float64)
        b = nd.params["bias"].astype(np.float64) if "bias" in nd.params else 0.0
        params = {"weight": (w * scale[None, :]).astype(np.float32),
                  "bias": (b + w @ shift).astype(np.float32)}
        nodes[i] = Node(_LINEAR, [src.inputs[0]], dict(nd.attrs), params,
                        f"{src.name}+{nd.name}")
    return Graph(nodes, graph.output, graph.metadata)


# -- fusion -----------------------------------------------------------------------------------

def fuse_epilogues(graph: Graph) -> list[Step]:
    """The native engine's fusion, over every node after the input.

    A binary conv whose output is read only by an ``add`` (a residual; not the graph output),
    and whose sum (or its own output) is read only by a ``hardtanh`` or else an ``rprelu``,
    becomes one step at the place of the last of them: its epilogue adds the add's other
    operand and applies the activation. A float conv (``conv2d``, or ``sbconv2d`` on real
    inputs) read only by a ``hardtanh`` clamps in its epilogue. A fused step's inputs are all
    produced before its place, so the order stays valid.
    """
    nodes = graph.nodes
    n = len(nodes)
    ncons = [0] * n
    consumer = [-1] * n
    for i, nd in enumerate(nodes):
        for t in nd.inputs:
            ncons[t] += 1
            consumer[t] = i
    ncons[graph.output] += 1  # the output is read by the caller
    removed = [False] * n
    at: dict[int, Step] = {}

    def sole(t: int, op: str) -> int:
        c = consumer[t]
        return c if ncons[t] == 1 and c >= 0 and not removed[c] and nodes[c].op == op else -1

    for i in range(1, n):
        if removed[i]:
            continue
        nd = nodes[i]
        fused: list[int] = []
        res = None
        if _is_binary_conv(nd):
            t = i
            a = sole(t, _ADD)
            if a >= 0:
                u, v = nodes[a].inputs
                other = v if u == t else u
                if other != t:
                    res, t = other, a
                    fused.append(a)
            h = sole(t, _CLAMP)
            if h >= 0:
                fused.append(h)
                t = h
            else:
                r = sole(t, _RPRELU)
                if r >= 0:
                    fused.append(r)
        elif _is_float_conv(nd):
            h = sole(i, _CLAMP)
            if h >= 0:
                fused.append(h)
        for j in fused:
            removed[j] = True
        out = fused[-1] if fused else i
        ins = tuple(nd.inputs) + ((res,) if res is not None else ())
        at[out] = Step(i, tuple(fused), ins, out, res)
    return [at[k] for k in sorted(at)]


def fuse_pool_residual(graph: Graph, order: list[int] | None = None) -> list[Step]:
    """The C backend's fusion, over ``order`` (default: :func:`live_nodes`).

    A conv (float or binary) whose only reader is a pooling runs it channel by channel through
    one plane, and its full output never exists. Otherwise a conv whose only reader is an
    ``add`` of an earlier tensor ``r`` adds ``r`` channel by channel (``residual = r``). The graph
    output is never fused away. A fused step sits at its conv's place.
    """
    g = graph
    order = live_nodes(g) if order is None else order
    users: dict[int, list[int]] = {}
    for i in order:
        for j in g.nodes[i].inputs:
            users.setdefault(j, []).append(i)
    conv = (_CONV, _BCONV, _QCONV)
    fused: dict[int, int] = {}
    resid: dict[int, int] = {}
    for i in order:
        rd = users.get(i, [])
        if g.nodes[i].op in conv and i != g.output and len(rd) == 1 and \
                g.nodes[rd[0]].op in _POOLS and pool_geometry(g.nodes[rd[0]]).simple:
            fused[i] = rd[0]  # (the epilogue's sbnn_epi pools square, floor-mode windows)
    for i in order:
        rd = users.get(i, [])
        if g.nodes[i].op not in conv or i in fused or i == g.output or len(rd) != 1 or \
                g.nodes[rd[0]].op != _ADD:
            continue
        a, (u, v) = rd[0], g.nodes[rd[0]].inputs
        r = v if u == i else u
        if r != i and r < i:
            fused[i], resid[i] = a, r
    into = set(fused.values())
    steps = []
    for i in order:
        if i in into:
            continue
        nd = g.nodes[i]
        if i in fused:
            r = resid.get(i)
            ins = tuple(nd.inputs) + ((r,) if r is not None else ())
            steps.append(Step(i, (fused[i],), ins, fused[i], r))
        else:
            steps.append(Step(i, (), tuple(nd.inputs), i))
    return steps


def binary_maps(graph: Graph, steps: list[Step]) -> dict[int, tuple[np.ndarray | None, int]]:
    """Conv outputs (after their fused pooling or add) whose every reader is a binary conv on
    binary inputs with the same thresholds and padding: ``{tensor: (thr, pad)}``. A backend may
    store such a tensor as the readers' +-1 map (padded by ``pad``) instead of floats."""
    g = graph
    users: dict[int, list[int]] = {}
    for s in steps:
        for n in s.nodes:  # fused nodes read tensors too (an add its residual)
            for j in g.nodes[n].inputs:
                users.setdefault(j, []).append(n)
    out: dict[int, tuple[np.ndarray | None, int]] = {}
    for s in steps:
        t = s.output
        rd = users.get(t, [])
        if g.nodes[s.node].op not in (_CONV, _BCONV, _QCONV) or t == g.output or not rd or \
                not all(_is_binary_conv(g.nodes[r]) for r in rd):
            continue
        thr = [g.nodes[r].params.get("thr") for r in rd]
        pads = {conv_geometry(g.nodes[r])[2] for r in rd}
        same = all((a is None and thr[0] is None) or (a is not None and thr[0] is not None
                                                      and np.array_equal(a, thr[0]))
                   for a in thr)
        if same and len(pads) == 1:
            out[t] = (thr[0], pads.pop())
    return out


def _qmax_acc(nd: Node) -> int:
    """The largest |int32 sum| of an int8 conv: taps x 255 x 127 (fits int32, ``_qcheck``)."""
    return int(np.prod(nd.params["weight"].shape[1:])) * 255 * 127


def _first_true(pred, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per channel, the smallest integer in ``[lo, hi + 1]`` where the non-decreasing
    predicate ``pred(a)`` holds (``hi + 1``: nowhere in ``[lo, hi]``); bisection, vectorised."""
    lo, hi = lo.astype(np.int64), hi.astype(np.int64) + 1
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        ok = pred(mid)
        hi = np.where(ok & (lo < hi), mid, hi)
        lo = np.where(~ok & (lo < hi), mid + 1, lo)
    return lo


def qconv_thresholds(nd: Node, thr: np.ndarray | None) -> np.ndarray | None:
    """An int8 conv's per-channel int32 thresholds ``T`` against the binarisation that reads it:
    for every int32 sum ``acc`` it can make, ``float(acc) * scale_c + bias_c >= thr_c`` (float32,
    two roundings: :mod:`sbnn_runtime.qkernels`) holds exactly when ``acc >= T_c``. None when no
    such ``T`` is sure to exist (a scale that is not finite and > 0, a bias or threshold that is
    not finite): then the float path stays. The scale and the rounding of ``+ bias`` are
    monotone, so the predicate is non-decreasing in ``acc`` and bisection finds ``T`` exactly;
    ``T = -K`` (always +1) or ``K + 1`` (always -1) at the ends, ``K`` the largest |sum|."""
    from sbnn_runtime import qkernels  # the arithmetic, stated once

    P = nd.params
    scale = qkernels.out_scale(nd.attrs["x_scale"], P["w_scale"])
    co = scale.size
    bias = np.asarray(P["bias"], np.float32) if "bias" in P else None
    t = np.zeros(co, np.float32) if thr is None else np.asarray(thr, np.float32).reshape(-1)
    if t.size != co or not (np.all(np.isfinite(scale)) and np.all(scale > 0)
                            and np.all(np.isfinite(t))
                            and (bias is None or np.all(np.isfinite(bias)))):
        return None
    k = _qmax_acc(nd)

    def pred(acc: np.ndarray) -> np.ndarray:
        y = acc.astype(np.float32) * scale  # float(acc): as the kernels convert the sum
        if bias is not None:
            y = y + bias
        return y >= t

    return _first_true(pred, np.full(co, -k), np.full(co, k)).astype(np.int32)


def int8_thresholds(graph: Graph, steps: list[Step],
                    binmaps: dict[int, tuple] | None = None) -> dict[int, np.ndarray]:
    """The C backend's fold of an int8 conv into the binarisation after it: a ``qconv2d`` step
    that fuses nothing and whose output is stored as its readers' int8 map (:func:`binary_maps`)
    needs only the sign of ``y - thr`` per value, so it compares its exact int32 sum with one
    integer per channel (:func:`qconv_thresholds`) and its float scale, bias and output plane
    are not needed: ``{node: int32 thresholds}``. The same bits as the unfused ops. The native
    engine runs the ops unfused (its outputs are the same)."""
    binmaps = binary_maps(graph, steps) if binmaps is None else binmaps
    out: dict[int, np.ndarray] = {}
    for s in steps:
        nd = graph.nodes[s.node]
        if nd.op != _QCONV or s.fused or s.output not in binmaps:
            continue
        t = qconv_thresholds(nd, binmaps[s.output][0])
        if t is not None:
            out[s.node] = t
    return out


# -- weight encodings -------------------------------------------------------------------------

def _uint_bytes(max_value: int) -> int:
    for nbytes in (1, 2, 4):
        if max_value < 1 << (8 * nbytes):
            return nbytes
    raise ValueError(f"value {max_value} does not fit 32 bits")


def choose_encoding(bits: np.ndarray, binary_format: str = "auto") -> Encoding:
    """The storage of one binary conv's 0/1 weights ``(co, ci, kh, kw)``.

    Sparse encodings list each output channel's 1-bits, with a start per channel (so an
    all-zero kernel costs nothing): as one-byte *gaps* (the 0-bits before each 1-bit; 255 means
    "255 more, read on") or as tap *indices* ``ci*kh*kw + ky*kw + kx`` in the narrowest unsigned
    type. ``packed``: the bits in C order, 8 a byte, LSB first. ``binary_format="auto"`` takes
    the smaller of the two sparse ones if it is no larger than packed; ``"sparse"`` /
    ``"packed"`` force the kind.
    """
    if binary_format not in BINARY_FORMATS:
        raise ValueError(f"binary_format must be one of {BINARY_FORMATS}, got {binary_format!r}")
    co = bits.shape[0]
    rows = bits.reshape(co, -1).astype(bool)
    n_taps = rows.shape[1]
    ch, tap = np.nonzero(rows)  # row-major: taps ascending within each channel
    ones = int(tap.size)
    per_ch = rows.sum(1)
    idx_b = _uint_bytes(max(n_taps - 1, 0))
    start_b = _uint_bytes(ones)
    index_bytes = ones * idx_b + (co + 1) * start_b
    prev = np.where(np.r_[True, ch[1:] != ch[:-1]], -1, np.r_[-1, tap[:-1]])
    gap = tap - prev - 1
    nbytes = gap // 255 + 1
    gstream = np.full(int(nbytes.sum()), 255, np.int64)
    gstream[np.cumsum(nbytes) - 1] = gap % 255
    gper_ch = np.bincount(ch, weights=nbytes, minlength=co).astype(np.int64)
    gstart_b = _uint_bytes(gstream.size)
    gap_bytes = gstream.size + (co + 1) * gstart_b
    sparse_bytes = min(index_bytes, gap_bytes)
    packed_bytes = (bits.size + 7) // 8
    fmt = binary_format if binary_format != "auto" else (
        "sparse" if sparse_bytes <= packed_bytes else "packed")
    common = dict(sparse_bytes=int(sparse_bytes), packed_bytes=int(packed_bytes), ones=ones,
                  max_ones=int(per_ch.max()) if co else 0,
                  zero_kernels=float((bits.reshape(co * bits.shape[1], -1).max(1) == 0).mean())
                  if bits.size else 0.0)
    if fmt == "sparse" and gap_bytes < index_bytes:
        starts = np.concatenate([[0], np.cumsum(gper_ch)]).astype(np.int64)
        return Encoding("gap8", gstream, starts, 1, gstart_b, int(gap_bytes), **common)
    if fmt == "sparse":
        starts = np.concatenate([[0], np.cumsum(per_ch)]).astype(np.int64)
        return Encoding(f"idx{8 * idx_b}", tap.astype(np.int64), starts, idx_b, start_b,
                        int(index_bytes), **common)
    packed = np.packbits(bits.reshape(-1).astype(np.uint8), bitorder="little")
    return Encoding("packed", packed, None, 1, 0, int(packed_bytes), **common)


def choose_encodings(graph: Graph, binary_format: str = "auto",
                     order: list[int] | None = None) -> dict[int, Encoding]:
    """:func:`choose_encoding` for every ``sbconv2d`` node in ``order`` (default: live ones):
    one stride, one padding, no dilation or groups as ``binary_format`` says; the others
    (grouped, dilated, non-square: C runs them as the float conv of their folded weight, read
    from the bits) always packed."""
    order = live_nodes(graph) if order is None else order
    return {i: choose_encoding(graph.nodes[i].params["bits"],
                               binary_format if conv_is_simple(conv_geometry(graph.nodes[i]))
                               else "packed")
            for i in order if graph.nodes[i].op == _BCONV}


# -- lifetimes and the arena ------------------------------------------------------------------

def lifetimes(graph: Graph, steps: list[Step]) -> dict[int, tuple[int, int]]:
    """Per tensor a step writes: ``(first step, last step reading it)``; the graph output lives
    to one past the last step (the caller reads it)."""
    out: dict[int, tuple[int, int]] = {}
    for k, s in enumerate(steps):
        out[s.output] = (k, k)
    for k, s in enumerate(steps):
        for t in s.inputs:
            if t in out:
                out[t] = (out[t][0], max(out[t][1], k))
    if graph.output in out:
        out[graph.output] = (out[graph.output][0], len(steps))
    return out


def _up(n: int, align: int) -> int:
    return -(-n // align) * align


def place(bufs: list[Buffer], align: int = 1) -> int:
    """Greedy by size: each buffer (largest first, then earliest) at the lowest offset free over
    its lifetime, a multiple of ``align`` cells; sets ``offset`` and returns the arena size in
    cells. Buffers whose lifetimes meet never overlap. A set of lifetimes so crowded that the
    search would be slow (:data:`_MAX_PLACE_WORK`) is laid end to end instead (still valid)."""
    if not bufs:
        return 0
    delta: dict[int, int] = {}
    for b in bufs:
        delta[b.start] = delta.get(b.start, 0) + 1
        delta[b.end + 1] = delta.get(b.end + 1, 0) - 1
    work, alive, keys = 0, 0, sorted(delta)
    for k, nxt in zip(keys, keys[1:], strict=False):
        alive += delta[k]
        work += alive * alive * (nxt - k)
    if work > _MAX_PLACE_WORK:
        off = 0
        for b in sorted(bufs, key=lambda b: (b.start, b.end)):
            b.offset = off
            off = _up(off + b.size, align)
        return max(b.offset + b.size for b in bufs)
    live: dict[int, list[Buffer]] = {}  # step -> the placed buffers alive there
    for b in sorted(bufs, key=lambda b: (-b.size, b.start)):
        steps = range(b.start, b.end + 1)
        near = {id(p): p for t in steps for p in live.get(t, ())}  # lifetimes that meet b's
        busy = sorted((p.offset, p.offset + p.size) for p in near.values())
        off = 0
        for lo, hi in busy:
            if off + b.size <= lo:
                break
            off = max(off, _up(hi, align))
        b.offset = off
        for t in steps:
            live.setdefault(t, []).append(b)
    return max(b.offset + b.size for b in bufs)


def _size(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def plan_buffers(graph: Graph, steps: list[Step], shapes: list[Shape] | None = None, *,
                 target: str = "native", encodings: dict[int, Encoding] | None = None) -> Memory:
    """The one memory planner: where every tensor of ``steps`` lives, for ``target``.

    ``"native"``: a buffer per tensor a step writes (float32 cells of one image), offsets
    multiples of 64 bytes; a step's inputs and output never share cells (no native kernel runs
    in place), and ``workspace`` is the largest per-thread kernel scratch the op table counts
    (``OpSpec.workspace``: the kernels allocate it themselves, bounded). ``"c"``: what the op
    table allows in place or aliased (``c_alias``, ``c_inplace``, ``c_input_first``), int8 maps
    (:func:`binary_maps`), each step's scratch (``c_scratch`` and the epilogue planes) and a
    tail for one channel's decoded offsets (the largest ``max_ones`` of ``encodings``)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
    shapes = infer_shapes(graph) if shapes is None else shapes
    align = ALIGN[target] // 4
    if target == "c":
        return _plan_c(graph, steps, shapes, encodings or {}, align)
    bufs = {t: Buffer(_size(shapes[t]), a, b) for t, (a, b) in lifetimes(graph, steps).items()}
    store = {0: -1, **{t: t for t in bufs}}
    work = 0
    for i in (n for st in steps for n in st.nodes):
        nd = graph.nodes[i]
        spec = OPS[nd.op]
        if spec.workspace is not None:
            work = max(work, int(spec.workspace(nd, [shapes[j] for j in nd.inputs], shapes[i])))
    return Memory(bufs, store, arena=place(list(bufs.values()), align), align=align,
                  workspace=work)


def _plan_c(graph: Graph, steps: list[Step], shapes: list[Shape],
            encodings: dict[int, Encoding], align: int) -> Memory:
    g = graph
    binmap = binary_maps(g, steps)
    rd: dict[int, list[int]] = {}
    for k, st in enumerate(steps):
        for t in st.inputs:
            rd.setdefault(t, []).append(k)
    life = lifetimes(g, steps)
    store: dict[int, int] = {0: -1}
    bufs: dict[int, Buffer] = {}

    def end_of(buf: int) -> int:  # the last step reading any tensor the buffer holds
        return max(life[t][1] for t, v in store.items() if v == buf)

    for k, st in enumerate(steps):
        t, nd = st.output, g.nodes[st.node]
        spec = OPS[nd.op]
        size = _size(shapes[t])
        if t in binmap:
            c, h, w = shapes[t]
            pad = binmap[t][1]
            size = (c * (h + 2 * pad) * (w + 2 * pad) + 3) // 4
        r = st.residual
        if r is not None and t not in binmap and store[r] >= 0:
            # over the residual, channel by channel: when nothing reads it later, and the conv
            # reads its own input before writing (or its input is elsewhere)
            sr = store[r]
            later = [j for tt, v in store.items() if v == sr for j in rd.get(tt, []) if j > k]
            first = OPS[nd.op].c_input_first
            if not later and ((first is not None and bool(first(nd)))
                              or store[nd.inputs[0]] != sr):
                store[t] = sr
                continue
        if spec.c_alias:
            store[t] = store[nd.inputs[0]]
            continue
        if spec.c_inplace and not st.fused:
            cand = [j for j in nd.inputs if store[j] >= 0 and end_of(store[j]) == k]
            if cand:
                store[t] = store[cand[0]]
                continue
        store[t] = t
        bufs[t] = Buffer(size, k, k)
    for t, v in store.items():
        if v >= 0:
            bufs[v].end = max(bufs[v].end, life[t][1])
    in_map = {st.node: bool(g.nodes[st.node].inputs) and g.nodes[st.node].inputs[0] in binmap
              for st in steps}
    ithr = int8_thresholds(g, steps, binmap)
    scratch = {k: {key: Buffer(c, k, k) for key, c in _c_scratch(
        g, shapes, st, binmap.get(st.output), in_map[st.node], st.node in ithr).items()}
        for k, st in enumerate(steps)}
    cells = place(list(bufs.values()) + [b for bs in scratch.values() for b in bs.values()],
                  align)
    anchors = {st.node for st in steps if g.nodes[st.node].op == _BCONV
               and conv_is_simple(conv_geometry(g.nodes[st.node]))}  # the sparse kernels
    tail = max((max(e.max_ones, 1) for i, e in encodings.items() if i in anchors), default=0)
    return Memory(bufs, store, scratch, binmap, in_map, ithr, max(cells, 1), tail, align)


def _c_scratch(g: Graph, shapes: list[Shape], st: Step, binmap, in_map: bool,
               folded: bool = False) -> dict[str, int]:
    """Scratch (4-byte cells) of one C step: the op's own (``OpSpec.c_scratch``), and a channel
    plane when a conv pools, adds or binarises in its epilogue (plus the pooled plane when it
    pools and binarises); none for an int8 conv ``folded`` into its binarisation (it writes
    the map straight from its sums)."""
    nd = g.nodes[st.node]
    spec = OPS[nd.op]
    sc: dict[str, int] = {}
    if (st.fused or binmap is not None) and not folded:
        sc["plane"] = shapes[st.node][1] * shapes[st.node][2]
        if st.fused and st.residual is None and binmap is not None:
            sc["tmp"] = shapes[st.output][1] * shapes[st.output][2]
    if spec.c_scratch is not None:
        sc.update(spec.c_scratch(nd, [shapes[j] for j in nd.inputs], shapes[st.node], in_map))
    return sc


def graph_cost(graph: Graph, shapes: list[Shape] | None = None, *, fuse: bool = True,
               memory: Memory | None = None) -> GraphCost:
    """The :class:`~sbnn_runtime.ops.GraphCost` of ``graph`` on the native engine (checks the
    graph first unless ``shapes`` is given): the op table's work, parameter and scratch rules
    per node, and the activations of the engine's own memory plan (``memory``, or
    :func:`plan_buffers` over :func:`fuse_epilogues` (``fuse``) or every node alone): its arena
    for one image plus the output array handed back. Reads only shapes, so it works on a graph
    of :class:`~sbnn_runtime.ops.ShapeOnly` parameters (the loader's check before decoding)."""
    if shapes is None:
        shapes = infer_shapes(graph)
    macs, work, pbytes, ebytes = [], [], 0, 0
    for i, nd in enumerate(graph.nodes):
        spec = OPS[nd.op]
        ins, out = [shapes[j] for j in nd.inputs], shapes[i]
        macs.append(int(spec.macs(nd, ins, out)))
        work.append(int(spec.work(nd, ins, out)) if spec.work else macs[-1] + _size(out))
        nb = sum(int(arr.size) * arr.dtype.itemsize for arr in nd.params.values())
        pbytes += nb
        ebytes += nb + (int(spec.engine_bytes(nd, ins, out)) if spec.engine_bytes else
                        sum(4 * int(arr.size) for arr in nd.params.values()))
    if memory is None:
        steps = fuse_epilogues(graph) if fuse else unfused_steps(graph)
        memory = plan_buffers(graph, steps, shapes, target="native")
    act = memory.nbytes + 4 * _size(shapes[graph.output])
    return GraphCost(sum(macs), tuple(macs), pbytes, ebytes, act, memory.workspace, sum(work),
                     tuple(work))


# -- all together -----------------------------------------------------------------------------

def plan(graph: Graph, target: str = "native", *, fuse: bool = True,
         binary_format: str = "auto", memory: bool = True) -> Plan:
    """The :class:`Plan` of ``graph`` for a backend.

    ``"native"``: every node, no folding, :func:`fuse_epilogues` (when ``fuse``), no encodings
    (the engine keeps its own sparse and dense layers). ``"c"``: :func:`fold_affine_linear`,
    the live nodes, :func:`fuse_pool_residual` (when ``fuse``) and :func:`choose_encodings`.
    Both get :func:`plan_buffers` for the target (the native engine allocates its arena from
    it) unless ``memory=False`` (then ``memory`` is empty: for tools that want the steps only).
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
    shapes = infer_shapes(graph)
    encodings: dict[int, Encoding] = {}
    if target == "native":
        steps = fuse_epilogues(graph) if fuse else unfused_steps(graph)
    else:
        graph = fold_affine_linear(graph, shapes)
        order = live_nodes(graph)
        steps = fuse_pool_residual(graph, order) if fuse else unfused_steps(graph, order)
        encodings = choose_encodings(graph, binary_format, order)
    mem = plan_buffers(graph, steps, shapes, target=target, encodings=encodings) if memory \
        else Memory()
    return Plan(graph, shapes, steps, encodings, mem)
