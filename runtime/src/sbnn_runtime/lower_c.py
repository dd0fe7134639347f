"""The C99 lowering of a graph: a model file that calls the micro kernels, for microcontrollers.

    >>> from sbnn_runtime import lower_c
    >>> cm = lower_c.export_c(graph, "out/", name="kws")  # out/kws.c, out/kws.h, out/sbnn_*.c|h
    >>> print(lower_c.format_sizes(cm))

Numpy only (no torch). The command line is ``python -m sbnn_runtime c MODEL.sbnn DIR [--name N]``
(and ``sbnn export MODEL.sbnn --c DIR --name N``, which writes the same files).

What is written:

* ``N.c`` / ``N.h`` (``model.c`` / ``model.h`` with symbols ``sbnn_*`` and macros ``SBNN_*``
  without a name): only the model: its constants (weights in flash), the arena offsets of its
  tensors and one kernel call per node. The C of each node comes from its op's entry in
  :data:`sbnn_runtime.ops.OPS` (``OpSpec.c``); an op without one is refused, naming the node.
* ``sbnn_micro.h`` and ``sbnn_*.c``: the kernels (``runtime/csrc/micro``), byte-identical for
  every model, so two models compile and link together with one copy of them.

The API of ``--name kws``::

    #define KWS_INPUT_SIZE ...   /* floats of one image (C, H, W) */
    #define KWS_OUTPUT_SIZE ...
    #define KWS_ARENA_BYTES ...  /* activations and scratch: all mutable state of a run */
    #define KWS_ARENA_ALIGN 4    /* bytes; the arena's address must be a multiple of it */
    #define KWS_WEIGHT_BYTES ... /* const weights and vectors (flash) */
    int kws_run(const float *in, float *out);                    /* a static arena */
    int kws_run_arena(const float *in, float *out, void *arena); /* the caller's arena */

Both return 0, -1 for a NULL pointer and -2 for a misaligned arena (nothing is written then).
Nothing else is writable: two arenas allow two runs at once.

Memory: every tensor and scratch buffer lives in the arena at an offset fixed at export
(greedy by size over lifetimes); element-wise ops work in place when their input dies with
them, ``flatten`` is free, a conv read only by a pooling or a residual add runs it channel by
channel in its epilogue, a conv read only by binary convs that binarise alike writes their +-1
int8 map, and a flat affine before a linear folds into it. A binary conv's weights are stored,
per layer, as the smallest of one-byte gaps, tap indices of 1, 2 or 4 bytes (both with a start
per output channel) or packed bits.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sbnn_runtime.files import atomic_write
from sbnn_runtime.ops import OPS, Graph, Node, Shape, infer_shapes

__all__ = ["CExportError", "BINARY_FORMATS", "ARENA_ALIGN", "CModel", "CNode", "check_name",
           "generate_c", "export_c", "export_file", "format_sizes", "kernel_files"]

BINARY_FORMATS = ("auto", "sparse", "packed")
ARENA_ALIGN = 4  # bytes: every arena cell holds a float, an int32 or four int8
_ELEMENTWISE = ("affine", "hardtanh", "relu", "rprelu", "add")
# C99/C11 keywords, and names a C file cannot reuse as a prefix of its own
_C_RESERVED = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if "
    "inline int long register restrict return short signed sizeof static struct switch typedef "
    "union unsigned void volatile while _Alignas _Alignof _Atomic _Bool _Complex _Generic "
    "_Imaginary _Noreturn _Static_assert _Thread_local bool true false asm main".split())


class CExportError(ValueError):
    """The graph cannot be written as C, or a bad name (the message says which node and why)."""


@dataclass
class CModel:
    """What :func:`generate_c` produced: the model's two files and what they cost."""

    name: str  # the symbol prefix: "sbnn" by default
    stem: str  # the file name without .c/.h: "model" by default
    model_c: str
    model_h: str
    input_size: int
    output_size: int
    arena_bytes: int  # all mutable state of a run: activations, scratch, decoded offsets
    const_bytes: int  # weights and per-channel vectors (flash), as counted by the generator
    layers: list[dict[str, Any]] = field(default_factory=list)  # one row per binary conv


