"""The ``.sbnn`` model file: a versioned, checksummed, self-describing graph plus binary blobs.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"\\x89SBNN\\r\\n\\x1a"  (PNG-style: catches text-mode and 7-bit mangling)
    8       2     major format version (a reader refuses any other major)
    10      2     minor format version (additions a reader of the same major may ignore)
    12      4     header length H in bytes
    16      8     payload length P in bytes
    24      32    SHA-256 of the H + P bytes that follow
    56      H     header: UTF-8 JSON object (the graph, see below)
    56+H    P     payload: the blobs, addressed by (offset, length) from the header

The file is exactly ``56 + H + P`` bytes long. The header describes the graph as a list of
nodes; node ``i`` produces tensor ``i`` and may read only tensors ``< i`` (so it is a DAG in
topological order). Each node has an ``op``, its attributes and its ``params``: named blob
references ``{"offset", "length", "dtype", "shape", "encoding", ...}``.

Encodings:

``"raw"``
    The array's bytes, C order, little-endian ``float32`` (``"f32"``) or ``uint8`` (``"u8"``).
``"rice_gaps"``
    A 0/1 ``uint8`` tensor (the bits of a sparse-binary layer, C order ``(C_out, C_in, kh, kw)``)
    coded by the run lengths of 0-bits before each 1-bit, with a Rice code of parameter ``k``
    (``"k"``): run ``g`` is ``q = g >> k`` in unary (q one-bits and a 0-bit) in the unary stream,
    and ``g & (2^k - 1)`` as ``k`` bits in the remainder stream. The blob is the unary stream
    (``"unary_bytes"`` bytes) followed by the remainder stream, both packed little-endian bit
    order. ``"ones"`` is the number of 1-bits; 0-bits after the last 1-bit are implied. With
    ``"flip": true`` the coded tensor is ``1 - bits`` (used when ones are the majority).
    An all-zero kernel has no record of its own: it only lengthens a run (about ``9 / 2^k``
    unary bits). For i.i.d. bits at ones fraction p, the best k costs about
    ``(1 - p) / 2^k + (k + 1) p`` bits per weight, within 10% of H(p) for p in [0.005, 0.5]
    (Rice codes are near-optimal for geometric run lengths, Gallager & Van Voorhis 1975).

Reading never trusts the file: sizes are checked against the bytes actually present, the
checksum is verified before the header is parsed, and every node is checked against the
shapes of its inputs, so that a truncated, bit-flipped, wrong-version or foreign file raises
:class:`SBNNFormatError` (a ``ValueError``) saying what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sbnn._io import atomic_write

__all__ = [
    "MAGIC",
    "VERSION",
    "SBNNFormatError",
    "Graph",
    "Node",
    "OPS",
    "save",
    "load",
    "dumps",
    "loads",
    "encode_bits",
    "decode_bits",
    "infer_shapes",
]

MAGIC = b"\x89SBNN\r\n\x1a"
VERSION = (1, 0)
_PREFIX = struct.Struct("<8sHHIQ32s")  # magic, major, minor, header len, payload len, sha256
MAX_HEADER = 64 << 20  # 64 MiB of JSON is far more than any graph needs
MAX_ELEMS = 1 << 28  # per tensor: guards allocations driven by header numbers
MAX_NODES = 100_000
_DTYPES = {"f32": np.dtype("<f4"), "u8": np.dtype("u1")}


class SBNNFormatError(ValueError):
    """A ``.sbnn`` file (or bytes) is not a valid model file; the message says what is wrong."""


# -- the graph -------------------------------------------------------------------------------


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

    def shapes(self) -> list[tuple[int, ...]]:
        """Per-node output shape without the batch dimension (checks the graph)."""
        return infer_shapes(self)


# Per op: (number of inputs, {attr: type}, {param: (dtype, required)}).
_I, _F, _B = int, float, bool
OPS: dict[str, tuple[int, dict[str, type], dict[str, tuple[str, bool]]]] = {
    "input": (0, {"shape": list}, {}),
    "conv2d": (1, {"stride": _I, "padding": _I}, {"weight": ("f32", True), "bias": ("f32", False)}),
    "sbconv2d": (
        1,
        {"stride": _I, "padding": _I, "binary_input": _B},
        {
            "bits": ("u8", True),
            "eta": ("f32", True),
            "xi": ("f32", True),
            "bias": ("f32", True),
            "thr": ("f32", False),
        },
    ),
    "affine": (1, {}, {"scale": ("f32", True), "shift": ("f32", True)}),
    "hardtanh": (1, {"lo": _F, "hi": _F}, {}),
    "relu": (1, {}, {}),
    "rprelu": (1, {}, {"shift_in": ("f32", True), "slope": ("f32", True),
                       "shift_out": ("f32", True)}),
    "add": (2, {}, {}),
    "avgpool": (1, {"k": _I, "stride": _I, "pad": _I, "count_include_pad": _B}, {}),
    "maxpool": (1, {"k": _I, "stride": _I, "pad": _I}, {}),
    "global_avgpool": (1, {}, {}),
    "flatten": (1, {}, {}),
    "linear": (1, {}, {"weight": ("f32", True), "bias": ("f32", False)}),
}


def _err(msg: str) -> SBNNFormatError:
    return SBNNFormatError(msg)


def _pool_out(n: int, k: int, s: int, p: int, where: str) -> int:
    if k < 1 or s < 1 or p < 0 or 2 * p > k:
        raise _err(f"{where}: bad window k={k} stride={s} pad={p}")
    out = (n + 2 * p - k) // s + 1
    if out < 1:
        raise _err(f"{where}: window {k} with pad {p} does not fit input size {n}")
    return out


def _expect(where: str, name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    if tuple(arr.shape) != tuple(shape):
        raise _err(f"{where}: param {name!r} has shape {tuple(arr.shape)}, expected {shape}")


def infer_shapes(graph: Graph) -> list[tuple[int, ...]]:
    """Check every node against its inputs and return the per-node shapes (no batch dim).

    Raises :class:`SBNNFormatError` naming the node when anything is inconsistent, so the
    native engine only ever sees graphs whose parameter shapes match their inputs.
    """
    nodes = graph.nodes
    if not nodes or nodes[0].op != "input":
        raise _err("graph must start with an 'input' node")
    if len(nodes) > MAX_NODES:
        raise _err(f"graph has {len(nodes)} nodes (limit {MAX_NODES})")
    shapes: list[tuple[int, ...]] = []
    for i, nd in enumerate(nodes):
        where = f"node {i} ({nd.op} {nd.name!r})"
        if nd.op not in OPS:
            raise _err(f"{where}: unknown op; known ops: {', '.join(OPS)}")
        n_in, attr_types, param_spec = OPS[nd.op]
        if len(nd.inputs) != n_in or any(
            not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < i for j in nd.inputs
        ):
            raise _err(f"{where}: needs {n_in} input(s) among earlier nodes, got {nd.inputs}")
        for a, t in attr_types.items():
            v = nd.attrs.get(a)
            ok = isinstance(v, t) and not (t is int and isinstance(v, bool))
            if t is float and isinstance(v, int) and not isinstance(v, bool):
                ok = True
            if ok and t is int and not 0 <= v <= 1 << 16:
                ok = False  # strides, paddings, windows: small non-negative ints
            if not ok or (t is float and not math.isfinite(v)):
                raise _err(f"{where}: attribute {a!r} must be {t.__name__}, got {v!r}")
        for p, (dt, required) in param_spec.items():
            arr = nd.params.get(p)
            if arr is None:
                if required:
                    raise _err(f"{where}: missing param {p!r}")
                continue
            if not isinstance(arr, np.ndarray) or arr.dtype != _DTYPES[dt]:
                raise _err(f"{where}: param {p!r} must be a {dt} array")
        extra = set(nd.params) - set(param_spec)
        if extra:
            raise _err(f"{where}: unexpected params {sorted(extra)}")
        ins = [shapes[j] for j in nd.inputs]
        P = nd.params
        if nd.op == "input":
            s = nd.attrs["shape"]
            if len(s) != 3 or not all(isinstance(v, int) and 1 <= v <= 1 << 16 for v in s):
                raise _err(f"{where}: input shape must be 3 positive ints (C, H, W), got {s}")
            out: tuple[int, ...] = tuple(s)
        elif nd.op in ("conv2d", "sbconv2d"):
            if len(ins[0]) != 3:
                raise _err(f"{where}: needs a (C, H, W) input, got {ins[0]}")
            c, h, w = ins[0]
            wt = P["weight"] if nd.op == "conv2d" else P["bits"]
            if wt.ndim != 4 or wt.shape[1] != c:
                raise _err(f"{where}: weight shape {wt.shape} does not take {c} input channels")
            co, _, kh, kw = wt.shape
            st, pad = nd.attrs["stride"], nd.attrs["padding"]
            if co < 1 or st < 1 or not 0 <= pad < max(kh, kw, 1) or min(kh, kw) < 1:
                raise _err(f"{where}: bad kernel {kh}x{kw}, stride {st} or padding {pad}")
            oh, ow = (h + 2 * pad - kh) // st + 1, (w + 2 * pad - kw) // st + 1
            if min(oh, ow) < 1:
                raise _err(f"{where}: kernel {kh}x{kw} pad {pad} does not fit input {h}x{w}")
            names = ["bias"] if nd.op == "conv2d" else ["eta", "xi", "bias"]
            for p in names:
                if p in P:
                    _expect(where, p, P[p], (co,))
            if nd.op == "sbconv2d":
                if P["bits"].size and int(P["bits"].max()) > 1:
                    raise _err(f"{where}: bits must be 0/1")
                if "thr" in P:
                    _expect(where, "thr", P["thr"], (c,))
            out = (co, oh, ow)
        elif nd.op in ("affine", "rprelu"):
            c = ins[0][0]
            for p in P:
                _expect(where, p, P[p], (c,))
            out = ins[0]
        elif nd.op == "add":
            if ins[0] != ins[1]:
                raise _err(f"{where}: adds shapes {ins[0]} and {ins[1]}")
            out = ins[0]
        elif nd.op in ("avgpool", "maxpool"):
            if len(ins[0]) != 3:
                raise _err(f"{where}: needs a (C, H, W) input, got {ins[0]}")
            c, h, w = ins[0]
            k, st, pad = nd.attrs["k"], nd.attrs["stride"], nd.attrs["pad"]
            out = (c, _pool_out(h, k, st, pad, where), _pool_out(w, k, st, pad, where))
        elif nd.op == "global_avgpool":
            if len(ins[0]) != 3:
                raise _err(f"{where}: needs a (C, H, W) input, got {ins[0]}")
            out = (ins[0][0], 1, 1)
        elif nd.op == "flatten":
            out = (int(np.prod(ins[0])),)
        elif nd.op == "linear":
            wt = P["weight"]
            if len(ins[0]) != 1 or wt.ndim != 2 or wt.shape[1] != ins[0][0] or wt.shape[0] < 1:
                raise _err(f"{where}: weight {wt.shape} does not fit a flat input {ins[0]}")
            if "bias" in P:
                _expect(where, "bias", P["bias"], (wt.shape[0],))
            out = (wt.shape[0],)
        else:  # hardtanh, relu
            if nd.op == "hardtanh" and not nd.attrs["lo"] <= nd.attrs["hi"]:
                raise _err(f"{where}: lo > hi")
            out = ins[0]
        if int(np.prod(out)) > MAX_ELEMS:
            raise _err(f"{where}: output of {out} elements is too large")
        shapes.append(out)
    if not isinstance(graph.output, int) or not 0 <= graph.output < len(nodes):
        raise _err(f"output {graph.output!r} is not a node index")
    return shapes


# -- sparse-binary bits ----------------------------------------------------------------------


def _rice_cost(gaps: np.ndarray, k: int) -> int:
    return int((gaps >> k).sum()) + (k + 1) * gaps.size


def encode_bits(bits: np.ndarray) -> tuple[bytes, dict[str, Any]]:
    """Rice-code the run lengths of a 0/1 array; returns (blob, encoding fields for the header)."""
    flat = np.ascontiguousarray(bits, dtype=np.uint8).reshape(-1)
    flip = bool(flat.sum() * 2 > flat.size)
    if flip:
        flat = 1 - flat
    pos = np.flatnonzero(flat).astype(np.int64)
    gaps = np.diff(pos, prepend=-1) - 1  # 0-bits before each 1-bit
    k = min(range(0, 40), key=lambda kk: _rice_cost(gaps, kk)) if gaps.size else 0
    q = gaps >> k
    # unary stream: q ones then a zero, for each run
    ulen = int(q.sum()) + gaps.size
    unary = np.ones(ulen, dtype=np.uint8)
    unary[np.cumsum(q + 1) - 1] = 0
    rem = ((gaps[:, None] >> np.arange(k, dtype=np.int64)) & 1).astype(np.uint8).reshape(-1)
    ub = np.packbits(unary, bitorder="little").tobytes()
    rb = np.packbits(rem, bitorder="little").tobytes()
    fields = {"encoding": "rice_gaps", "k": k, "ones": int(gaps.size), "flip": flip,
              "unary_bytes": len(ub)}
    return ub + rb, fields


def decode_bits(blob: bytes, shape: tuple[int, ...], fields: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_bits`; raises :class:`SBNNFormatError` on inconsistent data."""
    n = int(np.prod(shape)) if shape else 1
    k, ones, flip, ub = (fields.get(f) for f in ("k", "ones", "flip", "unary_bytes"))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (k, ones, ub)) or not (
        isinstance(flip, bool)
    ):
        raise _err("rice_gaps blob: 'k', 'ones', 'unary_bytes' must be ints and 'flip' a bool")
    if not 0 <= k < 40 or not 0 <= ones <= n or not 0 <= ub <= len(blob):
        raise _err(f"rice_gaps blob: bad k={k}, ones={ones} or unary_bytes={ub} for {n} bits")
    if len(blob) - ub != (ones * k + 7) // 8:
        raise _err(f"rice_gaps blob: remainder stream is {len(blob) - ub} bytes, "
                   f"expected {(ones * k + 7) // 8}")
    unary = np.unpackbits(np.frombuffer(blob, np.uint8, ub), bitorder="little")
    zeros = np.flatnonzero(unary == 0)
    if zeros.size < ones:
        raise _err(f"rice_gaps blob: unary stream holds {zeros.size} runs, expected {ones}")
    q = np.diff(zeros[:ones], prepend=-1) - 1
    rem_bits = np.unpackbits(np.frombuffer(blob, np.uint8, offset=ub), bitorder="little")
    rem_bits = rem_bits[: ones * k].reshape(ones, k).astype(np.int64)
    r = rem_bits @ (np.int64(1) << np.arange(k, dtype=np.int64)) if k else 0
    gaps = (q.astype(np.int64) << k) + r
    pos = np.cumsum(gaps + 1) - 1
    if ones and (pos[-1] >= n or pos[-1] < 0):
        raise _err(f"rice_gaps blob: runs reach bit {int(pos[-1])} of a {n}-bit tensor")
    out = np.zeros(n, dtype=np.uint8)
    out[pos] = 1
    if flip:
        out = 1 - out
    return out.reshape(shape)


