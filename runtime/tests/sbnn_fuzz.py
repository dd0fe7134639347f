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
    slowest: float = 0.0  # CPU seconds of the slowest mutant (the hang criterion)
    slowest_wall: float = 0.0  # wall seconds of the slowest mutant by the clock
    slow: int = 0  # mutants over the hang threshold in CPU seconds (hangs)
    slow_wall: int = 0  # mutants over the hang threshold by the clock (the neighbours count)
    # (i, CPU s, wall s, file) of every mutant over half the threshold in either
    slow_cases: list[tuple[int, float, float, bytes]] = field(default_factory=list)
    max_input_bytes: int = 0  # the largest input image a mutant declared (the caller's)
    # the most a mutant that ran may hold: the loader's estimate plus its input (need_bytes)
    max_need_bytes: int = 0


def need_bytes(data: bytes, limits: dict) -> tuple[int, int]:
    """(the loader's memory estimate for one image on one thread plus the caller's input image,
    that input image's bytes) of a file that loads: what running it may hold at its peak."""
    from sbnn_runtime.passes import graph_cost

    g = ff.loads(data, **limits)
    c, h, w = g.input_shape
    return graph_cost(g).memory(1, 1) + 4 * c * h * w, 4 * c * h * w


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
    """Run ``n`` deterministic mutants (seeded by ``seed``) and return what happened.

    A hang is a mutant over ``hang_s`` CPU seconds (loading, building and running it, all
    threads); its wall time is kept beside it (``slowest_wall``, ``slow_wall``).
    """
    limits = limits or {}
    files = seeds or seed_files()
    rng = np.random.default_rng(seed)
    x_rng = np.random.default_rng(seed + 1)
    res = FuzzResult()
    for i in range(n):
        data = mutate(files[i % len(files)], rng)
        # CPU seconds of this process (every thread: the engine's pool included) measure the
        # work a mutant makes; on a shared machine the wall clock mostly measures the neighbours
        c0, t0 = time.process_time(), time.perf_counter()
        try:
            what = run_one(data, limits, x_rng)
        except Exception as exc:  # a finding: anything but a format error  # noqa: BLE001
            res.crashes.append(f"mutant {i}: {type(exc).__name__}: {str(exc)[:200]}")
            what = "crash"
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        res.mutants += 1
        res.slowest = max(res.slowest, cpu)
        res.slowest_wall = max(res.slowest_wall, wall)
        res.slow += cpu > hang_s
        res.slow_wall += wall > hang_s
        if cpu > hang_s / 2 or wall > hang_s:
            res.slow_cases.append((i, cpu, wall, data))
        if what == "ran":
            try:
                need, inp = need_bytes(data, limits)
                res.max_input_bytes = max(res.max_input_bytes, inp)
                res.max_need_bytes = max(res.max_need_bytes, need)
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


# ---------------------------------------------------------------------------------------------
# Files at the limits: for each costly kind of graph, the largest one the limits still let in.
# A mutant cannot cost more per unit of counted work than the dearest of these (the campaign
# times them first, under the same limits: the hang criterion then holds by construction, not
# by the luck of the draw).


def _limit_families() -> dict:
    """name -> (n -> Graph): graphs whose cost grows with ``n`` (map side, row width, layers)."""
    from sbnn_runtime.ops import Graph, Node

    f32 = np.float32

    def vec(c, v=0.0):
        return np.full(c, v, f32)

    def bconv(i, c, co, kh, kw, s=1, p=1, binary=True, ones=True, seed=0):
        bits = (np.ones((co, c, kh, kw), np.uint8) if ones else
                (np.random.default_rng(seed).random((co, c, kh, kw)) < 0.05).astype(np.uint8))
        return Node("sbconv2d", [i], {"stride": s, "padding": p, "binary_input": binary},
                    {"bits": bits, "eta": vec(co, 1), "xi": vec(co), "bias": vec(co)})

    def inp(c, h, w):
        return Node("input", [], {"shape": [c, h, w]})

    def chain(n):  # n small binary convs: each timed in two rounds of both kernels at first
        nodes = [inp(16, 6, 6)] + [bconv(i, 16, 16, 3, 3) for i in range(n)]
        return Graph(nodes, n)

    rng = np.random.default_rng(0)
    w3 = rng.standard_normal((32, 32, 3, 3)).astype(f32)
    return {
        "all-ones 64x64x3x3 binary conv, binary input, n x n map":
            lambda n: Graph([inp(64, n, n), bconv(0, 64, 64, 3, 3)], 1),
        "all-ones 64x64x3x3 binary conv, real input, n x n map":
            lambda n: Graph([inp(64, n, n), bconv(0, 64, 64, 3, 3, binary=False)], 1),
        "5 % ones 64x64x3x3 binary conv, stride 2, n x n map":
            lambda n: Graph([inp(64, n, n), bconv(0, 64, 64, 3, 3, s=2, ones=False)], 1),
        "all-ones 8x64x1x63 binary conv on a 1 x (62 + n) row (wide kernel, wide row)":
            lambda n: Graph([inp(64, 1, 62 + n), bconv(0, 64, 8, 1, 63, p=0)], 1),
        "all-ones 8x8x3x3 binary conv on an n x 3 column (tall thin map)":
            lambda n: Graph([inp(8, n, 3), bconv(0, 8, 8, 3, 3)], 1),
        "float conv 32x32x3x3, n x n map":
            lambda n: Graph([inp(32, n, n), Node("conv2d", [0], {"stride": 1, "padding": 1},
                                                 {"weight": w3, "bias": vec(32)})], 1),
        "maxpool 5x5 stride 1 pad 2, 16 x n x n":
            lambda n: Graph([inp(16, n, n), Node("maxpool", [0],
                                                 {"k": 5, "stride": 1, "pad": 2})], 1),
        "avgpool 5x5 stride 1 pad 2 excluding pad, 16 x n x n":
            lambda n: Graph([inp(16, n, n), Node("avgpool", [0], {
                "k": 5, "stride": 1, "pad": 2, "count_include_pad": False})], 1),
        "global average pool, 16 x n x n":
            lambda n: Graph([inp(16, n, n), Node("global_avgpool", [0])], 1),
        "a chain of n small binary convs (16x16x3x3 on 6x6)": chain,
    }


def limit_files(limits: dict) -> dict[str, bytes]:
    """For every family of :func:`_limit_families`, the file of the largest ``n`` that loads
    under ``limits`` (work and memory at batch 1, one thread)."""
    from sbnn_runtime.ops import Limits, SBNNLimitError
    from sbnn_runtime.passes import graph_cost

    lim = Limits.resolve(**limits)

    def fits(make, n):
        try:
            lim.check(graph_cost(make(n)))
            return True
        except (SBNNLimitError, SBNNFormatError):
            return False

    out = {}
    for name, make in _limit_families().items():
        lo, hi = 1, 2
        while fits(make, hi) and hi < 1 << 26:
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(make, mid) else (lo, mid)
        out[f"{name}, n = {lo}"] = ff.dumps(make(lo))
    return out
