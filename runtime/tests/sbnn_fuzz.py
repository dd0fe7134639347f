"""Deterministic mutation fuzzing of ``.sbnn`` files (the short run in the test suite and the long
campaign of ``scripts/fuzz_sbnn.py``).

Seeds are real files (every op, sparse and all-ones bits, random chains). A mutant is one of:
bit flips anywhere (the checksum then refuses it), bit flips or byte changes with the checksum
made right again (so the header parser, the graph checks, the blob decoder and the engine see
them), truncations and trailing bytes, and header field mutations (a leaf becomes a huge or
negative integer, a float, NaN, a string, null, a list or an object, a key is dropped, a node is
duplicated or dropped). Each mutant is loaded under the given limits; what loads is built into
the native engine and run on one image. Anything but :class:`SBNNFormatError` is a finding.
"""

from __future__ import annotations

import copy
import hashlib
import json
import struct
import time
from dataclasses import dataclass, field

import numpy as np

import sbnn_runtime
import sbnn_runtime.fileformat as ff
from sbnn_runtime.ops import SBNNFormatError

_PREFIX = struct.Struct("<8sHHIQ32s")


def seed_files() -> list[bytes]:
    """Real ``.sbnn`` files: the every-op graph of the format tests and random chains."""
    from random_graphs import random_graph
    from test_fileformat import small_graph

    out = [ff.dumps(small_graph(s)) for s in range(3)]
    out += [ff.dumps(random_graph(s)) for s in range(5)]
    return out


_PARSED: dict[bytes, tuple[bytes, bytes, list]] = {}


def _parsed(data: bytes) -> tuple[bytes, bytes, list]:
    """A seed file's header text, payload and the paths of its header's values (cached)."""
    if data not in _PARSED:
        hlen = _PREFIX.unpack_from(data)[3]
        text = data[56:56 + hlen]
        _PARSED[data] = (text, data[56 + hlen:], list(_leaves(json.loads(text))))
    return _PARSED[data]


def _pack(header: bytes, payload: bytes) -> bytes:
    sha = hashlib.sha256(header + payload).digest()
    return _PREFIX.pack(ff.MAGIC, 1, 0, len(header), len(payload), sha) + header + payload


def _resum(data: bytearray) -> bytes:
    """The bytes with the prefix's checksum made right again (when the prefix is intact)."""
    if len(data) >= 56:
        data[24:56] = hashlib.sha256(bytes(data[56:])).digest()
    return bytes(data)


def _leaves(o, path=()):
    if isinstance(o, dict):
        yield path
        for k, v in o.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(o, list):
        yield path
        for i, v in enumerate(o):
            yield from _leaves(v, path + (i,))
    else:
        yield path


