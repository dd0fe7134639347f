"""The graph passes (sbnn_runtime.passes), each on its own: folding, both fusions, binary maps,
weight encodings (decoded back to the bits), lifetimes and arena placement."""

from __future__ import annotations

import numpy as np
import pytest

from sbnn_runtime import Graph, Node, passes, reference_forward
from sbnn_runtime.passes import Buffer, Step

HT = {"lo": -1.0, "hi": 1.0}


def _sb(rng, cin, cout, src, name="", stride=1, binary=True, thr=None):
    bits = (rng.random((cout, cin, 3, 3)) < 0.2).astype(np.uint8)
    f = lambda: rng.standard_normal(cout).astype(np.float32)  # noqa: E731
    params = {"bits": bits, "eta": np.abs(f()) + 0.1, "xi": f() * 0.1, "bias": f()}
    if binary:
        params["thr"] = np.zeros(cin, np.float32) if thr is None else thr
    return Node("sbconv2d", [src], {"stride": stride, "padding": 1, "binary_input": binary},
                params, name)


def _conv(rng, cin, cout, src, k=3, name=""):
    return Node("conv2d", [src], {"stride": 1, "padding": k // 2},
                {"weight": rng.standard_normal((cout, cin, k, k)).astype(np.float32)}, name)


class G:
    """A graph under construction: ``g.add(node) -> its id``."""

    def __init__(self, c=4, h=6, w=6):
        self.nodes = [Node("input", [], {"shape": [c, h, w]})]

    def add(self, nd: Node) -> int:
        self.nodes.append(nd)
        return len(self.nodes) - 1

    def graph(self, out: int | None = None) -> Graph:
        return Graph(self.nodes, len(self.nodes) - 1 if out is None else out)


def test_epilogues_fuse_conv_add_activation_and_the_stem():
    rng = np.random.default_rng(0)
    g = G()
    stem = g.add(_conv(rng, 4, 4, 0))
    h0 = g.add(Node("hardtanh", [stem], HT))
    s = g.add(_sb(rng, 4, 4, h0))
    a = g.add(Node("add", [s, h0]))
    h1 = g.add(Node("hardtanh", [a], HT))
    s2 = g.add(_sb(rng, 4, 4, h1))
    r = g.add(Node("rprelu", [s2], {}, {k: np.zeros(4, np.float32)
                                        for k in ("shift_in", "slope", "shift_out")}))
    steps = passes.fuse_epilogues(g.graph())
    assert [s_.nodes for s_ in steps] == [(stem, h0), (s, a, h1), (s2, r)]
    assert steps[1].inputs == (h0, h0) and steps[1].residual == h0 and steps[1].output == h1
    assert steps[0].output == h0 and steps[0].residual is None


def test_epilogues_respect_second_readers_and_the_output():
    rng = np.random.default_rng(1)
    g = G()
    s = g.add(_sb(rng, 4, 4, 0))
    a = g.add(Node("add", [s, 0]))
    g.add(Node("hardtanh", [a], HT))
    g.add(Node("relu", [a]))  # the sum is read twice: the add fuses, no activation
    steps = passes.fuse_epilogues(g.graph())
    assert [st.nodes for st in steps] == [(s, a), (3,), (4,)]
    # the conv output is the graph output: nothing fuses into it
    g2 = G()
    s = g2.add(_sb(rng, 4, 4, 0))
    g2.add(Node("hardtanh", [s], HT))
    assert [st.nodes for st in passes.fuse_epilogues(g2.graph(out=s))] == [(1,), (2,)]
    # an add of two binary convs: the first one takes it
    g3 = G()
    s1 = g3.add(_sb(rng, 4, 4, 0))
    s2 = g3.add(_sb(rng, 4, 4, 0))
    a = g3.add(Node("add", [s1, s2]))
    steps = passes.fuse_epilogues(g3.graph())
    assert [st.nodes for st in steps] == [(s2,), (s1, a)] and steps[1].residual == s2
    # a binary conv on real inputs is a float conv: only the clamp fuses
    g4 = G()
    s = g4.add(_sb(rng, 4, 4, 0, binary=False))
    a = g4.add(Node("add", [s, 0]))
    assert [st.nodes for st in passes.fuse_epilogues(g4.graph())] == [(s,), (a,)]


def test_unfused_steps_keep_every_node():
    g = G()
    g.add(Node("relu", [0]))
    g.add(Node("add", [1, 0]))
    assert passes.unfused_steps(g.graph()) == [Step(1, (), (0,), 1), Step(2, (), (1, 0), 2)]


def test_pool_residual_fusion_and_binary_maps():
    rng = np.random.default_rng(2)
    g = G(4, 8, 8)
    c = g.add(_conv(rng, 4, 4, 0))
    p = g.add(Node("maxpool", [c], {"k": 2, "stride": 2, "pad": 0}))
    s = g.add(_sb(rng, 4, 4, p))
    a = g.add(Node("add", [s, p]))
    s2 = g.add(_sb(rng, 4, 4, a))
    s3 = g.add(_sb(rng, 4, 4, a))
    o = g.add(Node("add", [s2, s3]))
    dead = g.add(Node("relu", [0]))
    graph = g.graph(out=o)
    assert passes.live_nodes(graph) == [c, p, s, a, s2, s3, o]
    steps = passes.fuse_pool_residual(graph)
    # the add of two convs goes to the later one (its residual must already exist)
    assert [st.nodes for st in steps] == [(c, p), (s, a), (s2,), (s3, o)]
    assert steps[1].residual == p and steps[3].residual == s2 and steps[3].inputs == (a, s2)
    assert dead not in {n for st in steps for n in st.nodes}
    maps = passes.binary_maps(graph, steps)
    # a: read only by binary convs that agree; p: also by the add fused into s's step
    assert set(maps) == {a} and maps[a][1] == 1
    graph.nodes[s3].params["thr"] = np.ones(4, np.float32)  # the readers of a now disagree
    assert passes.binary_maps(graph, steps) == {}
    # a tensor that a fused add reads as its residual is not only read by binary convs
    g2 = G(4, 8, 8)
    c = g2.add(_conv(rng, 4, 4, 0))
    s = g2.add(_sb(rng, 4, 4, c))
    a = g2.add(Node("add", [s, c]))
    graph2 = g2.graph()
    steps2 = passes.fuse_pool_residual(graph2)
    assert [st.nodes for st in steps2] == [(c,), (s, a)]
    assert passes.binary_maps(graph2, steps2) == {}


def _q(rng, cin, cout, src, scale=0.01):
    from sbnn_runtime import qkernels

    w, ws = qkernels.quantize_weight(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32))
    return Node("qconv2d", [src], {"stride": 1, "padding": 1, "x_scale": scale, "x_zero": 0},
                {"weight": w, "w_scale": ws, "bias": rng.standard_normal(cout).astype(np.float32)})


