"""Hostile but well-formed files and callers: decompression bombs, aliased blobs, graphs of
unbounded work or memory, one engine hammered by many threads, thread pools that cannot start."""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

import sbnn_runtime
import sbnn_runtime.fileformat as ff
from sbnn_runtime import native
from sbnn_runtime.ops import (
    Graph,
    Node,
    SBNNFormatError,
    SBNNLimitError,
    infer_shapes,
    shape_only,
)
from sbnn_runtime.passes import graph_cost

HAVE_CORE = native.core is not None and hasattr(native.core, "Engine")
needs_core = pytest.mark.skipif(not HAVE_CORE, reason=native.native_error or "no native Engine")


def craft(nodes: list[dict], output: int, payload: bytes = b"") -> bytes:
    """A .sbnn file with this header and payload and a valid checksum (no graph checks)."""
    header = json.dumps({"format": "sbnn", "version": [1, 0], "metadata": {}, "nodes": nodes,
                         "output": output}).encode()
    sha = hashlib.sha256(header + payload).digest()
    return struct.pack("<8sHHIQ32s", ff.MAGIC, 1, 0, len(header), len(payload), sha) \
        + header + payload


def node(op, inputs=(), attrs=None, params=None, name=""):
    return {"op": op, "name": name, "inputs": list(inputs), "attrs": attrs or {},
            "params": params or {}}


def zero_bits(shape) -> dict:
    """A rice_gaps blob reference of an all-zero tensor: no bytes at all, whatever its size."""
    return {"shape": list(shape), "dtype": "u8", "encoding": "rice_gaps", "k": 0, "ones": 0,
            "flip": False, "unary_bytes": 0, "offset": 0, "length": 0}


def peak_bytes(fn) -> int:
    """Peak bytes traced (numpy arrays included) while ``fn()`` runs; its exception propagates."""
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def load_peak(data: bytes, **kw):
    """(exception raised by ff.loads, peak traced bytes)."""
    err: list[BaseException] = []

    def go():
        try:
            ff.loads(data, **kw)
        except SBNNFormatError as exc:
            err.append(exc)

    peak = peak_bytes(go)
    return (err[0] if err else None), peak


# -- item 3: nothing is decoded before the whole graph checks --------------------------------

def test_bomb_param_on_an_op_without_params_is_refused_before_decoding():
    # 2^28 zero bits cost 0 bytes in the file; the old reader decoded them (256 MiB, then the
    # flip copy) before noticing that relu takes no params
    data = craft([node("input", attrs={"shape": [1, 4, 4]}),
                  node("relu", [0], params={"bits": zero_bits((1 << 14, 1 << 14))})], 1)
    assert len(data) < 1024
    err, peak = load_peak(data)
    assert err is not None and "unexpected params ['bits']" in str(err)
    assert peak < 8 << 20


def test_bomb_with_a_declared_shape_the_graph_does_not_infer_is_refused_before_decoding():
    ones = {"shape": [64], "dtype": "f32", "encoding": "raw", "offset": 0, "length": 256}
    params = {"bits": zero_bits((64, 1 << 14, 16, 16)), "eta": ones, "xi": ones, "bias": ones}
    data = craft([node("input", attrs={"shape": [3, 16, 16]}),
                  node("sbconv2d", [0], {"stride": 1, "padding": 0, "binary_input": True},
                       params)], 1, bytes(256))
    err, peak = load_peak(data)
    assert err is not None and "does not take 3 input channels" in str(err)
    assert peak < 8 << 20


def test_valid_graph_whose_params_pass_the_memory_limit_is_refused_before_decoding():
    # two 128x128 binary convs over a (16384, 128, 128) input: 2^28 bits each, free in the file
    # (all zero), every shape agrees; the old reader decoded 2 x 256 MiB and loaded it
    def vec(i):
        return {"shape": [1], "dtype": "f32", "encoding": "raw", "offset": 8 * i, "length": 4}

    attrs = {"stride": 1, "padding": 0, "binary_input": True}
    nodes = [node("input", attrs={"shape": [1 << 14, 128, 128]})]
    for j in range(2):
        nodes.append(node("sbconv2d", [0], attrs,
                          {"bits": zero_bits((1, 1 << 14, 128, 128)), "eta": vec(3 * j),
                           "xi": vec(3 * j + 1), "bias": vec(3 * j + 2)}))
    nodes.append(node("add", [1, 2]))
    data = craft(nodes, 3, bytes(48))
    assert len(data) < 2048
    # (the engine needs about 1.5 GiB for it: three bytes per bit; under a 1 GiB limit)
    err, peak = load_peak(data, max_memory="1G")
    assert isinstance(err, SBNNLimitError) and "max_memory" in str(err), err
    assert peak < 8 << 20