def check_name(name: str | None) -> tuple[str, str]:
    """``(prefix, file stem)`` for ``--name``: ``("sbnn", "model")`` for None; else the name
    must be a plain C identifier, no C keyword, not starting with ``sbnn_`` (the kernels')."""
    if name is None:
        return "sbnn", "model"
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,30}", name):
        raise CExportError(f"--name {name!r} is not a plain C identifier (a letter, then up to "
                           "30 letters, digits or _)")
    if name in _C_RESERVED or name.lower().startswith("sbnn_"):
        raise CExportError(f"--name {name!r} is a C keyword or reserved (sbnn_* names the "
                           "kernels)")
    return name, name


def kernel_files() -> dict[str, bytes]:
    """The micro kernels that ship beside every model: ``{file name: bytes}``, sorted."""
    here = Path(__file__).resolve().parent
    for d in (here / "micro", here.parents[1] / "csrc" / "micro"):
        if (d / "sbnn_micro.h").is_file():
            return {p.name: p.read_bytes() for p in sorted(d.iterdir())
                    if p.suffix in (".c", ".h") and p.name.startswith("sbnn_")}
    raise CExportError("the C kernels (sbnn_micro.h, sbnn_*.c) are missing from this install")


# -- number formatting -------------------------------------------------------------------------

def _flt(v) -> str:
    """A float32 as the shortest C literal that parses back to the same float."""
    v = np.float32(v)
    if not np.isfinite(v):
        return "NAN" if np.isnan(v) else ("INFINITY" if v > 0 else "-INFINITY")
    a = np.format_float_positional(v, unique=True, trim=".")
    b = np.format_float_scientific(v, unique=True, trim=".", exp_digits=1)
    s = a if len(a) <= len(b) else b
    return s + "f"


def _rows(items: list[str], per_line: int = 12) -> str:
    if not items:
        return "0"
    return ",\n".join("    " + ", ".join(items[i:i + per_line])
                      for i in range(0, len(items), per_line))


def _uint_type(max_value: int) -> tuple[str, int]:
    for t, nbytes in (("uint8_t", 1), ("uint16_t", 2), ("uint32_t", 4)):
        if max_value < 1 << (8 * nbytes):
            return t, nbytes
    raise CExportError(f"value {max_value} does not fit 32 bits")


def _comment(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:\- ]", "_", str(text))[:60]


# -- the plan: fusion and arena offsets --------------------------------------------------------

@dataclass
class _Buf:
    size: int  # in 4-byte cells
    start: int
    end: int
    offset: int = -1


def _place(bufs: list[_Buf]) -> int:
    """Greedy by size: each buffer at the lowest offset free over its lifetime; returns the
    arena size in cells."""
    placed: list[_Buf] = []
    for b in sorted(bufs, key=lambda b: (-b.size, b.start)):
        busy = sorted((p.offset, p.offset + p.size) for p in placed
                      if p.start <= b.end and b.start <= p.end)
        off = 0
        for lo, hi in busy:
            if off + b.size <= lo:
                break
            off = max(off, hi)
        b.offset = off
        placed.append(b)
    return max((b.offset + b.size for b in bufs), default=0)


def _fold_affine_linear(graph: Graph, shapes) -> Graph:
    """A flat ``affine`` (BatchNorm1d) read only by a ``linear`` folds into it:
    ``W (s x + t) + b = (W s) x + (W t + b)`` (float64, then float32), which saves its vectors
    and a pass; the affine node is then dead and not emitted."""
    readers: dict[int, list[int]] = {}
    for i, nd in enumerate(graph.nodes):
        for j in nd.inputs:
            readers.setdefault(j, []).append(i)
    nodes = list(graph.nodes)
    for i, nd in enumerate(graph.nodes):
        if nd.op != "linear":
            continue
        a = nd.inputs[0]
        src = graph.nodes[a]
        if src.op != "affine" or len(shapes[a]) != 1 or readers[a] != [i] or a == graph.output:
            continue
        w = nd.params["weight"].astype(np.float64)
        scale = src.params["scale"].astype(np.float64)
        shift = src.params["shift"].astype(np.float64)
        b = nd.params["bias"].astype(np.float64) if "bias" in nd.params else 0.0
        params = {"weight": (w * scale[None, :]).astype(np.float32),
                  "bias": (b + w @ shift).astype(np.float32)}
        nodes[i] = Node("linear", [src.inputs[0]], dict(nd.attrs), params,
                        f"{src.name}+{nd.name}")
    return Graph(nodes, graph.output, graph.metadata)