# -- writing ---------------------------------------------------------------------------------


def dumps(graph: Graph) -> bytes:
    """Serialise a graph (checked first) to the bytes of a ``.sbnn`` file."""
    infer_shapes(graph)
    payload = bytearray()
    jnodes = []
    for nd in graph.nodes:
        jparams = {}
        for pname, arr in nd.params.items():
            ref: dict[str, Any] = {"shape": list(arr.shape)}
            if nd.op == "sbconv2d" and pname == "bits":
                blob, fields = encode_bits(arr)
                ref.update(dtype="u8", **fields)
            else:
                dt = "u8" if arr.dtype == np.uint8 else "f32"
                blob = np.ascontiguousarray(arr, dtype=_DTYPES[dt]).tobytes()
                ref.update(dtype=dt, encoding="raw")
            ref.update(offset=len(payload), length=len(blob))
            payload += blob
            payload += b"\0" * (-len(payload) % 8)  # 8-byte alignment of every blob
            jparams[pname] = ref
        jnodes.append({"op": nd.op, "name": nd.name, "inputs": list(nd.inputs),
                       "attrs": dict(nd.attrs), "params": jparams})
    header = json.dumps(
        {"format": "sbnn", "version": list(VERSION), "metadata": graph.metadata,
         "nodes": jnodes, "output": graph.output},
        separators=(",", ":"), allow_nan=False,
    ).encode()
    body = header + bytes(payload)
    sha = hashlib.sha256(body).digest()
    return _PREFIX.pack(MAGIC, VERSION[0], VERSION[1], len(header), len(payload), sha) + body


