#!/usr/bin/env python3
"""Expected aarch64 cost of a model from the instruction counts of the NEON inner loops.

An estimate, not a measurement: qemu is not timing-accurate and no ARM board is at hand. Each
layer's instructions per image (batch 1, one thread) come from the loop bodies of the aarch64
build (``aarch64-linux-gnu-objdump -d`` of kern_neon.o and floatops.o, GCC 12 -O3), with the
engine's own geometry (runtime/csrc/core/bconv.cpp ``make_geom``):

* sparse accumulation: per 1-bit of a filter and per 256-byte tile of the accumulation grid,
  29 instructions (ldrsw + add for the offset, 9 loads of 16 vectors, 16 ``add .16b``, cmp +
  branch); an 8-vector tile 17; a tile of r < 8 vectors about 4.5 + 1.56 r;
* int8 epilogue: about 17 instructions per 8 outputs (+6 per row);
* sparse preparation: ~1 per input value (binarise), 3 per 16 bytes of channel sums, 3 per 8
  window-sum columns per tap;
* dense GEMM: 33 instructions per 128-bit step of a 4 filters x 2 patches block (6 loads,
  8 and, 8 cnt, 8 add, loop), i.e. 33 / 8 per (filter, patch, 2 words), plus im2col (~3 per
  word) and packing (~2 per input value);
* float conv GEMM: 4 x 16 register tiles, 42 instructions per 64 multiply-accumulates
  (0.66 per MAC; separate fmul + fadd, see floatops.cpp) plus im2col (~3 per element);
  linear ~5 per MAC (a strict-order scalar dot product); element-wise ops ~1.5 per value.

Time = instructions / (IPC x clock) for three assumed cores; memory stalls are not modelled.

    python scripts/arm_estimate.py [--models fmnist_cnn,resnet18_irnet] [--ones 0.05,0.01]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dump_graph import MODEL_SHAPES, _inputs, registry_graph  # noqa: E402

from sbnn_runtime.ops import graph_macs  # noqa: E402

CORES = [("Cortex-A76 2.4 GHz, IPC 2.5", 2.5, 2.4e9), ("Cortex-A72 1.5 GHz, IPC 1.5", 1.5, 1.5e9),
         ("Cortex-A53 1.4 GHz, IPC 1", 1.0, 1.4e9)]


def _geom(H: int, W: int, k: int, s: int, p: int):
    # bconv.cpp make_geom (vec_bytes 32): output size, stacked rows, row pitch of the grid
    Hp, Wp = H + 2 * p, W + 2 * p
    Ho, Wo = (Hp - k) // s + 1, (Wp - k) // s + 1
    Hs, Wph = -(-Hp // s) * s, -(-Wp // s)
    if s == 1 and 1 <= p <= k - 1:
        Wph = W + p
    return Ho, Wo, Hs, Wph


def _accum(n_ones: int, Lr: int) -> float:
    nv, t = Lr // 16, 0.0
    t += (nv // 16) * 29
    r = nv % 16
    if r >= 8:
        t, r = t + 17, r - 8
    if r:
        t += 4.5 + 1.56 * r
    return n_ones * t


def estimate(graph) -> dict[str, float]:
    shapes, macs = graph.shapes(), graph_macs(graph)
    tot = {"sparse": 0.0, "dense": 0.0, "float": 0.0, "other": 0.0}
    for i, nd in enumerate(graph.nodes[1:], start=1):
        inp, out = shapes[nd.inputs[0]], shapes[i]
        if nd.op == "sbconv2d" and nd.attrs["binary_input"]:
            b = nd.params["bits"]
            Co, Ci, k, _ = b.shape
            s, p = nd.attrs["stride"], nd.attrs["padding"]
            _, H, W = inp
            Ho, Wo, Hs, Wph = _geom(H, W, k, s, p)
            Lr = -(-(Ho * Wph) // 32) * 32  # one image
            ones = b.reshape(Co, -1).sum(1)
            tot["sparse"] += (sum(_accum(int(n), Lr) for n in ones)
                              + Co * Ho * (math.ceil(Wo / 8) * 17 + 6)
                              + Ci * H * W + Ci * s * s * (-(-Hs * Wph // s)) / 16 * 3
                              + k * k * Lr / 8 * 3)
            Cw = -(-Ci // 64)
            K = k * k * Cw
            Kp, P = -(-K // 4) * 4, Ho * Wo
            tot["dense"] += Co * P * (Kp / 2) * 33 / 8 + P * K * 3 + Ci * H * W * 2 + Co * P * 4
        elif nd.op in ("conv2d", "sbconv2d"):
            w = nd.params["weight"] if nd.op == "conv2d" else nd.params["bits"]
            _, Ci, k, _ = w.shape
            direct = k == 1 and nd.attrs["stride"] == 1 and nd.attrs["padding"] == 0
            tot["float"] += macs[i] * 0.66 + (0 if direct else Ci * k * k * out[1] * out[2] * 3)
        elif nd.op == "linear":
            tot["float"] += macs[i] * 5
        else:
            tot["other"] += int(np.prod(out)) * 1.5
    return tot


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="fmnist_cnn,resnet18_irnet")
    ap.add_argument("--ones", default="0.05,0.01")
    args = ap.parse_args(argv)
    print("| model | ones | Minstr sparse engine | Minstr dense BNN | "
          + " | ".join(f"{c[0]}: sparse / dense ms" for c in CORES) + " |")
    print("|---|---|---|---|" + "---|" * len(CORES))
    for name in args.models.split(","):
        shape = MODEL_SHAPES.get(name, (3, 32, 32))
        for ones in map(float, args.ones.split(",")):
            t = estimate(registry_graph(name, ones, 0, _inputs(shape, 64, 0, 1000), shape))
            rest = t["float"] + t["other"]
            sp, de = t["sparse"] + rest, t["dense"] + rest
            cells = [f"{sp / (ipc * f) * 1e3:.2f} / {de / (ipc * f) * 1e3:.2f}"
                     for _, ipc, f in CORES]
            print(f"| {name} | {ones:g} | {sp / 1e6:.2f} (binary convs {t['sparse'] / 1e6:.2f}) | "
                  f"{de / 1e6:.2f} (binary convs {t['dense'] / 1e6:.2f}) | "
                  + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