@dataclass
class _Plan:
    """Which nodes run, fused how, and where every tensor and scratch buffer lives."""

    order: list[int]
    fused: dict[int, int]  # conv -> the pooling or add it runs in its epilogue
    resid: dict[int, int]  # conv -> the residual its fused add reads
    binmap: dict[int, tuple]  # tensor -> (thr, pad): stored as its readers' int8 map
    store: dict[int, int]  # tensor -> the buffer holding it (-1: the input, -2: none)
    bufs: dict[int, _Buf]
    scratch: dict[int, dict[str, _Buf]]
    in_map: dict[int, bool]  # node reads an int8 map its producer wrote
    cells: int  # float cells of the arena (the decoded offsets come after them)


def _readers(g: Graph, order: list[int]) -> dict[int, list[int]]:
    users: dict[int, list[int]] = {}
    for i in order:
        for j in g.nodes[i].inputs:
            users.setdefault(j, []).append(i)
    return users


def _fusions(g: Graph, order: list[int], users) -> tuple[dict[int, int], dict[int, int]]:
    """A conv whose only reader is a pooling runs it channel by channel through one plane;
    one whose only reader is a residual add of an earlier tensor r adds r channel by channel
    (a binary conv reads its input only while binarising it, so r may even be that input)."""
    convs = ("conv2d", "sbconv2d")
    fused = {i: users[i][0] for i in order
             if g.nodes[i].op in convs and i != g.output and len(users.get(i, [])) == 1
             and g.nodes[users[i][0]].op in ("maxpool", "avgpool")}
    resid: dict[int, int] = {}
    for i in order:
        rd = users.get(i, [])
        if g.nodes[i].op not in convs or i in fused or i == g.output or \
                len(rd) != 1 or g.nodes[rd[0]].op != "add":
            continue
        a, (u, v) = rd[0], g.nodes[rd[0]].inputs
        r = v if u == i else u
        if r != i and r < i:
            fused[i], resid[i] = a, r
    return fused, resid


def _binmaps(g: Graph, order: list[int], users, fused) -> dict[int, tuple]:
    """A conv output (after its fused pool) whose every reader is a binary conv binarising
    with the same thresholds and padding is stored as that int8 map, a quarter the size."""
    binmap: dict[int, tuple] = {}
    for i in order:
        t = fused.get(i, i)
        rd = users.get(t, [])
        if g.nodes[i].op not in ("conv2d", "sbconv2d") or t == g.output or not rd or \
                not all(g.nodes[r].op == "sbconv2d" and g.nodes[r].attrs["binary_input"]
                        for r in rd):
            continue
        thr = [g.nodes[r].params.get("thr") for r in rd]
        pads = {g.nodes[r].attrs["padding"] for r in rd}
        same = all((a is None and thr[0] is None) or (a is not None and thr[0] is not None
                                                      and np.array_equal(a, thr[0]))
                   for a in thr)
        if same and len(pads) == 1:
            binmap[t] = (thr[0], pads.pop())
    return binmap


def _scratch_cells(g: Graph, shapes, i: int, pool: int | None, binmap, in_map: bool):
    """Scratch buffers of node ``i`` (4-byte cells): a binary conv's padded input planes
    (unless its producer wrote them) and window sums; a conv's channel plane when it pools
    or binarises its output, and the pooled plane when it does both."""
    nd = g.nodes[i]
    sc = {}
    if nd.op in ("conv2d", "sbconv2d") and (pool is not None or binmap is not None):
        sc["plane"] = shapes[i][1] * shapes[i][2]
        if pool is not None and binmap is not None and g.nodes[pool].op != "add":
            sc["tmp"] = shapes[pool][1] * shapes[pool][2]
    if nd.op == "sbconv2d":
        ci, h, w = shapes[nd.inputs[0]]
        p = nd.attrs["padding"]
        planes = ci * (h + 2 * p) * (w + 2 * p)
        if not in_map:
            sc["xp"] = (planes + 3) // 4 if nd.attrs["binary_input"] else planes
        sc["ws"] = shapes[i][1] * shapes[i][2] + (h + 2 * p) * (w + 2 * p)
    return sc


