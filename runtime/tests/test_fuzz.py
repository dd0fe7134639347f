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