def test_int8_thresholds_fold_only_int8_convs_stored_as_maps():
    # folded: an int8 conv read only by binary convs (its output stored as their map), unfused
    # and with a scale it can invert; not: one that pools first, one also read by a relu, and
    # one whose scale is not > 0
    rng = np.random.default_rng(4)
    g = G(4, 8, 8)
    q1 = g.add(_q(rng, 4, 4, 0))
    s1 = g.add(_sb(rng, 4, 4, q1, thr=rng.standard_normal(4).astype(np.float32)))
    q2 = g.add(_q(rng, 4, 4, s1))
    p2 = g.add(Node("maxpool", [q2], {"k": 2, "stride": 2, "pad": 0}))
    s2 = g.add(_sb(rng, 4, 4, p2))
    q3 = g.add(_q(rng, 4, 4, s2))
    g.add(_sb(rng, 4, 4, q3))
    r3 = g.add(Node("relu", [q3]))
    q4 = g.add(_q(rng, 4, 4, r3))
    g.add(_sb(rng, 4, 4, q4))
    graph = g.graph()
    graph.nodes[q4].params["w_scale"][1] = 0.0
    steps = passes.fuse_pool_residual(graph)
    ithr = passes.int8_thresholds(graph, steps)
    assert set(ithr) == {q1}
    assert set(passes.binary_maps(graph, steps)) == {q1, p2, q4}
    t = ithr[q1]
    assert t.dtype == np.int32 and t.shape == (4,)
    # the plan records it, and the folded step needs no channel plane
    pl = passes.plan(graph, "c")
    assert set(pl.memory.ithr) == {q1}
    k = [st.node for st in pl.steps].index(q1)
    assert "plane" not in pl.memory.scratch[k]
    assert passes.plan(graph, "native").memory.ithr == {}


def _decode(enc: passes.Encoding, shape) -> np.ndarray:
    co = shape[0]
    n = int(np.prod(shape[1:]))
    if enc.kind == "packed":
        return np.unpackbits(enc.data, bitorder="little")[:co * n].reshape(shape)
    out = np.zeros((co, n), np.uint8)
    for o in range(co):
        seg = enc.data[enc.starts[o]:enc.starts[o + 1]]
        if enc.kind == "gap8":
            t, d = -1, 0
            for g in seg:
                d += int(g)
                if g < 255:
                    t += 1 + d
                    d = 0
                    out[o, t] = 1
        else:
            out[o, seg] = 1
    return out.reshape(shape)


