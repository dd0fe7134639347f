"""sbnn_runtime.summarize: per-node facts of a model, checked against independent counts."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import sbnn_runtime
import sbnn_runtime.fileformat as ff
from sbnn_runtime.ops import graph_macs
from sbnn_runtime.summary import format_summary, summarize
from test_fileformat import small_graph


def test_summary_of_a_file_matches_independent_counts(tmp_path):
    g = small_graph(3)
    bits = g.nodes[2].params["bits"]
    bits[1] = 0  # filter 1: four all-zero kernels
    bits[2, 3] = 0  # one more
    path = tmp_path / "m.sbnn"
    ff.save(g, path)
    data = path.read_bytes()
    s = sbnn_runtime.summarize(path)
    assert s == summarize(data)  # a path or the bytes: the same
    hlen = struct.unpack_from("<I", data, 12)[0]
    head = json.loads(data[56:56 + hlen])
    macs = graph_macs(g)
    shapes = g.shapes()
    assert [r["op"] for r in s["nodes"]] == [nd.op for nd in g.nodes]
    for i, (r, nd, jn) in enumerate(zip(s["nodes"], g.nodes, head["nodes"], strict=True)):
        assert (r["index"], r["name"], tuple(r["shape"])) == (i, nd.name, shapes[i])
        assert r["params"] == sum(a.size for a in nd.params.values())
        assert r["stored_bytes"] == sum(ref["length"] for ref in jn["params"].values())
        assert r["macs"] == macs[i]
        assert r["binary"] == (nd.op == "sbconv2d" and nd.attrs["binary_input"])
    b1 = s["nodes"][2]
    want_zero = sum(not bits[o, c].any() for o in range(bits.shape[0])
                    for c in range(bits.shape[1]))
    assert want_zero >= 5
    assert b1["zero_kernels"] == want_zero and b1["kernels"] == 16
    assert b1["ones_fraction"] == pytest.approx(bits.sum() / bits.size)
    assert b1["bits_per_weight"] == pytest.approx(8 * head["nodes"][2]["params"]["bits"]["length"]
                                                  / bits.size)
    t = s["totals"]
    assert t["file_bytes"] == len(data)
    assert t["macs"] == sum(macs) == t["binary_macs"] + t["float_macs"]
    assert t["binary_macs"] == macs[2]  # b2 runs on real inputs: a float conv
    n_bits = bits.size + g.nodes[5].params["bits"].size
    assert t["binary_params"] == n_bits
    assert t["params"] == sum(a.size for nd in g.nodes for a in nd.params.values())
    assert t["stored_bytes"] == sum(r["stored_bytes"] for r in s["nodes"])
    json.dumps(s)  # plain data


def test_summary_of_a_graph_equals_that_of_its_file():
    g = small_graph(4)
    assert summarize(g) == summarize(ff.dumps(g))


def test_format_summary_lists_every_node_and_the_totals():
    g = small_graph(5)
    text = format_summary(summarize(g))
    lines = text.splitlines()
    for nd in g.nodes:
        assert any(nd.name in line for line in lines)
    assert "sbconv2d (bin)" in text and "MACs per image" in text and "binary" in text
    assert len(lines) == len(g.nodes) + 6


def test_summary_refuses_a_bad_file():
    with pytest.raises(ff.SBNNFormatError):
        summarize(b"not a model")
    assert np.all(np.isfinite([r["macs"] for r in summarize(small_graph())["nodes"]]))