def _plan(g: Graph, shapes: list[Shape]) -> _Plan:
    n = len(g.nodes)
    need = {g.output}
    for i in range(n - 1, -1, -1):
        if i in need:
            need.update(g.nodes[i].inputs)
    order = [i for i in range(1, n) if i in need]
    last = {j: i for i in order for j in g.nodes[i].inputs}
    last[g.output] = n  # read by the final copy
    users = _readers(g, order)
    fused, resid = _fusions(g, order, users)
    fused_into = {j: i for i, j in fused.items()}
    binmap = _binmaps(g, order, users, fused)
    # storage: -1 is the caller's input; flatten aliases; element-wise ops reuse a dying input
    store: dict[int, int] = {0: -1}
    bufs: dict[int, _Buf] = {}

    def store_end(s: int) -> int:
        return max(last.get(t, t) for t, v in store.items() if v == s)

    for i in order:
        nd = g.nodes[i]
        size = int(np.prod(shapes[i]))
        if i in fused:
            store[i] = -2  # never materialised
            continue
        if i in binmap:
            c, h, w = shapes[i]
            p = binmap[i][1]
            size = (c * (h + 2 * p) * (w + 2 * p) + 3) // 4
        if i in fused_into:  # produced when its conv runs
            c = fused_into[i]
            r = resid.get(c)
            if r is not None and i not in binmap and store[r] >= 0:
                sr = store[r]
                readers = {k for t, v in store.items() if v == sr for k in users.get(t, [])}
                binary = g.nodes[c].op == "sbconv2d" and g.nodes[c].attrs["binary_input"]
                if all(k <= c or k == i for k in readers) and (
                        binary or store[g.nodes[c].inputs[0]] != sr):
                    store[i] = sr  # over the residual, channel by channel
                    continue
            store[i] = i
            bufs[i] = _Buf(size, c, i)
            continue
        if nd.op == "flatten":
            store[i] = store[nd.inputs[0]]
            continue
        if nd.op in _ELEMENTWISE:
            cand = [j for j in nd.inputs if store[j] >= 0 and store_end(store[j]) == i]
            if cand:
                store[i] = store[cand[0]]
                continue
        store[i] = i
        bufs[i] = _Buf(size, i, i)
    for t, s in store.items():
        if s >= 0:
            bufs[s].end = max(bufs[s].end, last.get(t, t))
    in_map = {i: bool(g.nodes[i].inputs) and g.nodes[i].inputs[0] in binmap for i in order}
    scratch = {i: {k: _Buf(c, i, i) for k, c in _scratch_cells(
        g, shapes, i, fused.get(i), binmap.get(fused.get(i, i)), in_map[i]).items()}
        for i in order}
    cells = _place(list(bufs.values()) + [b for bs in scratch.values() for b in bs.values()])
    return _Plan(order, fused, resid, binmap, store, bufs, scratch, in_map, max(cells, 1))


# -- binary conv weights -----------------------------------------------------------------------

def encode_bits(bits: np.ndarray, binary_format: str = "auto") -> dict[str, Any]:
    """The storage of a binary conv's 0/1 ``bits`` (co, ci, kh, kw): the sizes of every
    encoding and the one chosen (``"auto"``: the smallest), with its streams."""
    co = bits.shape[0]
    rows = bits.reshape(co, -1).astype(bool)
    n_taps = rows.shape[1]
    ch, tap = np.nonzero(rows)  # row-major: taps ascending within each channel
    ones = int(tap.size)
    per_ch = rows.sum(1)
    # sparse, as indices: ones x (1, 2 or 4 bytes) + a start per channel
    idx_t, idx_b = _uint_type(max(n_taps - 1, 0))
    start_t, start_b = _uint_type(ones)
    index_bytes = ones * idx_b + (co + 1) * start_b
    # sparse, as gaps: the zeros before each 1-bit in bytes, 255 meaning "255 more"
    prev = np.where(np.r_[True, ch[1:] != ch[:-1]], -1, np.r_[-1, tap[:-1]])
    gap = tap - prev - 1
    nbytes = gap // 255 + 1
    gstream = np.full(int(nbytes.sum()), 255, np.int64)
    gstream[np.cumsum(nbytes) - 1] = gap % 255
    gper_ch = np.bincount(ch, weights=nbytes, minlength=co).astype(np.int64)
    gstart_t, gstart_b = _uint_type(gstream.size)
    gap_bytes = gstream.size + (co + 1) * gstart_b
    sparse_bytes = min(index_bytes, gap_bytes)
    packed_bytes = (bits.size + 7) // 8
    fmt = binary_format if binary_format != "auto" else (
        "sparse" if sparse_bytes <= packed_bytes else "packed")
    zero_k = float((bits.reshape(co * bits.shape[1], -1).max(1) == 0).mean())
    out = {"shape": list(bits.shape), "weights": int(bits.size), "ones": ones,
           "max_ones": int(per_ch.max()) if co else 1, "zero_kernels": zero_k,
           "format": fmt, "sparse_bytes": sparse_bytes, "packed_bytes": packed_bytes}
    if fmt == "sparse" and gap_bytes < index_bytes:
        starts = np.concatenate([[0], np.cumsum(gper_ch)])
        out.update(encoding="gap8", code=8, stream=("uint8_t", 1, gstream),
                   start=(gstart_t, gstart_b, starts))
    elif fmt == "sparse":
        starts = np.concatenate([[0], np.cumsum(per_ch)])
        out.update(encoding=f"idx{8 * idx_b}", code=idx_b, stream=(idx_t, idx_b, tap),
                   start=(start_t, start_b, starts))
    else:
        packed = np.packbits(bits.reshape(-1).astype(np.uint8), bitorder="little")
        out.update(encoding="packed", code=0, stream=("uint8_t", 1, packed), start=None)
    return out