def save(graph: Graph, path: str | os.PathLike) -> None:
    """Write ``graph`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    data = dumps(graph)
    atomic_write(path, data)


# -- reading ---------------------------------------------------------------------------------


def _parse_ref(ref: Any, payload: memoryview, where: str):
    if not isinstance(ref, dict):
        raise _err(f"{where}: blob reference must be an object")
    shape, off, length = ref.get("shape"), ref.get("offset"), ref.get("length")
    dt, enc = ref.get("dtype"), ref.get("encoding")
    if not isinstance(shape, list) or len(shape) > 8 or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_ELEMS for v in shape
    ):
        raise _err(f"{where}: bad shape {shape!r}")
    n = math.prod(shape)
    if n > MAX_ELEMS:
        raise _err(f"{where}: {n} elements exceed the limit of {MAX_ELEMS}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (off, length)) or not (
        0 <= off and 0 <= length and off + length <= len(payload)
    ):
        raise _err(f"{where}: blob [{off!r}, +{length!r}) lies outside the {len(payload)}-byte "
                   "payload")
    if not isinstance(dt, str) or dt not in _DTYPES:
        raise _err(f"{where}: unknown dtype {dt!r}; known: {', '.join(_DTYPES)}")
    blob = payload[off: off + length]
    if enc == "raw":
        if length != n * _DTYPES[dt].itemsize:
            raise _err(f"{where}: raw blob of {length} bytes for shape {shape} {dt}")
        return np.frombuffer(blob, _DTYPES[dt]).reshape(shape).copy()
    if enc == "rice_gaps" and dt == "u8":
        return decode_bits(bytes(blob), tuple(shape), ref)
    raise _err(f"{where}: unknown encoding {enc!r} for dtype {dt!r}")


def loads(data: bytes | bytearray | memoryview) -> Graph:
    """Parse and check the bytes of a ``.sbnn`` file; see :class:`SBNNFormatError`."""
    mv = memoryview(data).cast("B")
    if len(mv) < _PREFIX.size:
        if bytes(mv[: len(MAGIC)]) != MAGIC[: len(mv)]:
            raise _err("not an sbnn file (bad magic)")
        raise _err(f"truncated: {len(mv)} bytes, the fixed prefix alone is {_PREFIX.size}")
    magic, major, minor, hlen, plen, sha = _PREFIX.unpack_from(mv)
    if magic != MAGIC:
        raise _err(f"not an sbnn file (magic {magic!r}, expected {MAGIC!r})")
    if major != VERSION[0]:
        raise _err(f"format version {major}.{minor} is not supported (this reader: "
                   f"{VERSION[0]}.x); re-export the model with this sbnn version")
    if hlen > MAX_HEADER:
        raise _err(f"header length {hlen} exceeds the {MAX_HEADER}-byte limit")
    expected = _PREFIX.size + hlen + plen
    if len(mv) != expected:
        what = "truncated" if len(mv) < expected else "trailing bytes"
        raise _err(f"{what}: file has {len(mv)} bytes, its prefix says {expected}")
    body = mv[_PREFIX.size:]
    if hashlib.sha256(body).digest() != sha:
        raise _err("checksum mismatch: the file is corrupted (SHA-256 of header+payload)")
    try:
        head = json.loads(bytes(body[:hlen]).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, huge int literals
        raise _err(f"header is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(head, dict) or head.get("format") != "sbnn":
        raise _err("header is not an sbnn graph object")
    payload = body[hlen:]
    jnodes = head.get("nodes")
    if not isinstance(jnodes, list) or not jnodes or len(jnodes) > MAX_NODES:
        raise _err("header 'nodes' must be a non-empty list")
    nodes = []
    for i, jn in enumerate(jnodes):
        if not isinstance(jn, dict):
            raise _err(f"node {i} is not an object")
        op, name = jn.get("op"), jn.get("name", "")
        inputs, attrs, params = jn.get("inputs"), jn.get("attrs"), jn.get("params")
        if not isinstance(op, str) or not isinstance(name, str) or not isinstance(inputs, list) \
                or not isinstance(attrs, dict) or not isinstance(params, dict):
            raise _err(f"node {i}: needs 'op' (str), 'inputs' (list), 'attrs' and 'params'")
        if op not in OPS:
            raise _err(f"node {i}: unknown op {op!r}; known ops: {', '.join(OPS)}")
        arrays = {p: _parse_ref(ref, payload, f"node {i} ({op}) param {p!r}")
                  for p, ref in params.items()}
        nodes.append(Node(op, inputs, attrs, arrays, name))
    metadata = head.get("metadata", {})
    if not isinstance(metadata, dict):
        raise _err("header 'metadata' must be an object")
    graph = Graph(nodes, head.get("output"), metadata)  # type: ignore[arg-type]
    infer_shapes(graph)
    return graph


def load(path: str | os.PathLike) -> Graph:
    """Read and check a ``.sbnn`` file."""
    with open(path, "rb") as f:
        head = f.read(_PREFIX.size)
        if len(head) == _PREFIX.size and head[:8] == MAGIC:
            _, _, _, hlen, plen, _ = _PREFIX.unpack(head)
            size = os.fstat(f.fileno()).st_size
            if size != _PREFIX.size + hlen + plen:  # check before reading a bogus size
                what = "truncated" if size < _PREFIX.size + hlen + plen else "trailing bytes"
                raise _err(f"{what}: {path} has {size} bytes, its prefix says "
                           f"{_PREFIX.size + hlen + plen}")
        data = head + f.read()
    return loads(data)