_VALUES = [10**400, -10**400, 2**63, 2**64 + 1, 2**31, 2**31 - 1, 65536, 65537, 32768, -1, 0, 1,
           2, 3, 7, 1e308, -1e308, 1.5, -0.0, True, False, None, "", "x", "f32", "u8", "raw",
           "rice_gaps", [], [1], [0, 0, 0], [65536, 1, 1], {}, {"a": 1}]


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One mutant of a valid file."""
    kind = int(rng.integers(0, 10))
    b = bytearray(data)
    if kind == 0:  # raw bit flips: the checksum must refuse them
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, len(b) * 8))
            b[i // 8] ^= 1 << (i % 8)
        return bytes(b)
    if kind == 1:  # bit flips past the prefix, checksum made right
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(56 * 8, len(b) * 8))
            b[i // 8] ^= 1 << (i % 8)
        return _resum(b)
    if kind == 2:  # a random byte value past the prefix, checksum made right
        i = int(rng.integers(56, len(b)))
        b[i] = int(rng.integers(0, 256))
        return _resum(b)
    if kind == 3:  # truncated, or trailing bytes
        if rng.random() < 0.7:
            return bytes(b[: int(rng.integers(0, len(b)))])
        return bytes(b) + bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))
    if kind == 4:  # a prefix field: version, lengths
        f = int(rng.integers(0, 4))
        off, fmt = [(8, "<H"), (10, "<H"), (12, "<I"), (16, "<Q")][f]
        v = int(rng.choice([0, 1, 2, 255, 2**16 - 1, 2**31, 2**32 - 1, len(b), len(b) - 57]))
        struct.pack_into(fmt, b, off, v % (1 << (8 * struct.calcsize(fmt))))
        return _resum(b) if rng.random() < 0.5 else bytes(b)
    text, payload, paths = _parsed(data)
    h = json.loads(text)  # a fresh copy to mutate
    for _ in range(int(rng.integers(1, 3))):
        path = paths[int(rng.integers(0, len(paths)))]
        if not path:
            continue
        parent = h
        try:
            for p in path[:-1]:
                parent = parent[p]
            key = path[-1]
            r = rng.random()
            if r < 0.7:
                parent[key] = copy.deepcopy(_VALUES[int(rng.integers(0, len(_VALUES)))])
            elif r < 0.8 and isinstance(parent, dict):
                del parent[key]
            elif isinstance(parent[key], int) and not isinstance(parent[key], bool):
                parent[key] = parent[key] * int(rng.choice([2, 16, 1024, -1])) + int(
                    rng.integers(-2, 3))
            else:
                parent[key] = copy.deepcopy(_VALUES[int(rng.integers(0, len(_VALUES)))])
        except (KeyError, IndexError, TypeError):
            continue
    nodes = h.get("nodes") if isinstance(h, dict) else None
    if kind == 9 and isinstance(nodes, list) and len(nodes) > 1:
        i = int(rng.integers(1, len(nodes)))
        if rng.random() < 0.5:
            nodes.insert(i, copy.deepcopy(nodes[i]))
        else:
            del nodes[i]
    try:
        text = json.dumps(h).encode()
    except ValueError:
        return data
    return _pack(text, payload)


@dataclass
class FuzzResult:
    mutants: int = 0
    refused: int = 0
    loaded: int = 0
    ran: int = 0
    crashes: list[str] = field(default_factory=list)  # non-format exceptions
    slowest: float = 0.0  # seconds of the slowest mutant
    slow: int = 0  # mutants over the hang threshold
    slow_cases: list[tuple[int, float, bytes]] = field(default_factory=list)  # (i, s, file)
    max_input_bytes: int = 0  # the largest input image a mutant declared (the caller's)


def run_one(data: bytes, limits: dict, x_rng: np.random.Generator) -> str:
    """'refused', 'loaded' (an engine refused it by its limits) or 'ran'; raises on a finding."""
    try:
        g = ff.loads(data, **limits)
    except SBNNFormatError:
        return "refused"
    try:
        eng = sbnn_runtime.Engine(g, 1, backend="native", **limits)
    except SBNNFormatError:
        return "loaded"
    c, h, w = g.input_shape
    x = x_rng.standard_normal((1, c, h, w), dtype=np.float32)  # the caller's input: not ours
    eng(x)
    return "ran"


def fuzz(n: int, seed: int = 0, limits: dict | None = None, hang_s: float = 10.0,
         seeds: list[bytes] | None = None, progress=None) -> FuzzResult:
    """Run ``n`` deterministic mutants (seeded by ``seed``) and return what happened."""
    limits = limits or {}
    files = seeds or seed_files()
    rng = np.random.default_rng(seed)
    x_rng = np.random.default_rng(seed + 1)
    res = FuzzResult()
    for i in range(n):
        data = mutate(files[i % len(files)], rng)
        t0 = time.perf_counter()
        try:
            what = run_one(data, limits, x_rng)
        except Exception as exc:  # a finding: anything but a format error  # noqa: BLE001
            res.crashes.append(f"mutant {i}: {type(exc).__name__}: {str(exc)[:200]}")
            what = "crash"
        dt = time.perf_counter() - t0
        res.mutants += 1
        res.slowest = max(res.slowest, dt)
        res.slow += dt > hang_s
        if dt > hang_s / 2:
            res.slow_cases.append((i, dt, data))
        if what == "ran":
            try:
                c, h, w = ff.loads(data, **limits).input_shape
                res.max_input_bytes = max(res.max_input_bytes, 4 * c * h * w)
            except SBNNFormatError:
                pass
        if what == "refused":
            res.refused += 1
        elif what == "loaded":
            res.loaded += 1
        elif what == "ran":
            res.ran += 1
        if progress:
            progress(i, res)
    return res