# -- the generator -----------------------------------------------------------------------------

class _Emitter:
    """The model file's constants, shared by the node lowerings."""

    def __init__(self, binary_format: str, values: bool):
        self.fmt = binary_format
        self.values = values
        self.data: list[str] = []
        self.const_bytes = 0
        self.layers: list[dict[str, Any]] = []
        self.max_ones = 0
        self.sources: dict[str, str] = {}  # op -> its OpSpec.c_source, once

    def farr(self, name: str, arr: np.ndarray | None) -> str:
        if arr is None:
            return "0"
        flat = np.asarray(arr, np.float32).reshape(-1)
        self.const_bytes += 4 * flat.size
        if not self.values:
            return name
        self.data.append(f"SBNN_WEIGHT_ATTR static const float {name}[{max(flat.size, 1)}] = {{\n"
                         f"{_rows([_flt(v) for v in flat], 8)}\n}};")
        return name

    def uarr(self, name: str, ctype: str, nbytes: int, vals: np.ndarray) -> str:
        vals = np.asarray(vals).reshape(-1)
        self.const_bytes += nbytes * vals.size
        if not vals.size:
            return "0"
        self.data.append(f"SBNN_WEIGHT_ATTR static const {ctype} {name}[{vals.size}] = {{\n"
                         f"{_rows([str(int(v)) for v in vals], 16)}\n}};")
        return name


class CNode:
    """What a node's C lowering (``OpSpec.c``) sees: the node, its shapes, the C expressions of
    its input and output pointers, and helpers that emit constants. It returns one statement."""

    def __init__(self, em: _Emitter, g: Graph, shapes, plan: _Plan, i: int, x: list[str],
                 y: str, sc: dict[str, str], res: str | None):
        self.em, self.g, self.plan = em, g, plan
        self.index, self.node = i, g.nodes[i]
        self.ins = [shapes[j] for j in self.node.inputs]
        self.out = shapes[i]
        self.shapes = shapes
        self.x, self.y, self.sc, self.res = x, y, sc, res
        self.in_map = plan.in_map[i]

    def farr(self, key: str, arr: np.ndarray | None) -> str:
        """A const float array ``L{i}_{key}`` in flash (``"0"`` for None): its C name."""
        return self.em.farr(f"L{self.index}_{key}", arr)

    @staticmethod
    def flt(v) -> str:
        return _flt(v)

    def scratch(self, key: str) -> str:
        """The arena pointer of a scratch buffer the plan gave this node (``"0"``: none)."""
        return self.sc.get(key, "0")

    def epilogue(self) -> str:
        """``plane, tmp, res, &E{i}``: the pooling or residual add fused after this conv and
        its int8-map output, as a :c:type:`sbnn_epi` (``0, 0, 0, 0``: none)."""
        i, g, plan = self.index, self.g, self.plan
        pool = plan.fused.get(i)
        binmap = plan.binmap.get(plan.fused.get(i, i))
        if pool is None and binmap is None:
            return "0, 0, 0, 0"
        f: list = [0] * 8
        if pool is not None and g.nodes[pool].op != "add":
            A, out = g.nodes[pool].attrs, self.shapes[pool]
            f = [1, A["k"], A["stride"], A["pad"], out[1], out[2],
                 int(g.nodes[pool].op == "maxpool"), int(bool(A.get("count_include_pad", 1)))]
        f.append(int(self.res is not None))
        f += [0, 0, "0"] if binmap is None else [
            1, binmap[1], self.em.farr(f"E{i}_thr", binmap[0])]
        self.em.data.append(f"static const sbnn_epi E{i} = {{" + ", ".join(map(str, f)) + "};")
        return f"{self.sc['plane']}, {self.sc.get('tmp', '0')}, {self.res or '0'}, &E{i}"

    def sb_layer(self) -> str:
        """Emit this binary conv's :c:type:`sbnn_sb_layer` with its encoded weights and
        per-channel vectors; returns ``&L{i}``."""
        i, nd, em = self.index, self.node, self.em
        P, A = nd.params, nd.attrs
        ci, h, w = self.ins[0]
        co, _, kh, kw = P["bits"].shape
        enc = encode_bits(P["bits"], em.fmt)
        em.max_ones = max(em.max_ones, enc["max_ones"], 1)
        em.layers.append({"node": i, "layer": nd.name, **{
            k: enc[k] for k in ("shape", "weights", "ones", "zero_kernels", "format",
                                "encoding", "sparse_bytes", "packed_bytes")}})
        ctype, nbytes, vals = enc["stream"]
        if enc["start"] is None:
            idx, start, sbytes, bits = "0", "0", 2, em.uarr(f"L{i}_bits", ctype, nbytes, vals)
        else:
            idx = em.uarr(f"L{i}_{'gap' if enc['code'] == 8 else 'idx'}", ctype, nbytes, vals)
            st, sbytes, svals = enc["start"]
            start, bits = em.uarr(f"L{i}_start", st, sbytes, svals), "0"
        fields = [ci, h, w, co, kh, kw, A["stride"], A["padding"], self.out[1], self.out[2],
                  enc["code"], sbytes, idx, start, bits, self.farr("eta", P["eta"]),
                  self.farr("xi", P["xi"]), self.farr("bias", P["bias"]),
                  self.farr("thr", P.get("thr")) if A["binary_input"] else "0"]
        em.data.append(f"static const sbnn_sb_layer L{i} = {{"
                       + ", ".join(str(f) for f in fields) + "};")
        return f"&L{i}"


