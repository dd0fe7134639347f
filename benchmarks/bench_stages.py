"""ResNet-18's binary convs one by one: sparse vs dense kernel per ISA, batch 1, one thread.

    python benchmarks/bench_stages.py [--impl avx512] [--ones 0.05] [--rounds 60] [--shapes 4]
        [--json out.json]

Every 3x3 conv shape of ResNet-18 at 32x32 (stride 1 and the stride-2 convs that open each
stage), bits from the closed-form split of a normal random weight at ``--ones``, prepared once
(``_core.BConv2d``); sparse and dense alternate call by call (interleaved), each figure the 10th
percentile. ``--ones 0.002`` leaves almost no 1-bits: the fixed part of the sparse kernel
(binarising into phase planes, window sums, one epilogue per output channel).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from sbnn.method.primitives import closed_form
from sbnn_runtime.native import core, native_error

# (Ci, Co, H, stride)
SHAPES = [(64, 64, 32, 1), (64, 128, 32, 2), (128, 128, 16, 1), (128, 256, 16, 2),
          (256, 256, 8, 1), (256, 512, 8, 2), (512, 512, 4, 1), (256, 256, 14, 1)]


def _cpu() -> str:
    """The CPU model and whether it has VNNI (/proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                  if ln.startswith("model name")), "")
    return f"{model}, vnni={'avx512_vnni' in text or 'avx_vnni' in text}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--impl", default="auto")
    ap.add_argument("--ones", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--shapes", default="",
                    help="only these shapes, by index into SHAPES (e.g. 4 for 256->256@8x8)")
    args = ap.parse_args(argv)
    if core is None:
        print(f"no native core: {native_error}", file=sys.stderr)
        return 2
    try:
        pick = [SHAPES[int(i)] for i in args.shapes.split(",")] if args.shapes else SHAPES
    except (ValueError, IndexError):
        print(f"bench_stages: --shapes takes indices 0..{len(SHAPES) - 1}, got {args.shapes!r}",
              file=sys.stderr)
        return 2
    load0 = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"load {load0}")
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    rows = []
    for ci, co, hw, s in pick:
        _, _, bits = closed_form(torch.randn(co, ci, 3, 3), ones=args.ones)
        bits = bits.numpy().astype(np.uint8)
        e, z = np.ones(co, np.float32), np.zeros(co, np.float32)
        x = rng.standard_normal((1, ci, hw, hw), dtype=np.float32)
        layers = {k: core.BConv2d(bits, e, z, z, hw, hw, s, 1, None, k, args.impl, 1)
                  for k in ("sparse", "dense")}
        ts: dict[str, list[float]] = {k: [] for k in layers}
        for _ in range(args.rounds):
            for k, layer in layers.items():
                t0 = time.perf_counter()
                layer(x)
                ts[k].append(time.perf_counter() - t0)
        q = {k: float(np.percentile(v, 10)) * 1e3 for k, v in ts.items()}
        row = {"shape": f"{ci}->{co}@{hw}x{hw} s{s}", "impl": layers["sparse"].impl,
               "sparse_ms": q["sparse"], "dense_ms": q["dense"],
               "dense_over_sparse": q["dense"] / q["sparse"]}
        rows.append(row)
        print(f"{row['shape']:<20} {row['impl']:<7} sparse {q['sparse']:.3f} ms  dense "
              f"{q['dense']:.3f} ms  dense/sparse {row['dense_over_sparse']:.2f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"ones": args.ones, "rounds": args.rounds, "load_before": load0,
                       "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
                       "cpu": _cpu(), "available_isas": list(core.available_impls()),
                       "rows": rows}, f,
                      indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
