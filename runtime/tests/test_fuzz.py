"""A short deterministic fuzz run of the ``.sbnn`` loader and the native engine (issue 18).

scripts/fuzz_sbnn.py runs the long campaign (>= 100k mutants, under ASan+UBSan); its result is
in docs/HARDENING.md.
"""

from __future__ import annotations

import numpy as np
import pytest

import sbnn_fuzz
import sbnn_runtime.fileformat as ff
from sbnn_runtime import native
from test_fileformat import small_graph

needs_core = pytest.mark.skipif(native.core is None or not hasattr(native.core, "Engine"),
                                reason=native.native_error or "no native engine")


@needs_core
def test_two_thousand_mutants_are_refused_cleanly_or_run():
    seeds = [ff.dumps(small_graph(s)) for s in range(3)]
    from random_graphs import random_graph

    seeds.append(ff.dumps(random_graph(4)))
    res = sbnn_fuzz.fuzz(2000, seed=18, limits={"max_memory": "256M", "max_macs": 1e9},
                         seeds=seeds)
    assert res.crashes == []
    assert res.slow == 0
    # the run reaches past the checksum: many are refused by the graph checks, some run
    assert res.refused > 1000 and res.ran > 100
    # the memory the campaign allows is the dearest estimate plus input of what ran: a figure
    # of the loader's, at most the limit plus the input image
    assert res.max_input_bytes < res.max_need_bytes <= (256 << 20) + res.max_input_bytes


def test_a_flipped_bit_anywhere_is_refused():
    data = ff.dumps(small_graph())
    rng = np.random.default_rng(0)
    for i in rng.choice(len(data) * 8, 300, replace=False):
        b = bytearray(data)
        b[i // 8] ^= 1 << (i % 8)
        with pytest.raises(ff.SBNNFormatError):
            ff.loads(bytes(b))


def test_mutants_are_deterministic():
    seeds = [ff.dumps(small_graph())]
    a = [sbnn_fuzz.mutate(seeds[0], np.random.default_rng(7)) for _ in range(3)]
    b = [sbnn_fuzz.mutate(seeds[0], np.random.default_rng(7)) for _ in range(3)]
    assert a == b


@needs_core
def test_files_at_the_limits_sit_at_them_and_run():
    # the campaign times these first: each must load under the limits, be the largest of its
    # family that does (work or memory near a limit), and run
    from sbnn_runtime.ops import Limits
    from sbnn_runtime.passes import graph_cost

    limits = {"max_memory": "64M", "max_macs": 2e7}
    lim = Limits.resolve(**limits)
    files = sbnn_fuzz.limit_files(limits)
    assert len(files) >= 10
    rng = np.random.default_rng(0)
    for name, data in files.items():
        cost = graph_cost(ff.loads(data, **limits))
        assert cost.work > lim.max_macs / 2 or cost.memory(1, 1) > lim.max_memory / 2, name
        assert sbnn_fuzz.run_one(data, limits, rng) == "ran", name
