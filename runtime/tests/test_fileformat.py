"""The .sbnn file: round trips, the bits' size against H(p), and a fuzz test of bad files."""

from __future__ import annotations

import hashlib
import json
import random
import struct

import numpy as np
import pytest

import sbnn_runtime.fileformat as ff
from sbnn_runtime.fileformat import Graph, Node, SBNNFormatError


def entropy(p: float) -> float:
    """H(p) in bits (numpy only: runtime tests import no torch)."""
    return 0.0 if p <= 0 or p >= 1 else float(-p * np.log2(p) - (1 - p) * np.log2(1 - p))


def _bits(rng, shape, p):
    return (rng.random(shape) < p).astype(np.uint8)


def small_graph(seed: int = 0) -> Graph:
    """Every op once, on a 2x6x6 input: conv, sbconv (binary and real input), pools, add..."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    nodes = [
        Node("input", [], {"shape": [2, 6, 6]}, name="input"),
        Node("conv2d", [0], {"stride": 1, "padding": 1}, {"weight": f(4, 2, 3, 3), "bias": f(4)},
             "stem"),
        Node("sbconv2d", [1], {"stride": 1, "padding": 1, "binary_input": True},
             {"bits": _bits(rng, (4, 4, 3, 3), 0.2), "eta": f(4), "xi": f(4), "bias": f(4),
              "thr": f(4)}, "b1"),
        Node("add", [1, 2], name="res"),
        Node("rprelu", [3], params={"shift_in": f(4), "slope": f(4), "shift_out": f(4)},
             name="act"),
        Node("sbconv2d", [4], {"stride": 2, "padding": 1, "binary_input": False},
             {"bits": _bits(rng, (6, 4, 3, 3), 0.1), "eta": f(6), "xi": f(6), "bias": f(6)},
             "b2"),
        Node("affine", [5], params={"scale": f(6), "shift": f(6)}, name="bn"),
        Node("hardtanh", [6], {"lo": -1.0, "hi": 1.0}, name="ht"),
        Node("maxpool", [7], {"k": 2, "stride": 1, "pad": 0}, name="mp"),
        Node("avgpool", [8], {"k": 2, "stride": 1, "pad": 1, "count_include_pad": False},
             name="ap"),
        Node("relu", [9], name="relu"),
        Node("global_avgpool", [10], name="gap"),
        Node("flatten", [11], name="flat"),
        Node("linear", [12], params={"weight": f(3, 6), "bias": f(3)}, name="fc"),
    ]
    return Graph(nodes, len(nodes) - 1, {"model": "tiny"})


def assert_graph_equal(a: Graph, b: Graph) -> None:
    assert a.output == b.output and a.metadata == b.metadata
    assert len(a.nodes) == len(b.nodes)
    for x, y in zip(a.nodes, b.nodes, strict=True):
        assert (x.op, x.inputs, x.attrs, x.name) == (y.op, y.inputs, y.attrs, y.name)
        assert x.params.keys() == y.params.keys()
        for k in x.params:
            assert x.params[k].dtype == y.params[k].dtype
            np.testing.assert_array_equal(x.params[k], y.params[k])


def test_round_trip(tmp_path):
    g = small_graph()
    path = tmp_path / "m.sbnn"
    ff.save(g, path)
    assert_graph_equal(g, ff.load(path))
    assert ff.load(path).shapes()[-1] == (3,)
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (3, 5, 3, 3), (64, 32, 1, 1)])
@pytest.mark.parametrize("p", [0.0, 0.01, 0.3, 0.5, 0.9, 1.0])
def test_bits_round_trip(shape, p):
    bits = _bits(np.random.default_rng(1), shape, p)
    blob, fields = ff.encode_bits(bits)
    np.testing.assert_array_equal(ff.decode_bits(blob, shape, fields), bits)


@pytest.mark.parametrize("p", [0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5])
def test_bits_near_entropy(p):
    # i.i.d. bits of a ResNet-sized layer: the stored size is within 1.3x of n H(p) (in fact ~1.02x)
    bits = _bits(np.random.default_rng(2), (256, 128, 3, 3), p)
    blob, _ = ff.encode_bits(bits)
    bound = bits.size * entropy(float(bits.mean()))
    assert 8 * len(blob) <= 1.05 * bound + 64


def test_clustered_bits_stay_within_the_bound():
    # 95% all-zero kernels, the rest dense: runs are not geometric, the code still stays near H(p)
    rng = np.random.default_rng(3)
    bits = np.zeros((128, 128, 3, 3), np.uint8)
    keep = rng.random((128, 128)) < 0.05
    bits[keep] = _bits(rng, (int(keep.sum()), 3, 3), 0.5)
    blob, _ = ff.encode_bits(bits)
    assert 8 * len(blob) <= 1.3 * bits.size * entropy(float(bits.mean()))


def _reseal(header: bytes, payload: bytes, major=ff.VERSION[0], minor=ff.VERSION[1]) -> bytes:
    sha = hashlib.sha256(header + payload).digest()
    return struct.pack("<8sHHIQ32s", ff.MAGIC, major, minor, len(header), len(payload),
                       sha) + header + payload


def _split(data: bytes) -> tuple[bytes, bytes]:
    hlen = struct.unpack_from("<I", data, 12)[0]
    return data[56: 56 + hlen], data[56 + hlen:]


def test_bad_files_say_what_is_wrong(tmp_path):
    data = ff.dumps(small_graph())
    header, payload = _split(data)
    cases = {
        b"": "bad magic|truncated",
        b"\x89PNG\r\n\x1a\n" + b"\0" * 100: "not an sbnn file",
        b"PK\x03\x04" + b"\0" * 100: "not an sbnn file",
        data[:40]: "truncated",
        data[:-1]: "truncated",
        data + b"\0": "trailing bytes",
        _reseal(header, payload, major=2): "version 2.0 is not supported",
        data[:100] + bytes([data[100] ^ 4]) + data[101:]: "checksum mismatch",
        _reseal(b"[1, 2]", payload): "not an sbnn graph",
        _reseal(b"\xff\xfe", payload): "not valid UTF-8 JSON",
        _reseal(header.replace(b'"affine"', b'"swish3"'), payload): "unknown op 'swish3'",
    }
    for bad, msg in cases.items():
        with pytest.raises(SBNNFormatError, match=msg):
            ff.loads(bad)
    # a newer minor version of the same major still loads
    assert_graph_equal(ff.loads(_reseal(header, payload, minor=9)), small_graph())
    path = tmp_path / "x.sbnn"
    path.write_bytes(data[:-10])
    with pytest.raises(SBNNFormatError, match="truncated"):
        ff.load(path)
    assert issubclass(SBNNFormatError, ValueError)


def _check_loaded_or_error(blob: bytes, run_native) -> bool:
    """Load ``blob``; an error must be SBNNFormatError; a loaded graph must run."""
    try:
        g = ff.loads(blob)
    except SBNNFormatError:
        return False
    shapes = g.shapes()  # already checked by loads; must not raise now
    if run_native is not None and np.prod(shapes[0]) * len(g.nodes) < 1e6:
        x = np.zeros((1, *g.input_shape), np.float32)
        run_native(g, x)
    return True


def _native_runner():
    from sbnn_runtime.native import core

    if core is None or not hasattr(core, "Engine"):
        return None
    from sbnn_runtime.engine import Engine

    return lambda g, x: Engine(g, 1, backend="native")(x)


def _mutate_json(obj, rng: random.Random):
    """Replace one random leaf (or list/dict) of a JSON value with a hostile value."""
    hostile = [-1, 0, 1, 2**31, 2**63, 10**30, 1.5, float("1e308"), "x", None, True, [], {},
               [2**40, 2**40], [-3], [1] * 9]
    path = []
    cur = obj
    if rng.random() < 0.9:  # mostly inside one node: ops, inputs, attrs, blob references
        path = [(obj, "nodes")]
        cur = obj["nodes"]
    while isinstance(cur, (list, dict)) and cur and (len(path) < 3 or rng.random() < 0.7):
        keys = list(range(len(cur))) if isinstance(cur, list) else list(cur)
        k = rng.choice(keys)
        path.append((cur, k))
        cur = cur[k]
    if not path:
        return rng.choice(hostile)
    parent, k = path[-1]
    r = rng.random()
    if isinstance(parent, dict) and r < 0.15:
        del parent[k]
    elif isinstance(cur, int) and not isinstance(cur, bool) and r < 0.6:
        parent[k] = cur + rng.choice([-1, 1, 7, -100, 2**20, 2**32])
    else:
        parent[k] = rng.choice(hostile)
    return obj


def test_fuzz_raw_and_resealed_mutations():
    rng = random.Random(1234)
    data = ff.dumps(small_graph())
    header, payload = _split(data)
    run_native = _native_runner()
    raw_loaded = resealed_loaded = 0
    for _ in range(2500):  # raw damage: the checksum or the prefix checks catch all of it
        kind = rng.randrange(5)
        b = bytearray(data)
        if kind == 0:
            b = b[: rng.randrange(len(b))]
        elif kind == 1:
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
        elif kind == 2:  # huge or odd sizes in the prefix
            off, fmt = rng.choice([(12, "<I"), (16, "<Q"), (8, "<H"), (10, "<H")])
            struct.pack_into(fmt, b, off, rng.choice([0, 1, 2**31 - 1, 2**32 - 1, len(b)]
                                                    if fmt == "<I" else [0, 2**63, 2**64 - 1, 7]
                                                    if fmt == "<Q" else [0, 65535]))
        elif kind == 3:
            i = rng.randrange(len(b))
            b[i: i + rng.randint(1, 16)] = bytes(rng.randrange(256) for _ in range(8))
        else:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 9)))
        if _check_loaded_or_error(bytes(b), run_native):
            # only a changed minor version (outside the checksum, by design) may still load
            raw_loaded += 1
            assert len(b) == len(data) and b[:10] + b[12:] == data[:10] + data[12:]
    assert raw_loaded < 2500 // 10  # the minor-version mutations, about 1 in 20
    for i in range(2500):  # valid checksum, hostile content: the graph checks must catch it
        if i % 3 == 0:
            p = bytearray(payload)
            for _ in range(rng.randint(1, 3)):
                p[rng.randrange(len(p))] = rng.randrange(256)
            blob = _reseal(header, bytes(p))
        else:
            h = json.dumps(_mutate_json(json.loads(header), rng)).encode()
            blob = _reseal(h, payload)
        resealed_loaded += _check_loaded_or_error(blob, run_native)
    # some resealed files are still valid models (e.g. a changed weight or name); most are not
    assert 0 < resealed_loaded < 2500
