"""Issue 18, runtime side: limits that are bounds, the loader knowing every kernel limit, header
numbers of any size, and the removed SBNN_SPARSE_ZMM knob."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sbnn_runtime
import sbnn_runtime.fileformat as ff
from sbnn_runtime import kernel_costs as kc
from sbnn_runtime import native
from sbnn_runtime.ops import SBNNFormatError, SBNNLimitError
from sbnn_runtime.passes import graph_cost
from test_runtime_hardening import craft, node, zero_bits

ROOT = Path(__file__).resolve().parents[2]
HAVE_CORE = native.core is not None and hasattr(native.core, "bconv_geometry")
needs_core = pytest.mark.skipif(not HAVE_CORE, reason=native.native_error or "old native core")


def ones_bits(shape) -> dict:
    """A rice_gaps reference of an all-ones tensor: flipped all-zero, no bytes at all."""
    return dict(zero_bits(shape), flip=True)


def bconv_file(input_shape, bits_ref, stride=1, pad=0, binary=True) -> bytes:
    """A .sbnn file of one sbconv2d (eta, xi, bias zero) over an input of ``input_shape``."""
    co = bits_ref["shape"][0]

    def vec(i):
        return {"shape": [co], "dtype": "f32", "encoding": "raw", "offset": 4 * co * i,
                "length": 4 * co}

    conv = node("sbconv2d", [0], {"stride": stride, "padding": pad, "binary_input": binary},
                {"bits": bits_ref, "eta": vec(0), "xi": vec(1), "bias": vec(2)})
    return craft([node("input", attrs={"shape": list(input_shape)}), conv], 1, bytes(12 * co))


# -- item 8: a header number of any size is a format error -----------------------------------

def _leaves(o, path=()):
    if isinstance(o, dict):
        for k, v in o.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(o, list):
        for i, v in enumerate(o):
            yield from _leaves(v, path + (i,))
    else:
        yield path


def _with_header(data: bytes, head: dict) -> bytes:
    hlen = struct.unpack_from("<I", data, 12)[0]
    payload = data[56 + hlen:]
    hb = json.dumps(head).encode()
    return struct.pack("<8sHHIQ32s", ff.MAGIC, 1, 0, len(hb), len(payload),
                       hashlib.sha256(hb + payload).digest()) + hb + payload


def test_every_header_number_of_any_size_is_a_format_error_or_loads():
    # a 400-digit integer as hardtanh's lo raised OverflowError (int too large to convert to
    # float) with a traceback; every leaf of a real header gets huge and odd numbers
    from test_fileformat import small_graph

    data = ff.dumps(small_graph())
    hlen = struct.unpack_from("<I", data, 12)[0]
    head = json.loads(data[56:56 + hlen])
    tried = 0
    for path in _leaves(head):
        for big in (10**400, -10**400, 2**63, 1e308, -0.0, 2**31):
            h = copy.deepcopy(head)
            o = h
            for p in path[:-1]:
                o = o[p]
            o[path[-1]] = big
            try:
                ff.loads(_with_header(data, h))
            except SBNNFormatError:
                pass
            tried += 1
    assert tried > 300
    h = copy.deepcopy(head)
    ht = next(n for n in h["nodes"] if n["op"] == "hardtanh")
    ht["attrs"]["lo"] = -10**400
    with pytest.raises(SBNNFormatError, match="attribute 'lo' must be float"):
        ff.loads(_with_header(data, h))


# -- item 12: the loader knows every limit of the kernels ------------------------------------

def test_binary_conv_of_65536_input_channels_is_a_format_error():
    # passed the loader, then the engine raised a plain ValueError "bconv: at most 32767 ..."
    data = bconv_file((65536, 1, 1), zero_bits((1, 65536, 1, 1)))
    with pytest.raises(SBNNFormatError, match="65536 input channels, the binary conv takes at "
                                              "most 32767"):
        ff.loads(data)
    # on real-valued input it is a float conv, which has no such limit
    ok = bconv_file((65536, 1, 1), zero_bits((1, 65536, 1, 1)), binary=False)
    assert ff.loads(ok).shapes()[1] == (1, 1, 1)


def test_binary_conv_past_32_bit_plane_offsets_is_a_format_error():
    # 16384 channels, a 1x16384 kernel, pad 16383: the padded planes need 2^44 bytes
    data = bconv_file((16384, 1, 1), zero_bits((1, 16384, 1, 16384)), stride=16384, pad=16383)
    with pytest.raises(SBNNFormatError, match="32-bit offsets"):
        ff.loads(data)


def test_binary_conv_with_too_many_border_classes_is_a_format_error():
    # a 600x600 kernel at pad 599 over a 1x1 map: 600 x 600 distinct border masks, past the
    # dense kernel's 16-bit class ids
    data = bconv_file((1, 1, 1), zero_bits((1, 1, 600, 600)), pad=599)
    with pytest.raises(SBNNFormatError, match="border classes"):
        ff.loads(data)


@needs_core
def test_loader_limits_match_what_the_engine_refuses():
    # every (channels, size, kernel, pad) here either loads and builds, or the loader refuses
    # it: the engine never raises after the loader said yes
    cases = [(32767, 1, 1, 1, 1, 0), (32768, 1, 1, 1, 1, 0), (1, 1, 1, 400, 400, 399),
             (1, 1, 1, 100, 100, 99), (2, 3, 3, 3, 3, 2)]
    built = 0
    for ci, h, w, kh, kw, pad in cases:
        data = bconv_file((ci, h, w), zero_bits((1, ci, kh, kw)), pad=pad)
        try:
            g = ff.loads(data, max_macs="inf", max_memory="inf")
        except SBNNFormatError:
            continue
        sbnn_runtime.Engine(g, 1, backend="native", max_macs="inf", max_memory="inf")
        built += 1
    assert built == 3


# -- item 3: the work limit counts what the kernels do ---------------------------------------

@needs_core
def test_geometry_twin_matches_the_native_layout_on_every_small_geometry():
    rng = np.random.default_rng(3)
    shapes = [(ci, n, n, k, k, s, p) for ci in (1, 3, 65) for n in range(1, 5)
              for k in range(1, 6) for s in range(1, 4) for p in range(3)]
    shapes += [(int(rng.integers(1, 300)), int(rng.integers(1, 40)), int(rng.integers(1, 40)),
                int(rng.integers(1, 6)), int(rng.integers(1, 6)), int(rng.integers(1, 4)),
                int(rng.integers(0, 3))) for _ in range(300)]
    n = 0
    for ci, h, w, kh, kw, s, p in shapes:
        if p >= max(kh, kw) or h + 2 * p < kh or w + 2 * p < kw:
            continue
        for vec in (32, 64):
            for mg in (1, 2, 5, 64):
                want = native.core.bconv_geometry(ci, h, w, kh, kw, s, p, vec, mg)
                got = kc.bconv_geometry(ci, h, w, kh, kw, s, p, vec, mg).__dict__
                assert got == want, (ci, h, w, kh, kw, s, p, vec, mg)
                n += 1
    assert n > 2000


def _counted_sparse_steps(g: kc.BConvGeometry, Co: int, ones_per_c: list[int], N: int,
                          T: int) -> int:
    """The loops of BConvLayer::run / group_sparse, walked one by one, counting their trips."""
    total = 0
    G = max(1, min(g.G, N))
    ngroups = (N + G - 1) // G
    if T > 1 and ngroups >= T:
        ngroups = (ngroups + T - 1) // T * T
        G = (N + ngroups - 1) // ngroups
        ngroups = (N + G - 1) // G
    for k in range(ngroups):
        nimg = min(G, N - k * G)
        sg = g if G >= g.G else kc.bconv_geometry(g.Ci, g.H, g.W, g.kh, g.kw, g.stride, g.pad,
                                                  32, G)
        lr = (((nimg - 1) * sg.Hs // sg.stride + sg.Ho) * sg.Wph + 31) // 32 * 32
        total += sg.plane_alloc + 2 * sg.ssum_alloc  # the memsets of sparse_prep
        for _ in range(nimg):
            total += g.Ci * g.H * g.W  # binarising every input value
        for _ in range(g.kh * g.kw):
            total += lr  # window_sum: one row of Lr per tap
        for c in range(Co):
            total += lr  # the accumulator (zeroed or widened) of this channel
            for _ in range(ones_per_c[c]):
                total += lr  # one row of Lr bytes per 1-bit
            for _ in range(nimg):
                total += g.Ho * g.Wo  # the epilogue of one image
    return total


def test_sparse_cost_model_equals_the_counted_kernel_loops():
    rng = np.random.default_rng(5)
    tried = 0
    for _ in range(60):
        ci, h, w = int(rng.integers(1, 40)), int(rng.integers(1, 20)), int(rng.integers(1, 20))
        k, s = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        p = int(rng.integers(0, k))
        if h + 2 * p < k or w + 2 * p < k:
            continue
        co = int(rng.integers(1, 20))
        ones = [int(rng.integers(0, ci * k * k + 1)) for _ in range(co)]
        g = kc.bconv_geometry(ci, h, w, k, k, s, p, 64)
        for n, t in ((1, 1), (3, 1), (7, 2), (64, 4), (5, 8)):
            assert kc.sparse_steps(g, co, sum(ones), n, t) == _counted_sparse_steps(
                g, co, ones, n, t)
            tried += 1
    assert tried > 100


def _counted_dense_steps(g: kc.BConvGeometry, Co: int, N: int) -> int:
    """The loops of BConvLayer::image_dense, walked one by one, each trip at its weight."""
    total = 0
    P = g.Ho * g.Wo
    for _ in range(N):
        total += 8 * g.Hp * g.Wp * g.Cw  # dense_pack clears the padded plane of words
        for _ in range(g.Ci * g.H * g.W):
            total += kc.DENSE_SCALAR_STEPS  # packing one input value into its bit
        for _ in range(P):
            for _ in range(g.Kp):
                total += kc.DENSE_SCALAR_STEPS  # im2col: one word and its popcount (or a zero)
        for _ in range(Co):
            total += kc.DENSE_CHANNEL_STEPS  # the channel's GEMM edge tiles and epilogue call
            for _ in range(P):
                total += kc.DENSE_WORD_STEPS * g.Kp + kc.DENSE_OUTPUT_STEPS
    return total


def _counted_plan_steps(g: kc.BConvGeometry, bits: np.ndarray) -> int:
    """BConvLayer::plan_for(G < g.G) -> remap_plan: one offset per 1-bit and per tap."""
    if g.G <= 1:
        return 0
    total = 0
    for _ in range(int(np.count_nonzero(bits)) + g.kh * g.kw):
        total += kc.PLAN_ONE_STEPS
    return total


def test_dense_cost_model_equals_the_counted_kernel_loops():
    rng = np.random.default_rng(6)
    tried = 0
    for _ in range(40):
        ci, h, w = int(rng.integers(1, 130)), int(rng.integers(1, 12)), int(rng.integers(1, 12))
        k, s = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        p = int(rng.integers(0, k))
        if h + 2 * p < k or w + 2 * p < k:
            continue
        co = int(rng.integers(1, 20))
        g = kc.bconv_geometry(ci, h, w, k, k, s, p, 64)
        for n in (1, 3):
            assert kc.dense_steps(g, co, n) == _counted_dense_steps(g, co, n)
            tried += 1
        bits = (rng.random((co, ci, k, k)) < 0.1).astype(np.uint8)
        assert kc.plan_steps(g, int(bits.sum())) == _counted_plan_steps(g, bits)
    assert tried > 40


def _choice_rounds() -> int:
    """``kChoiceRounds`` of runtime/csrc/core/engine.cpp: the timing rounds of a first run."""
    text = (ROOT / "runtime" / "csrc" / "core" / "engine.cpp").read_text()
    return int(re.search(r"constexpr int kChoiceRounds = (\d+);", text).group(1))


def _counted_first_run(graph, batch: int) -> int:
    """What the first run of a fresh engine at ``batch`` does, counted loop by loop: each binary
    conv of the packed kernels builds the sparse plan for the batch's group (when it is smaller
    than the kernel's), times both kernels in ``kChoiceRounds`` rounds (one when they are slow)
    and runs the sparse one once more when it won; every other node runs once."""
    from sbnn_runtime import ops

    shapes = graph.shapes()
    total = 0
    for i, nd in enumerate(graph.nodes):
        ins, out = [shapes[j] for j in nd.inputs], shapes[i]
        if not ops._is_fast_bconv(nd):
            spec = ops.OPS[nd.op]
            one = spec.work(nd, ins, out) if spec.work else spec.macs(nd, ins, out) + int(
                np.prod(out))
            total += batch * int(one)
            continue
        bits = nd.params["bits"]
        co, ci, kh, kw = bits.shape
        c, h, w = ins[0]
        st, pd = ops.conv_geometry(nd)[0], ops.conv_geometry(nd)[2]
        g = kc.bconv_geometry(ci, h, w, kh, kw, st, pd, 64)
        ones = [int(np.count_nonzero(bits[o])) for o in range(co)]
        sparse = _counted_sparse_steps(g, co, ones, batch, 1)
        dense = _counted_dense_steps(g, co, batch)
        plan = _counted_plan_steps(g, bits) if batch < g.G else 0
        total += plan + _choice_rounds() * (sparse + dense) + sparse
    return total


@pytest.mark.parametrize("seed", [78, 123, 13, 22, 106, 136, 145, 3, 7])
def test_work_estimate_covers_the_first_run_of_tiny_graphs(seed):
    # the bench's graphs whose first run was 10-14x the median rate (docs/HARDENING.md): their
    # first run, counted loop by loop (the dense kernel's trips at their weights, the sparse
    # plan built for the batch's group), is at most kChoiceRounds + 1 times the estimate the
    # loader's max_macs bounds, at batch 1 (where every G > 1 builds a plan) and at batch 2
    from random_graphs import random_graph

    graph = random_graph(seed, 4)
    work = graph_cost(graph).work
    for batch in (1, 2):
        counted = _counted_first_run(graph, batch)
        assert counted <= (_choice_rounds() + 1) * batch * work, (seed, batch)


def test_a_wide_kernel_over_a_wide_row_is_refused_by_its_real_work():
    # the kind of file: 67 M MACs (all-ones bits cost no bytes), but every 1-bit makes
    # the sparse kernel add a 16384-byte grid row: over 10^12 steps, minutes of run time
    data = bconv_file((64, 1, 16384), ones_bits((64, 64, 1, 16384)), pad=0)
    assert len(data) < 2048
    g = ff.loads(data, max_macs="inf")
    cost = graph_cost(g)
    assert cost.macs == 64 * 64 * 16384 and cost.work > 10**12
    with pytest.raises(SBNNLimitError, match="kernel steps per image") as e:
        ff.loads(data)
    assert "\n" not in str(e.value)


def test_header_ones_drive_the_estimate_before_decoding():
    # the same conv, sparse or all-ones: the stand-ins carry the 1-bits the header declares,
    # and the decoded graph costs the same
    def file(ref):
        return bconv_file((8, 32, 32), ref, pad=1)

    works = []
    for ref in (zero_bits((8, 8, 3, 3)), ones_bits((8, 8, 3, 3))):
        data = file(ref)
        work = graph_cost(ff.loads(data)).work  # of the decoded bits
        ff.loads(data, max_macs=work)  # the header's figure is the same: exactly at the limit
        with pytest.raises(SBNNLimitError):
            ff.loads(data, max_macs=work - 1)
        works.append(work)
    assert works[1] > works[0] + 8 * 8 * 9 * 32 * 32


# -- item 2: the memory estimate bounds peak RSS ---------------------------------------------

@needs_core
def test_peak_rss_stays_under_the_estimate_on_random_graphs():
    # a handful here; scripts/bench_limits.py rss --graphs 200 runs the long campaign
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_limits.py"), "rss",
                        "--graphs", "3", "--seed", "1000"], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 0, r.stdout + r.stderr


def test_memory_estimate_counts_both_binary_kernels_and_their_plans():
    data = bconv_file((64, 2, 2), ones_bits((64, 64, 3, 3)), pad=1)
    cost = graph_cost(ff.loads(data))
    nb = 64 * 64 * 9
    # decoded bits, each kernel's copy, 4-byte offsets per 1-bit in each kernel's full plan and
    # in up to G - 1 partial-group plans (a 2x2 map stacks many images per grid)
    g = kc.bconv_geometry(64, 2, 2, 3, 3, 1, 1, 64)
    assert g.G > 8
    assert cost.engine_param_bytes >= 3 * nb + 4 * nb * (2 + g.G - 1)


# -- item 10: the SBNN_SPARSE_ZMM knob is gone -----------------------------------------------

def test_no_sparse_zmm_knob_in_sources_or_docs():
    # it made 112 of 1,296 kernel tests fail; removed with its documentation
    hits = []
    for top in ("runtime/csrc", "docs"):
        for f in (ROOT / top).rglob("*"):
            if f.is_file() and f.suffix in {".cpp", ".h", ".inc", ".md"}:
                text = f.read_text(errors="replace")
                if "SBNN_SPARSE_ZMM=" in text or "defined(SBNN_SPARSE_ZMM)" in text:
                    hits.append(str(f.relative_to(ROOT)))
    assert hits == []
