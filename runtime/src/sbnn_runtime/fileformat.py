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
checksum is verified before the header is parsed, and the whole graph is checked from the
header before any blob is decoded (every node against the shapes of its inputs, with
:class:`~sbnn_runtime.ops.ShapeOnly` stand-ins for its params; every blob against the payload,
its encoding and the other blobs; the graph's work and memory against
:class:`~sbnn_runtime.ops.Limits`), so that a truncated, bit-flipped, wrong-version, foreign
or hostile file raises :class:`SBNNFormatError` (a ``ValueError``; :class:`SBNNLimitError`
past a limit) saying what is wrong, having allocated no more than the checked sizes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from typing import Any

import numpy as np

from sbnn_runtime.files import atomic_write
from sbnn_runtime.ops import (
    DTYPES,
    MAX_ELEMS,
    OPS,
    Graph,
    Limits,
    Node,
    SBNNFormatError,
    SBNNLimitError,
    infer_shapes,
    shape_only,
)
from sbnn_runtime.passes import graph_cost

__all__ = [
    "MAGIC",
    "VERSION",
    "SBNNFormatError",
    "SBNNLimitError",
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
    "stored_sizes",
]

MAGIC = b"\x89SBNN\r\n\x1a"
VERSION = (1, 0)
_PREFIX = struct.Struct("<8sHHIQ32s")  # magic, major, minor, header len, payload len, sha256
MAX_HEADER = 64 << 20  # 64 MiB of JSON is far more than any graph needs
MAX_NODES = 100_000
_DTYPES = DTYPES


def _err(msg: str) -> SBNNFormatError:
    return SBNNFormatError(msg)


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
    """Inverse of :func:`encode_bits`; raises :class:`SBNNFormatError` on inconsistent data.

    Decodes the streams in chunks of :data:`_DECODE_CHUNK` unary bytes, so that what it holds
    besides the output is bounded by a constant (a few tens of MiB), whatever the tensor.
    """
    n = math.prod(shape)
    k, ones, flip, ub = _check_rice(n, len(blob), fields)
    out = np.zeros(n, dtype=np.uint8)
    ubuf = np.frombuffer(blob, np.uint8, ub)
    rbuf = np.frombuffer(blob, np.uint8, offset=ub)
    weights = np.int64(1) << np.arange(k, dtype=np.int64)
    found, prev_zero, pos = 0, -1, -1  # runs decoded, unary bit of the last 0, last 1-bit
    for b0 in range(0, ub, _DECODE_CHUNK):
        if found == ones:
            break
        unary = np.unpackbits(ubuf[b0: b0 + _DECODE_CHUNK], bitorder="little")
        z = np.flatnonzero(unary == 0)[: ones - found] + 8 * b0
        del unary
        m = int(z.size)
        if not m:
            continue
        q = np.diff(z, prepend=prev_zero) - 1
        prev_zero = int(z[-1])
        del z
        if k:
            lo = found * k
            rb = np.unpackbits(rbuf[lo // 8: (lo + m * k + 7) // 8], bitorder="little")
            rb = rb[lo % 8: lo % 8 + m * k].reshape(m, k)
            r = np.zeros(m, np.int64)
            for j in range(k):
                r += rb[:, j] * weights[j]
            del rb
        else:
            r = 0
        gaps = (q << k) + r
        if int(gaps.max()) >= n:  # also keeps the cumulative sum below from overflowing
            raise _err(f"rice_gaps blob: a run of {int(gaps.max())} 0-bits in a {n}-bit tensor")
        p = pos + np.cumsum(gaps + 1)
        if p[-1] >= n:
            raise _err(f"rice_gaps blob: runs reach bit {int(p[-1])} of a {n}-bit tensor")
        out[p] = 1
        pos, found = int(p[-1]), found + m
    if found < ones:
        raise _err(f"rice_gaps blob: unary stream holds {found} runs, expected {ones}")
    if flip:
        np.bitwise_xor(out, 1, out=out)
    return out.reshape(shape)


_DECODE_CHUNK = 1 << 17  # unary bytes per chunk: up to 2^20 runs, about 40 MiB of temporaries


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
            if pname in OPS[nd.op].bit_params:
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


def _check_ref(ref: Any, plen: int, where: str) -> tuple[tuple[int, ...], str, int, int]:
    """Check a blob reference against the payload and its encoding, decoding nothing.

    Returns ``(shape, dtype, offset, length)``.
    """
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
        0 <= off and 0 <= length and off + length <= plen
    ):
        raise _err(f"{where}: blob [{off!r}, +{length!r}) lies outside the {plen}-byte "
                   "payload")
    if not isinstance(dt, str) or dt not in _DTYPES:
        raise _err(f"{where}: unknown dtype {dt!r}; known: {', '.join(_DTYPES)}")
    if enc == "raw":
        if length != n * _DTYPES[dt].itemsize:
            raise _err(f"{where}: raw blob of {length} bytes for shape {shape} {dt}")
    elif enc == "rice_gaps" and dt == "u8":
        try:
            _check_rice(n, length, ref)
        except SBNNFormatError as exc:
            raise _err(f"{where}: {exc}") from None
    else:
        raise _err(f"{where}: unknown encoding {enc!r} for dtype {dt!r}")
    return tuple(shape), dt, off, length


def _check_rice(n: int, length: int, fields: dict[str, Any]) -> tuple[int, int, bool, int]:
    """The fields of an ``n``-bit rice_gaps blob of ``length`` bytes, checked before decoding.

    The unary stream of ``ones`` runs whose gaps add up to at most ``n - ones`` holds at most
    ``((n - ones) >> k) + ones`` bits, and at least ``ones`` (one 0-bit per run).
    """
    k, ones, flip, ub = (fields.get(f) for f in ("k", "ones", "flip", "unary_bytes"))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (k, ones, ub)) or not (
        isinstance(flip, bool)
    ):
        raise _err("rice_gaps blob: 'k', 'ones', 'unary_bytes' must be ints and 'flip' a bool")
    if not 0 <= k < 40 or not 0 <= ones <= n or not 0 <= ub <= length:
        raise _err(f"rice_gaps blob: bad k={k}, ones={ones} or unary_bytes={ub} for {n} bits")
    if length - ub != (ones * k + 7) // 8:
        raise _err(f"rice_gaps blob: remainder stream is {length - ub} bytes, "
                   f"expected {(ones * k + 7) // 8}")
    most = (((n - ones) >> k) + ones + 7) // 8 if ones else 0
    if not (ones + 7) // 8 <= ub <= most:
        raise _err(f"rice_gaps blob: unary stream of {ub} bytes for {ones} runs in {n} bits "
                   f"(k={k}) must be {(ones + 7) // 8} to {most} bytes")
    return k, ones, flip, ub