@pytest.mark.parametrize("p,shape", [(0.0, (3, 2, 3, 3)), (0.002, (8, 64, 3, 3)),
                                     (0.05, (16, 16, 3, 3)), (0.3, (4, 3, 5, 5)),
                                     (0.9, (5, 7, 1, 1)), (0.05, (2, 40, 3, 3))])
def test_encodings_decode_to_the_bits(p, shape):
    bits = (np.random.default_rng(3).random(shape) < p).astype(np.uint8)
    sizes = {}
    for fmt in passes.BINARY_FORMATS:
        enc = passes.choose_encoding(bits, fmt)
        np.testing.assert_array_equal(_decode(enc, shape), bits)
        assert enc.ones == int(bits.sum()) and enc.kind in passes.ENCODINGS
        sizes[fmt] = enc.nbytes
        if fmt != "auto":
            assert enc.format == fmt
    assert sizes["packed"] == (bits.size + 7) // 8
    assert sizes["auto"] == min(sizes["sparse"], sizes["packed"])
    with pytest.raises(ValueError, match="binary_format"):
        passes.choose_encoding(bits, "dense")


def test_long_gaps_use_the_escape_byte():
    bits = np.zeros((1, 1, 30, 30), np.uint8)
    bits.reshape(-1)[:100] = 1
    bits[0, 0, 29, 29] = 1  # 799 zeros after tap 99, then a one
    enc = passes.choose_encoding(bits, "sparse")
    assert enc.kind == "gap8" and list(enc.data[-5:]) == [0, 255, 255, 255, 799 - 765]
    np.testing.assert_array_equal(_decode(enc, bits.shape), bits)


def test_fold_affine_linear_is_close_and_only_when_sole_reader():
    rng = np.random.default_rng(4)
    g = G(2, 3, 3)
    f = g.add(Node("flatten", [0]))
    a = g.add(Node("affine", [f], {}, {"scale": rng.standard_normal(18).astype(np.float32),
                                       "shift": rng.standard_normal(18).astype(np.float32)}))
    g.add(Node("linear", [a], {}, {"weight": rng.standard_normal((5, 18)).astype(np.float32),
                                   "bias": rng.standard_normal(5).astype(np.float32)}, "fc"))
    graph = g.graph()
    folded = passes.fold_affine_linear(graph)
    assert folded.nodes[3].inputs == [f] and passes.live_nodes(folded) == [f, 3]
    x = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(reference_forward(folded, x), reference_forward(graph, x),
                               rtol=1e-4, atol=1e-4)
    g.add(Node("add", [3, 3]))
    g.nodes[3] = Node("linear", [a], {}, g.nodes[3].params, "fc")
    g.add(Node("relu", [a]))  # a second reader of the affine: no fold
    graph2 = Graph(g.nodes, 4)
    assert passes.fold_affine_linear(graph2).nodes[3].inputs == [a]


def test_place_never_overlaps_live_buffers():
    rng = np.random.default_rng(5)
    for _ in range(50):
        bufs = []
        for _ in range(int(rng.integers(1, 12))):
            s = int(rng.integers(0, 10))
            bufs.append(Buffer(int(rng.integers(1, 50)), s, s + int(rng.integers(0, 5))))
        arena = passes.place(bufs)
        for i, a in enumerate(bufs):
            assert 0 <= a.offset and a.offset + a.size <= arena
            for b in bufs[i + 1:]:
                if a.start <= b.end and b.start <= a.end:
                    assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset
        # never more than keeping every buffer apart, never less than the biggest moment
        assert arena <= sum(b.size for b in bufs)
        peak = max(sum(b.size for b in bufs if b.start <= t <= b.end) for t in range(16))
        assert arena >= peak