def _lower_node(em: _Emitter, g: Graph, shapes, plan: _Plan, i: int, x, y, sc, res) -> str:
    nd = g.nodes[i]
    spec = OPS[nd.op]
    if spec.c is None:
        raise CExportError(f"node {i} ({nd.op} {nd.name!r}): op {nd.op!r} has no C lowering")
    if spec.c_source:
        em.sources.setdefault(nd.op, spec.c_source)
    return spec.c(CNode(em, g, shapes, plan, i, x, y, sc, res))


def _body(em: _Emitter, g: Graph, shapes, plan: _Plan, prefix: str) -> list[str]:
    """One kernel call per node, in order, then the copy to the caller's output."""
    fused_into = {j: i for i, j in plan.fused.items()}

    def ptr(t: int) -> str:
        s = plan.store[t]
        return "input" if s < 0 else f"(A + {plan.bufs[s].offset})"

    body = []
    for i in plan.order:
        nd = g.nodes[i]
        desc = f"    /* node {i}: {nd.op} {_comment(nd.name)} -> {shapes[i]}"
        if nd.op == "flatten":
            body.append(desc + ", aliases its input */")
            continue
        if i in fused_into:
            body.append(desc + f", fused into node {fused_into[i]} */")
            continue
        sc = {k: f"(A + {b.offset})" for k, b in plan.scratch[i].items()}
        res = ptr(plan.resid[i]) if i in plan.resid else None
        if i in plan.fused:
            j = plan.fused[i]
            desc += f" + node {j}: {g.nodes[j].op} {_comment(g.nodes[j].name)} -> {shapes[j]}"
        desc += " */"
        out_t = plan.fused.get(i, i)
        if out_t in plan.binmap:
            desc = desc[:-3] + ", written as its readers' int8 map */"
        stmt = _lower_node(em, g, shapes, plan, i, [ptr(j) for j in nd.inputs], ptr(out_t), sc,
                           res)
        body += [desc, "    " + stmt, f"    {prefix.upper()}_LAYER_DONE({i});"]
    n_out = int(np.prod(shapes[g.output]))
    body.append(f"    for (i = 0; i < {n_out}; ++i)\n        output[i] = {ptr(g.output)}[i];")
    return body