def test_aliased_blobs_are_refused():
    g = Graph([Node("input", [], {"shape": [2, 3, 3]}),
               Node("affine", [0], params={"scale": np.ones(2, np.float32),
                                           "shift": np.zeros(2, np.float32)})], 1)
    data = ff.dumps(g)
    hlen = struct.unpack_from("<I", data, 12)[0]
    head = json.loads(data[56:56 + hlen])
    payload = data[56 + hlen:]
    p = head["nodes"][1]["params"]
    assert ff.loads(data).nodes[1].params["shift"].tolist() == [0, 0]
    for off in (p["scale"]["offset"], p["scale"]["offset"] + 4):  # same blob, half of it
        p["shift"]["offset"] = off
        with pytest.raises(SBNNFormatError, match="overlaps the blob of node 1 .* 'scale'"):
            ff.loads(craft(head["nodes"], 1, payload))
    # one long blob and two short ones inside it: not only neighbours are compared
    g3 = Graph([Node("input", [], {"shape": [8, 1, 1]}), Node("flatten", [0]),
                Node("linear", [1], params={"weight": np.ones((4, 8), np.float32),
                                            "bias": np.ones(4, np.float32)}),
                Node("affine", [2], params={"scale": np.ones(4, np.float32),
                                            "shift": np.ones(4, np.float32)})], 3)
    data = ff.dumps(g3)
    hlen = struct.unpack_from("<I", data, 12)[0]
    head = json.loads(data[56:56 + hlen])
    head["nodes"][3]["params"]["scale"]["offset"] = 0
    head["nodes"][3]["params"]["shift"]["offset"] = 64
    with pytest.raises(SBNNFormatError, match="overlaps"):
        ff.loads(craft(head["nodes"], 3, data[56 + hlen:]))


def test_rice_lengths_are_checked_against_the_encoding_before_decoding():
    bits = (np.random.default_rng(0).random((4, 4, 3, 3)) < 0.2).astype(np.uint8)
    blob, f = ff.encode_bits(bits)
    ub = f["unary_bytes"]
    padded = blob[:ub] + b"\xff" * 64 + blob[ub:]  # a unary stream far longer than 144 bits need
    with pytest.raises(SBNNFormatError, match="unary stream of .* bytes"):
        ff.decode_bits(padded, bits.shape, dict(f, unary_bytes=ub + 64))
    with pytest.raises(SBNNFormatError, match="unary stream"):  # fewer bytes than runs
        ff.decode_bits(blob[ub:], bits.shape, dict(f, unary_bytes=0))
    np.testing.assert_array_equal(ff.decode_bits(blob, bits.shape, f), bits)


def test_shape_only_stand_ins_check_like_the_real_params():
    from test_fileformat import small_graph

    g = small_graph()
    stand = Graph([Node(nd.op, nd.inputs, nd.attrs,
                        {p: shape_only(a.shape, a.dtype, int(a.sum()) if p == "bits" else None)
                         for p, a in nd.params.items()}, nd.name)
                   for nd in g.nodes], g.output)
    assert infer_shapes(stand) == infer_shapes(g)
    assert graph_cost(stand) == graph_cost(g)
    assert all(a.nbytes == 0 or a.base is not None for nd in stand.nodes
               for a in nd.params.values())
    # the bits' values are checked once decoded
    g.nodes[2].params["bits"][0, 0, 0, 0] = 2
    with pytest.raises(SBNNFormatError, match="bits must be 0/1"):
        infer_shapes(g)


# -- item 4: work and memory limits ----------------------------------------------------------

def test_a_small_pooling_graph_of_huge_work_is_refused():
    # a 65536-wide max window at stride 1 over a 256x256 map: 257 x 257 outputs x 2^32 taps
    data = craft([node("input", attrs={"shape": [1, 256, 256]}),
                  node("maxpool", [0], {"k": 65536, "stride": 1, "pad": 32768})], 1)
    assert len(data) < 400
    with pytest.raises(SBNNLimitError, match=r"G kernel steps per image \(.*node 1: .*max_macs"):
        ff.loads(data)
    assert ff.loads(data, max_macs=math.inf).shapes()[1] == (1, 257, 257)  # on purpose