def _check_memory(pl: passes.Plan, target: str) -> None:
    """The memory plan's promises: tensors alive at once never share cells (scratch included),
    every offset aligned, every tensor inside the arena for its whole life, and a step's output
    over one of its inputs only where the op table allows it (never on the native engine)."""
    from sbnn_runtime.ops import OPS

    mem, g = pl.memory, pl.graph
    life = passes.lifetimes(g, pl.steps)
    align = passes.ALIGN[target] // 4
    assert mem.align == align
    every = list(mem.buffers.values()) + [b for bs in mem.scratch.values() for b in bs.values()]
    for k, a in enumerate(every):
        assert a.offset % align == 0 and 0 <= a.offset and a.offset + a.size <= mem.arena
        for b in every[k + 1:]:
            if a.start <= b.end and b.start <= a.end:
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset
    assert mem.nbytes == 4 * (mem.arena + mem.tail)
    for t, (first, last) in life.items():
        b = mem.buffers[mem.store[t]] if mem.store[t] >= 0 else None
        if b is not None:
            assert b.start <= first and last <= b.end
            need = int(np.prod(pl.shapes[t]))
            assert b.size >= (need if t not in mem.binmaps else 1)
    for st in pl.steps:
        out = mem.store[st.output]
        spec = OPS[g.nodes[st.node].op]
        for t in st.inputs:
            if mem.store.get(t, -1) < 0 or mem.store[t] != out:
                continue
            assert target == "c", "the native engine never runs in place"
            allowed = spec.c_alias or (spec.c_inplace and not st.fused) or \
                t == st.residual
            assert allowed, (st, t)


def test_plan_buffers_keep_live_tensors_apart():
    rng = np.random.default_rng(6)
    g = G()
    stem = g.add(_conv(rng, 4, 4, 0))
    h0 = g.add(Node("hardtanh", [stem], HT))
    s = g.add(_sb(rng, 4, 4, h0))
    a = g.add(Node("add", [s, h0]))
    h1 = g.add(Node("hardtanh", [a], HT))
    g.add(Node("relu", [h1]))
    for target in passes.TARGETS:
        for fuse in (True, False):
            pl = passes.plan(g.graph(), target, fuse=fuse)
            _check_memory(pl, target)
            assert pl.arena >= max(b.size for b in pl.buffers.values())
    native = passes.plan(g.graph(), "native")
    assert set(native.buffers) == set(passes.lifetimes(native.graph, native.steps))
    assert all(b.offset % 16 == 0 for b in native.buffers.values())  # 64 bytes
    # the C plan runs the relu in place over the hardtanh it reads (the op table allows it)
    c = passes.plan(g.graph(), "c", fuse=False)
    assert c.memory.store[len(g.nodes) - 1] == c.memory.store[h1]


def test_plan_buffers_on_random_graphs():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from random_graphs import random_graph

    for seed in range(40):
        graph = random_graph(seed)
        for target in passes.TARGETS:
            _check_memory(passes.plan(graph, target), target)
        cost = passes.graph_cost(graph)
        mem = passes.plan(graph, "native").memory
        out = int(np.prod(graph.shapes()[graph.output]))
        assert cost.activation_bytes == mem.nbytes + 4 * out
        assert cost.workspace_bytes == mem.workspace


def test_place_aligns_and_falls_back_to_end_to_end_when_crowded(monkeypatch):
    bufs = [Buffer(5, 0, 1), Buffer(3, 1, 2), Buffer(7, 2, 3)]
    arena = passes.place(bufs, align=4)
    assert [b.offset for b in bufs] == [0, 8, 0] and arena == 11
    monkeypatch.setattr(passes, "_MAX_PLACE_WORK", 1)
    bufs = [Buffer(5, 0, 1), Buffer(3, 1, 2), Buffer(7, 2, 3)]
    arena = passes.place(bufs, align=4)
    assert [b.offset for b in bufs] == [0, 8, 12] and arena == 19


def test_plan_steps_per_target():
    rng = np.random.default_rng(6)
    g = G()
    stem = g.add(_conv(rng, 4, 4, 0))
    h0 = g.add(Node("hardtanh", [stem], HT))
    s = g.add(_sb(rng, 4, 4, h0))
    a = g.add(Node("add", [s, h0]))
    h1 = g.add(Node("hardtanh", [a], HT))
    g.add(Node("relu", [h1]))
    pl = passes.plan(g.graph(), "native")
    assert pl.groups() == [[stem, h0], [s, a, h1]] and not pl.encodings
    assert passes.plan(g.graph(), "native", fuse=False).groups() == []
    light = passes.plan(g.graph(), "native", memory=False)
    assert light.steps == pl.steps and light.buffers == {} and light.arena == 0
    assert set(passes.plan(g.graph(), "c").encodings) == {s}
    with pytest.raises(ValueError, match="unknown target"):
        passes.plan(g.graph(), "gpu")


# -- the native engine runs the plan the passes make, and checks the groups it is given --------