def _model_c(em: _Emitter, prefix: str, stem: str, body: list[str], cells: int) -> str:
    P = prefix.upper()
    offs = (f"    int32_t *const offs = (int32_t *)(A + {cells}); /* decoded offsets */"
            if em.max_ones else "")
    return "\n".join([
        "/* Generated by sbnn (sbnn_runtime.lower_c): one sparse-binary network in C99, the",
        "   model only: its constants, arena offsets and kernel calls (the kernels are",
        "   sbnn_micro.h and sbnn_*.c beside it). Do not edit; regenerate with",
        "   `python -m sbnn_runtime c MODEL.sbnn DIR` or `sbnn export MODEL.sbnn --c DIR`. */",
        "#include <math.h>",
        "#include <stdint.h>",
        '#include "sbnn_micro.h"',
        f'#include "{stem}.h"',
        "",
        "/* placement hooks: e.g. -DSBNN_ARENA_ATTR='__attribute__((section(\".dtcm\")))' */",
        "#ifndef SBNN_ARENA_ATTR",
        "#define SBNN_ARENA_ATTR",
        "#endif",
        "#ifndef SBNN_WEIGHT_ATTR",
        "#define SBNN_WEIGHT_ATTR",
        "#endif",
        f"/* with -DSBNN_PROFILE, {prefix}_profile(node) (the firmware's) runs after each layer */",
        "#ifdef SBNN_PROFILE",
        f"#define {P}_LAYER_DONE(node) {prefix}_profile(node)",
        "#else",
        f"#define {P}_LAYER_DONE(node) ((void)0)",
        "#endif",
        "",
        *[em.sources[k] for k in sorted(em.sources)],
        "/* -- weights (flash) -- */",
        *em.data,
        "",
        f"int {prefix}_run_arena(const float *input, float *output, void *arena)",
        "{",
        "    float *const A = (float *)arena; /* activations and scratch, by liveness */",
        *([offs] if offs else []),
        "    int i;",
        "    (void)A; /* unused when the graph needs no buffer */",
        "    if (!input || !output || !arena)",
        "        return -1;",
        f"    if ((uintptr_t)arena % {P}_ARENA_ALIGN != 0)",
        "        return -2;",
        *body,
        "    return 0;",
        "}",
        "",
        "/* the static arena of the plain entry point: a union, so that it is float and int32 */",
        f"SBNN_ARENA_ATTR static union {{ float f; int32_t i; }} {prefix}_arena["
        f"{P}_ARENA_BYTES / 4];",
        "",
        f"int {prefix}_run(const float *input, float *output)",
        "{",
        f"    return {prefix}_run_arena(input, output, {prefix}_arena);",
        "}",
        "",
    ])


def _model_h(prefix: str, n_in: int, n_out: int, chw, arena_bytes: int,
             const_bytes: int) -> str:
    P = prefix.upper()
    guard = "SBNN_MODEL_H" if prefix == "sbnn" else f"{P}_MODEL_H"
    return f"""/* Generated by sbnn (sbnn_runtime.lower_c). */
#ifndef {guard}
#define {guard}

#define {P}_INPUT_C {chw[0]}
#define {P}_INPUT_H {chw[1]}
#define {P}_INPUT_W {chw[2]}
#define {P}_INPUT_SIZE {n_in}   /* floats of one image, (C, H, W) */
#define {P}_OUTPUT_SIZE {n_out}  /* floats of its output */
#define {P}_ARENA_BYTES {arena_bytes}  /* RAM of one run: activations, scratch, offsets */
#define {P}_ARENA_ALIGN {ARENA_ALIGN}  /* bytes: the arena's address is a multiple of it */
#define {P}_WEIGHT_BYTES {const_bytes}  /* const weights and vectors (flash) */

#ifdef __cplusplus
extern "C" {{
#endif

/* Runs the model on one image: input[{P}_INPUT_SIZE] -> output[{P}_OUTPUT_SIZE], in a
   static arena of {P}_ARENA_BYTES. Returns 0 on success, -1 on a NULL pointer. Not
   reentrant: for two runs at once, give each its own arena through {prefix}_run_arena. */
int {prefix}_run(const float *input, float *output);

/* The same in the caller's arena: {P}_ARENA_BYTES bytes at an address that is a multiple
   of {P}_ARENA_ALIGN, e.g. `static float arena[{P}_ARENA_BYTES / 4];`. It holds all the
   mutable state of the run and nothing is written outside it, input and output aside.
   Returns 0, -1 on a NULL pointer or -2 on a misaligned arena (then nothing is written). */
int {prefix}_run_arena(const float *input, float *output, void *arena);

#ifdef SBNN_PROFILE
/* defined by the firmware when {prefix}.c is built with -DSBNN_PROFILE: called after each
   layer with its node number (see the comments in the .c file), e.g. to read a cycle counter */
void {prefix}_profile(int node);
#endif

#ifdef __cplusplus
}}
#endif

#endif /* {guard} */
"""