def _decode(ref: dict, shape: tuple[int, ...], dt: str, blob: memoryview) -> np.ndarray:
    if ref["encoding"] == "raw":
        return np.frombuffer(blob, _DTYPES[dt]).reshape(shape).copy()
    return decode_bits(bytes(blob), shape, ref)


def _read_header(mv: memoryview) -> tuple[dict, memoryview]:
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
    return head, body[hlen:]


def _check_aliasing(blobs: list[tuple[int, int, str]]) -> None:
    """No two blobs may share a byte (an empty blob shares none)."""
    spans = sorted((off, off + length, where) for off, length, where in blobs if length)
    end, last = 0, ""
    for start, stop, where in spans:  # sorted by start: each must begin after every earlier end
        if start < end:
            raise _err(f"{where}: its blob overlaps the blob of {last} (blobs may not alias)")
        if stop > end:
            end, last = stop, where


def loads(data: bytes | bytearray | memoryview, *, max_macs: Any = None,
          max_memory: Any = None) -> Graph:
    """Parse and check the bytes of a ``.sbnn`` file; see :class:`SBNNFormatError`.

    The whole graph is checked from the header before any parameter is decoded: every node's
    op, inputs, attributes and params (names, dtypes and declared shapes against the shapes
    inferred from its inputs), every blob against the payload, its encoding and every other
    blob (no aliasing), and the graph's work and memory against ``max_macs`` / ``max_memory``
    (see :class:`sbnn_runtime.ops.Limits`; exceeding them raises :class:`SBNNLimitError`, an
    :class:`SBNNFormatError`). Only then are the blobs decoded, at most the checked sizes.
    """
    limits = Limits.resolve(max_macs, max_memory)
    head, payload = _read_header(memoryview(data).cast("B"))
    jnodes = head.get("nodes")
    if not isinstance(jnodes, list) or not jnodes or len(jnodes) > MAX_NODES:
        raise _err("header 'nodes' must be a non-empty list")
    nodes, refs, blobs = [], [], []
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
        stand_ins, node_refs = {}, {}
        for p, ref in params.items():
            where = f"node {i} ({op}) param {p!r}"
            shape, dt, off, length = _check_ref(ref, len(payload), where)
            ones = None  # raw: unknown, every element counts
            if ref.get("encoding") == "rice_gaps":  # the 1-bits the header declares (checked)
                ones = math.prod(shape) - ref["ones"] if ref["flip"] else ref["ones"]
            stand_ins[p] = shape_only(shape, _DTYPES[dt], ones)
            node_refs[p] = (ref, shape, dt, off, length)
            blobs.append((off, length, where))
        nodes.append(Node(op, inputs, attrs, stand_ins, name))
        refs.append(node_refs)
    metadata = head.get("metadata", {})
    if not isinstance(metadata, dict):
        raise _err("header 'metadata' must be an object")
    graph = Graph(nodes, head.get("output"), metadata)  # type: ignore[arg-type]
    shapes = infer_shapes(graph)  # ops, params allowed, declared against inferred shapes
    _check_aliasing(blobs)
    limits.check(graph_cost(graph, shapes), what="this model")
    for nd, node_refs in zip(nodes, refs, strict=True):
        nd.params = {p: _decode(ref, shape, dt, payload[off: off + length])
                     for p, (ref, shape, dt, off, length) in node_refs.items()}
    infer_shapes(graph)  # the values now: bits 0/1
    return graph


def stored_sizes(data: bytes | bytearray | memoryview) -> list[dict[str, int]]:
    """Per node, the blob bytes of each param as the file stores them (checks the prefix and
    checksum only; call :func:`loads` for the rest)."""
    head, _ = _read_header(memoryview(data).cast("B"))
    out = []
    for jn in head.get("nodes") or []:
        params = jn.get("params") if isinstance(jn, dict) else None
        out.append({p: int(ref.get("length", 0)) for p, ref in params.items()
                    if isinstance(ref, dict)} if isinstance(params, dict) else {})
    return out


def load(path: str | os.PathLike, *, max_macs: Any = None, max_memory: Any = None) -> Graph:
    """Read and check a ``.sbnn`` file (see :func:`loads` for the checks and the limits)."""
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
    return loads(data, max_macs=max_macs, max_memory=max_memory)
