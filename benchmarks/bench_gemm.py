"""The engine's float conv2d (im2col panels + per-ISA FMA GEMM) against numpy's BLAS.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_gemm.py [--rounds 5] [--calls 30]
                                                           [--json out.json]

ResNet-18's float layers at 32x32 (the stem and the 1x1 stride-2 shortcuts) plus a plain 1x1,
batch 1, one thread: the engine runs the whole layer (``Engine.run`` of a one-op graph:
im2col into panels, GEMM, output), numpy only the GEMM ``w @ x`` on the already-lowered
matrix (so the comparison flatters the BLAS). Interleaved rounds; each figure is the best
round's 10th percentile. This is how the choice "micro-kernels, no BLAS" in docs/ENGINE.md
was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

# (Co, Ci, H, k, stride)
LAYERS = [(64, 3, 32, 3, 1), (128, 64, 32, 1, 2), (256, 128, 16, 1, 2), (512, 256, 8, 1, 2),
          (64, 64, 32, 1, 1)]


def p10(fn, calls: int) -> float:
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.percentile(ts, 10))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    from sbnn_runtime import kernels
    from sbnn_runtime.native import core, native_error

    if core is None:
        print(f"no native core: {native_error}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    rows = []
    print(f"engine ISA {core.default_impl()}, OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, load {os.getloadavg()[0]:.1f}")
    for co, ci, hw, k, s in LAYERS:
        x = rng.standard_normal((1, ci, hw, hw), dtype=np.float32)
        w = rng.standard_normal((co, ci, k, k), dtype=np.float32)
        e = core.Engine(1)
        e.set_output(e.conv2d(e.input(ci, hw, hw), w, None, s, k // 2))
        y = e.run(x)
        ref = kernels.conv2d_reference(x, w, None, s, k // 2)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-3)
        ho = ref.shape[2]
        if k == 1:
            xm = np.ascontiguousarray(x[0, :, ::s, ::s]).reshape(ci, ho * ho)
        else:
            xm = rng.standard_normal((ci * k * k, ho * ho), dtype=np.float32)
        wm = w.reshape(co, -1)
        best = {"engine": 1e9, "numpy": 1e9}
        for _ in range(args.rounds):
            best["engine"] = min(best["engine"],
                                 p10(lambda e=e, x=x: e.run(x), args.calls))
            best["numpy"] = min(best["numpy"], p10(lambda wm=wm, xm=xm: wm @ xm, args.calls))
        flops = 2 * co * wm.shape[1] * ho * ho
        row = {"layer": f"{ci}->{co} {k}x{k} s{s} @{hw}x{hw}", "flops": flops,
               **{f"{n}_us": 1e6 * t for n, t in best.items()},
               **{f"{n}_gflops": flops / t / 1e9 for n, t in best.items()}}
        rows.append(row)
        print(f"{row['layer']:<24} engine {row['engine_us']:7.1f} us {row['engine_gflops']:6.1f} "
              f"GFLOP/s   numpy GEMM {row['numpy_us']:7.1f} us {row['numpy_gflops']:6.1f} GFLOP/s"
              f"   numpy/engine {best['numpy'] / best['engine']:.2f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"isa": core.default_impl(), "rows": rows}, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