def generate_c(graph: Graph, binary_format: str = "auto", *, name: str | None = None,
               values: bool = True) -> CModel:
    """Lower ``graph`` to C99 source (nothing written). ``binary_format``: ``"auto"`` (per
    layer, the smaller of sparse and packed), or force ``"sparse"`` / ``"packed"``. ``name``:
    the symbol prefix and file stem (see :func:`check_name`). ``values=False`` leaves the float
    arrays out (the source does not compile): sizes only, fast on large float models."""
    if binary_format not in BINARY_FORMATS:
        raise ValueError(f"binary_format must be one of {BINARY_FORMATS}, "
                         f"got {binary_format!r}")
    prefix, stem = check_name(name)
    try:
        shapes = infer_shapes(graph)
    except ValueError as exc:
        raise CExportError(f"invalid graph: {exc}") from None
    g = _fold_affine_linear(graph, shapes)
    plan = _plan(g, shapes)
    em = _Emitter(binary_format, values)
    body = _body(em, g, shapes, plan, prefix)
    c, h, w = g.input_shape
    n_out = int(np.prod(shapes[g.output]))
    arena_bytes = 4 * plan.cells + 4 * em.max_ones
    model_c = _model_c(em, prefix, stem, body, plan.cells)
    model_h = _model_h(prefix, c * h * w, n_out, (c, h, w), arena_bytes, em.const_bytes)
    return CModel(prefix, stem, model_c, model_h, c * h * w, n_out, arena_bytes,
                  em.const_bytes, em.layers)


def export_c(graph: Graph, out_dir: str | os.PathLike, binary_format: str = "auto", *,
             name: str | None = None) -> CModel:
    """Write ``N.c``, ``N.h`` (``model.c``/``model.h`` without a name) and the kernels into
    ``out_dir`` (each file atomically; the folder is made) and return the :class:`CModel`."""
    cm = generate_c(graph, binary_format, name=name)
    kernels = kernel_files()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for fname, data in kernels.items():
        atomic_write(out / fname, data)
    atomic_write(out / f"{cm.stem}.h", cm.model_h.encode())
    atomic_write(out / f"{cm.stem}.c", cm.model_c.encode())
    return cm


def format_sizes(cm: CModel) -> str:
    """Per binary conv: the storage chosen and its bytes; then the model's flash and RAM."""
    lines = []
    if cm.layers:
        lines.append(f"{'layer':<28} {'weights':>9} {'ones':>7} {'0-kern':>7} {'format':>7} "
                     f"{'sparse B':>9} {'packed B':>9}")
    for r in cm.layers:
        lines.append(f"{r['layer'][:28]:<28} {r['weights']:>9} {r['ones']:>7} "
                     f"{r['zero_kernels']:>7.3f} {r['encoding']:>7} {r['sparse_bytes']:>9} "
                     f"{r['packed_bytes']:>9}")
    lines.append(f"C model {cm.stem}.c ({cm.name}_run): weights {cm.const_bytes} B (flash), "
                 f"arena {cm.arena_bytes} B (RAM, {ARENA_ALIGN}-byte aligned), input "
                 f"{cm.input_size} floats, output {cm.output_size} floats")
    return "\n".join(lines)


def export_file(model: str | os.PathLike, out_dir: str | os.PathLike, name: str | None = None,
                binary_format: str = "auto") -> tuple[CModel, str]:
    """The C export of a ``.sbnn`` file, as both command lines run it: checks ``name`` first
    (a bad one writes nothing), loads the file, writes the C files; returns the
    :class:`CModel` and the report they print (the graph summary, then the C sizes)."""
    from sbnn_runtime import fileformat
    from sbnn_runtime.summary import format_summary, summarize

    check_name(name)
    graph = fileformat.load(model)
    cm = export_c(graph, out_dir, binary_format, name=name)
    report = "\n".join([format_summary(summarize(model)), format_sizes(cm),
                        f"wrote {os.path.join(os.fspath(out_dir), cm.stem + '.c')}, "
                        f"{cm.stem}.h and the kernels (sbnn_micro.h, sbnn_*.c)"])
    return cm, report