def test_a_small_graph_of_huge_memory_is_refused():
    # four 2x2 average pools of the input (1 GiB each), summed: all four alive at once
    nodes = [node("input", attrs={"shape": [1, 16000, 16000]})]
    for _ in range(4):
        nodes.append(node("avgpool", [0], {"k": 2, "stride": 1, "pad": 1,
                                           "count_include_pad": True}))
    nodes += [node("add", [1, 2]), node("add", [5, 3]), node("add", [6, 4])]
    data = craft(nodes, len(nodes) - 1)
    assert len(data) < 2048
    with pytest.raises(SBNNLimitError, match=r"MiB at batch 1 .*activations .*max_memory"):
        ff.loads(data, max_macs="inf")  # (its pools are also 133 G kernel steps)
    g = ff.loads(data, max_memory="1T", max_macs="inf")
    act = graph_cost(g).activation_bytes
    cells = 16001 ** 2
    # the memory plan: five maps alive at once (the four pools and the first sum, as it is
    # written), each but the last 64-byte aligned, plus the output array handed back
    assert act == 4 * (4 * -(-cells // 16) * 16 + cells) + 4 * cells


def test_activation_estimate_is_the_arena_of_the_engines_memory_plan():
    c = 2 * 5 * 5
    g = Graph([Node("input", [], {"shape": [2, 5, 5]})] + [Node("relu", [i]) for i in range(4)],
              4)
    # relus 1 and 3 share cells, 2 and 4 too (at 64 cells: 64-byte aligned); + the output
    assert graph_cost(g).activation_bytes == 4 * (64 + c + c)
    if HAVE_CORE:
        from sbnn_runtime import Engine

        eng = Engine(g, 1)
        assert eng._native.arena_bytes == 4 * (64 + c)


def test_limits_from_arguments_and_environment(monkeypatch):
    from test_fileformat import small_graph

    data = ff.dumps(small_graph())
    monkeypatch.setenv("SBNN_MAX_MACS", "1k")
    with pytest.raises(SBNNLimitError, match="limit of 1e-06 G"):
        ff.loads(data)
    ff.loads(data, max_macs=1e6)  # an argument wins over the environment
    monkeypatch.setenv("SBNN_MAX_MACS", "inf")
    monkeypatch.setenv("SBNN_MAX_MEMORY", "1K")
    with pytest.raises(SBNNLimitError, match="max_memory"):
        ff.loads(data)
    monkeypatch.setenv("SBNN_MAX_MEMORY", "lots")
    with pytest.raises(ValueError, match=r"\$SBNN_MAX_MEMORY='lots' is not a number"):
        ff.loads(data)
    monkeypatch.delenv("SBNN_MAX_MEMORY")
    for bad in (0, -1, True, "x", [1]):
        with pytest.raises(ValueError, match="max_macs"):
            ff.loads(data, max_macs=bad)


def test_engine_refuses_a_batch_past_max_memory(tmp_path):
    from test_fileformat import small_graph

    path = tmp_path / "m.sbnn"
    ff.save(small_graph(), path)
    backend = "native" if HAVE_CORE else "reference"
    eng = sbnn_runtime.load(path, 1, backend=backend, max_memory="64K")
    x = np.zeros((1, 2, 6, 6), np.float32)
    assert eng(x).shape == (1, 3)
    with pytest.raises(SBNNLimitError, match="at batch 1000"):
        eng(np.zeros((1000, 2, 6, 6), np.float32))
    with pytest.raises(SBNNLimitError):
        sbnn_runtime.load(path, 1, backend=backend, max_memory=1000)


@needs_core
def test_fast_path_of_run_checks_each_new_batch_and_every_bad_input(tmp_path):
    # Engine.run skips as_input and the limit check for a plain float32 batch of a batch size
    # that passed them before (issue 20, the cold start); anything else takes the full checks.
    from test_fileformat import small_graph

    path = tmp_path / "m.sbnn"
    ff.save(small_graph(), path)
    eng = sbnn_runtime.load(path, 1, backend="native", max_memory="64K")
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6)).astype(np.float32)
    want = eng._native.run(x, False)
    for _ in range(2):  # the first call checks batch 2, the second takes the fast path
        np.testing.assert_array_equal(eng(x), want)
    assert eng._checked_batches == {2}
    y, times = eng.run(x, profile=True)
    np.testing.assert_array_equal(y, want)
    assert len(times) == eng._native.num_ops
    with pytest.raises(SBNNLimitError, match="at batch 1000"):
        eng(np.zeros((1000, 2, 6, 6), np.float32))
    with pytest.raises(SBNNLimitError, match="at batch 1000"):  # refused again, not cached
        eng(np.zeros((1000, 2, 6, 6), np.float32))
    assert eng._checked_batches == {2}
    with pytest.raises(TypeError, match="float32"):
        eng(x.astype(np.float64))
    with pytest.raises(TypeError, match="float32"):
        eng(x.astype(">f4"))
    with pytest.raises(ValueError, match="shape"):
        eng(x[:, :1])
    with pytest.raises(ValueError, match="empty"):
        eng(x[:0])
    np.testing.assert_array_equal(eng(np.asfortranarray(x)), want)  # copied, then run
    np.testing.assert_array_equal(eng(x[:, :, ::-1, :][:, :, ::-1, :]), want)


