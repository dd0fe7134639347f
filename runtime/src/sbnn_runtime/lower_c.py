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

The plan is :func:`sbnn_runtime.passes.plan` (target ``"c"``): the flat affine folded into its
linear, a conv's pooling or residual add run channel by channel in its epilogue, conv outputs
read only by binary convs that binarise alike stored as their +-1 int8 map, each binary conv's
weight encoding (gaps, indices or packed bits), and its memory (:func:`passes.plan_buffers`:
which arena offset holds each tensor and each step's scratch, in place or aliased where the op
table's ``c_alias``, ``c_inplace`` and ``c_input_first`` allow it). The generator decides none
of this: it writes the plan's offsets.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sbnn_runtime import passes
from sbnn_runtime.files import atomic_write
from sbnn_runtime.ops import OPS, Graph, conv_geometry, lowering

__all__ = ["CExportError", "BINARY_FORMATS", "ARENA_ALIGN", "CModel", "CNode", "check_name",
           "generate_c", "export_c", "export_file", "format_sizes", "kernel_files"]

BINARY_FORMATS = passes.BINARY_FORMATS
ARENA_ALIGN = 4  # bytes: every arena cell holds a float, an int32 or four int8
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


def _comment(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:\- ]", "_", str(text))[:60]


# -- the generator -----------------------------------------------------------------------------

class _Emitter:
    """The model file's constants, shared by the node lowerings."""

    def __init__(self, binary_format: str, values: bool):
        self.fmt = binary_format
        self.values = values
        self.data: list[str] = []
        self.const_bytes = 0
        self.layers: list[dict[str, Any]] = []
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
    """What a node's C lowering (``OpSpec.lower_c``) sees: the node, its shapes, the C
    expressions of its input and output pointers, and helpers that emit constants. It returns
    one statement."""

    def __init__(self, em: _Emitter, pl: passes.Plan, k: int, x: list[str], y: str,
                 sc: dict[str, str], res: str | None):
        self.em, self.plan, self.step = em, pl, pl.steps[k]
        self.index = self.step.node
        self.node = pl.graph.nodes[self.index]
        self.shapes = pl.shapes
        self.ins = [pl.shapes[j] for j in self.node.inputs]
        self.out = pl.shapes[self.index]
        self.x, self.y, self.sc, self.res = x, y, sc, res
        self.in_map = pl.memory.in_map[self.index]

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
        i, st, g = self.index, self.step, self.plan.graph
        binmap = self.plan.memory.binmaps.get(st.output)
        if not st.fused and binmap is None:
            return "0, 0, 0, 0"
        f: list = [0] * 8
        if st.fused and st.residual is None:  # a pooling: its op says how (OpSpec.c_epilogue)
            pool = g.nodes[st.fused[0]]
            f = [1, *OPS[pool.op].c_epilogue(pool, self.shapes[st.output])]
        f.append(int(self.res is not None))
        f += [0, 0, "0"] if binmap is None else [
            1, binmap[1], self.em.farr(f"E{i}_thr", binmap[0])]
        self.em.data.append(f"static const sbnn_epi E{i} = {{" + ", ".join(map(str, f)) + "};")
        return f"{self.sc['plane']}, {self.sc.get('tmp', '0')}, {self.res or '0'}, &E{i}"

    def _layer_row(self, enc: passes.Encoding) -> None:
        nd = self.node
        self.em.layers.append({"node": self.index, "layer": nd.name,
                               "shape": list(nd.params["bits"].shape),
                               "weights": int(nd.params["bits"].size), "ones": enc.ones,
                               "zero_kernels": enc.zero_kernels, "format": enc.format,
                               "encoding": enc.kind, "sparse_bytes": enc.sparse_bytes,
                               "packed_bytes": enc.packed_bytes})

    def sb_bits(self) -> str:
        """Emit this binary conv's packed bits (the plan's encoding of a grouped, dilated or
        non-square one) as ``L{i}_bits``; returns the C name."""
        enc = self.plan.encodings[self.index]
        self._layer_row(enc)
        return self.em.uarr(f"L{self.index}_bits", "uint8_t", 1, enc.data)

    def sb_layer(self) -> str:
        """Emit this binary conv's :c:type:`sbnn_sb_layer` with the weight encoding the plan
        chose and its per-channel vectors; returns ``&L{i}``."""
        i, nd, em = self.index, self.node, self.em
        P, A = nd.params, nd.attrs
        ci, h, w = self.ins[0]
        co, _, kh, kw = P["bits"].shape
        enc = self.plan.encodings[i]
        self._layer_row(enc)
        ctype = _UINT[enc.data_bytes]
        if enc.starts is None:
            idx, start, sbytes = "0", "0", 2
            bits = em.uarr(f"L{i}_bits", ctype, enc.data_bytes, enc.data)
        else:
            idx = em.uarr(f"L{i}_{'gap' if enc.kind == 'gap8' else 'idx'}", ctype,
                          enc.data_bytes, enc.data)
            sbytes = enc.start_bytes
            start, bits = em.uarr(f"L{i}_start", _UINT[sbytes], sbytes, enc.starts), "0"
        geom = conv_geometry(nd)  # a square, ungrouped one (ops._is_fast_bconv)
        fields = [ci, h, w, co, kh, kw, geom[0], geom[2], self.out[1], self.out[2],
                  _CODE[enc.kind], sbytes, idx, start, bits, self.farr("eta", P["eta"]),
                  self.farr("xi", P["xi"]), self.farr("bias", P["bias"]),
                  self.farr("thr", P.get("thr")) if A["binary_input"] else "0"]
        em.data.append(f"static const sbnn_sb_layer L{i} = {{"
                       + ", ".join(str(f) for f in fields) + "};")
        return f"&L{i}"


_UINT = {1: "uint8_t", 2: "uint16_t", 4: "uint32_t"}
_CODE = {"packed": 0, "idx8": 1, "idx16": 2, "idx32": 4, "gap8": 8}  # sbnn_micro.h's SBNN_*


def _body(em: _Emitter, pl: passes.Plan, prefix: str) -> list[str]:
    """One kernel call per step of the plan, in order, then the copy to the caller's output."""
    mem = pl.memory
    g, shapes = pl.graph, pl.shapes

    def ptr(t: int) -> str:
        off = mem.offset(t)
        return "input" if off < 0 else f"(A + {off})"

    def name(i: int) -> str:
        return f"node {i}: {g.nodes[i].op} {_comment(g.nodes[i].name)} -> {shapes[i]}"

    body = []
    for k, st in enumerate(pl.steps):
        i, nd = st.node, g.nodes[st.node]
        spec = OPS[nd.op]
        if spec.c_alias:
            body.append(f"    /* {name(i)}, aliases its input */")
            continue
        desc = f"    /* {name(i)}" + "".join(f" + {name(j)}" for j in st.fused)
        if st.output in mem.binmaps:
            desc += ", written as its readers' int8 map"
        body.append(desc + " */")
        body += [f"    /* {name(j)}, fused into node {i} */" for j in st.fused]
        if spec.c_source:
            em.sources.setdefault(nd.op, spec.c_source)
        sc = {key: f"(A + {b.offset})" for key, b in mem.scratch[k].items()}
        res = ptr(st.residual) if st.residual is not None else None
        stmt = spec.lower_c(CNode(em, pl, k, [ptr(j) for j in nd.inputs], ptr(st.output), sc,
                                  res))
        body += ["    " + stmt, f"    {prefix.upper()}_LAYER_DONE({i});"]
    n_out = int(np.prod(shapes[g.output]))
    body.append(f"    for (i = 0; i < {n_out}; ++i)\n        output[i] = {ptr(g.output)}[i];")
    return body


def _model_c(em: _Emitter, prefix: str, stem: str, body: list[str], cells: int,
             tail: int) -> str:
    P = prefix.upper()
    offs = ([f"    offs = (int32_t *)(A + {cells}); /* a channel's decoded offsets */"]
            if tail else [])
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
        "    float *A;",
        *(["    int32_t *offs;"] if offs else []),
        "    int i;",
        "    if (!input || !output || !arena)",
        "        return -1;",
        f"    if ((uintptr_t)arena % {P}_ARENA_ALIGN != 0)",
        "        return -2;",
        "    A = (float *)arena; /* activations and scratch, by liveness */",
        *offs,
        "    (void)A; /* unused when the graph needs no buffer */",
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
        lowering(graph, "c")  # every op has a C lowering, or the node is named
        pl = passes.plan(graph, "c", binary_format=binary_format)
    except ValueError as exc:
        raise CExportError(f"cannot lower to C: {exc}") from None
    em = _Emitter(binary_format, values)
    body = _body(em, pl, prefix)
    c, h, w = pl.graph.input_shape
    n_out = int(np.prod(pl.shapes[pl.graph.output]))
    arena_bytes = pl.memory.nbytes  # the plan's: placed cells, then the decoded offsets
    model_c = _model_c(em, prefix, stem, body, pl.memory.arena, pl.memory.tail)
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