def _native_engine(graph: Graph):
    from sbnn_runtime import Engine
    from sbnn_runtime.native import core

    if core is None or not hasattr(core.Engine, "set_groups"):
        pytest.skip("no native core with set_groups")
    return Engine(graph, num_threads=1)


def _block(rng):
    g = G()
    stem = g.add(_conv(rng, 4, 4, 0))
    h0 = g.add(Node("hardtanh", [stem], HT))
    s = g.add(_sb(rng, 4, 4, h0))
    a = g.add(Node("add", [s, h0]))
    g.add(Node("hardtanh", [a], HT))
    return g.graph()


def test_native_engine_fuses_exactly_the_groups_of_the_plan():
    rng = np.random.default_rng(7)
    graph = _block(rng)
    eng = _native_engine(graph)
    assert eng._native.groups == [[1, 2], [3, 4, 5]] == eng.plan.groups()
    assert [d["name"] for d in eng.layer_info()] == ["conv2d+hardtanh",
                                                     "sbconv2d+add+hardtanh"]
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(eng(x), reference_forward(graph, x), rtol=1e-5, atol=1e-5)
    # the memory plan follows the groups: the fused plan has no place for the conv's own output
    with pytest.raises(ValueError, match="no place in the arena"):
        eng._native.set_groups([])
    alone = passes.plan(graph, "native", fuse=False).memory
    eng._native.set_memory_plan([4 * alone.offset(i) if i else -1 for i in range(6)],
                                alone.nbytes)
    eng._native.set_groups([])  # no groups: every op alone, the same numbers
    assert eng._native.num_ops == 5 and eng._native.arena_bytes == alone.nbytes
    np.testing.assert_allclose(eng(x), reference_forward(graph, x), rtol=1e-5, atol=1e-5)


def test_native_engine_allocates_the_arena_of_the_plan():
    rng = np.random.default_rng(9)
    graph = _block(rng)
    eng = _native_engine(graph)
    mem = eng.plan.memory
    assert eng._native.arena_bytes == mem.nbytes > 0
    assert eng.cost.activation_bytes == mem.nbytes + 4 * int(np.prod(eng.output_shape))
    x = rng.standard_normal((3, 4, 6, 6)).astype(np.float32)
    want = eng(x)
    offsets = [4 * mem.offset(i) if i else -1 for i in range(6)]
    for bad, msg in [([-1] * 6, "no place"), ([o + 4 if o > 0 else o for o in offsets],
                                              "misaligned"),
                     (offsets[:5] + [mem.nbytes], "outside the arena")]:
        with pytest.raises(ValueError, match=msg):
            eng._native.set_memory_plan(bad, mem.nbytes)
        assert eng._native.arena_bytes == mem.nbytes  # the old plan stays
    with pytest.raises(ValueError, match="arena_bytes"):
        eng._native.set_memory_plan(offsets, -1)
    # a plan that lays every tensor apart gives the same numbers from a bigger arena
    apart = [-1] + [64 * 1024 * i for i in range(5)]
    eng._native.set_memory_plan(apart, 64 * 1024 * 5)
    assert eng._native.arena_bytes == 64 * 1024 * 5
    np.testing.assert_array_equal(eng(x), want)


@pytest.mark.parametrize("groups,msg", [
    ([[3, 5]], "only reader"),               # skips the add: the hardtanh does not read the conv
    ([[2, 3]], "not a conv"),                # starts with a hardtanh
    ([[1, 2], [2, 3]], "in a group already"),
    ([[1]], "at least one op"),
    ([[1, 99]], "unknown op output"),
    ([[3, 4, 5, 5]], "in a group already"),
    ([[1, 2, 3]], "cannot fuse|only reader"),
])
def test_native_engine_refuses_groups_it_cannot_fuse(groups, msg):
    eng = _native_engine(_block(np.random.default_rng(8)))
    before = eng._native.groups
    with pytest.raises(ValueError, match=msg):
        eng._native.set_groups(groups)
    assert eng._native.groups == before  # a refused plan leaves the engine as it was


def test_the_c_generator_writes_the_plans_offsets():
    from sbnn_runtime.lower_c import generate_c

    rng = np.random.default_rng(10)
    graph = _block(rng)
    pl = passes.plan(graph, "c")
    cm = generate_c(graph)
    assert cm.arena_bytes == pl.memory.nbytes
    for st in pl.steps:  # every step writes at the offset the plan gave its output
        off = pl.memory.offset(st.output)
        assert off >= 0 and f"(A + {off})" in cm.model_c
    for scratch in pl.memory.scratch.values():
        for b in scratch.values():
            assert f"(A + {b.offset})" in cm.model_c