# -- items 5 and 6: threads ------------------------------------------------------------------

def _run_py(code: str, timeout: float) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (a crash or hang there fails the test, not pytest)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env)


@needs_core
def test_one_engine_called_from_many_python_threads():
    # 2000 ops, 8 Python threads x 25 profiled runs on one engine: the old engine wrote one
    # shared timing vector from every thread with the GIL released (SIGSEGV / SIGABRT)
    r = _run_py("""
        import threading
        import numpy as np
        from sbnn_runtime import Engine, Graph, Node
        rng = np.random.default_rng(0)
        nodes = [Node("input", [], {"shape": [4, 6, 6]})]
        for i in range(2000):
            if i % 100 == 50:
                nodes.append(Node("sbconv2d", [i], {"stride": 1, "padding": 1,
                                                    "binary_input": True},
                                  {"bits": (rng.random((4, 4, 3, 3)) < .3).astype(np.uint8),
                                   "eta": np.full(4, .01, np.float32),
                                   "xi": np.zeros(4, np.float32),
                                   "bias": np.zeros(4, np.float32)}))
            else:
                nodes.append(Node("hardtanh" if i % 2 else "relu", [i],
                                  {"lo": -1.0, "hi": 1.0} if i % 2 else {}))
        eng = Engine(Graph(nodes, len(nodes) - 1), 2, backend="native")
        xs = [rng.standard_normal((2, 4, 6, 6), dtype=np.float32) for _ in range(8)]
        want = [eng(x) for x in xs]
        bad = []
        def hammer(t):
            for _ in range(25):
                y, times = eng.run(xs[t], profile=True)
                if not np.array_equal(y, want[t]) or len(times) != eng._native.num_ops:
                    bad.append(t)
        ts = [threading.Thread(target=hammer, args=(t,)) for t in range(8)]
        for t in ts: t.start()
        for t in ts: t.join()
        assert not bad, bad
        assert len(eng._native.layer_times()) == eng._native.num_ops  # the fused plan
        print("ok")
    """, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


@needs_core
def test_num_threads_is_bounded():
    from test_fileformat import small_graph

    g = small_graph()
    for bad in (257, 10**6, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"num_threads=.*\[1, 256\]"):
            sbnn_runtime.Engine(g, bad)
    with pytest.raises(ValueError, match="num_threads=257 exceeds the limit of 256"):
        native.core.Engine(257)
    assert sbnn_runtime.Engine(g, 3).num_threads == 3


@needs_core
def test_a_thread_pool_that_cannot_start_fails_cleanly():
    # under an address-space limit std::thread cannot get stacks for 256 threads: the old pool
    # hung (holding the GIL) or called std::terminate; now it joins what started and raises
    r = _run_py("""
        import resource
        from sbnn_runtime import _core
        vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status")
                  if l.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + (64 << 20), resource.RLIM_INFINITY))
        try:
            _core.Engine(256)
            print("started")
        except RuntimeError as exc:
            print(exc)
        e = _core.Engine(1)  # still usable afterwards
        print(e.num_threads)
    """, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.splitlines()
    if out[0] == "started":  # the limit did not bite on this system
        pytest.skip("RLIMIT_AS did not stop 256 thread stacks here")
    assert "thread pool: could not start thread" in out[0] and "fewer num_threads" in out[0]
    assert out[1] == "1"


def test_activation_estimate_stays_fast_on_a_deep_growing_graph():
    # 12000 growing avg pools: the memory plan keeps two buffers, the two largest
    nodes = [Node("input", [], {"shape": [1, 1, 1]})]
    for i in range(12000):
        nodes.append(Node("avgpool", [i], {"k": 2, "stride": 1, "pad": 1,
                                           "count_include_pad": True}))
    g = Graph(nodes, len(nodes) - 1)
    shapes = infer_shapes(g)
    cost = graph_cost(g, shapes)
    cells = [math.prod(s) for s in shapes]
    assert cost.activation_bytes == 4 * (-(-cells[-1] // 16) * 16 + cells[-2] + cells[-1])


def test_a_crowded_graph_is_laid_end_to_end_in_linear_time():
    # 3000 tensors all read by the last node (a chain of adds onto the first): every one alive
    # to the end, too many to search gaps among; the plan lays them end to end
    nodes = [Node("input", [], {"shape": [1, 2, 2]})]
    nodes += [Node("relu", [0]) for _ in range(3000)]
    acc = 1
    for i in range(2, 3001):
        nodes.append(Node("add", [acc, i]))
        acc = len(nodes) - 1
    g = Graph(nodes, acc)
    cost = graph_cost(g)
    assert cost.activation_bytes <= 4 * 16 * len(nodes) + 4 * 4
