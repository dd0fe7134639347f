"""Binary-conv latency: PyTorch float conv vs the native dense (XNOR/popcount) and sparse kernels.

    python benchmarks/bench_conv.py [--json out.json] [--repeats 30] [--quick]

Per shape, batch and thread count: medians over repeated runs after warm-up, all measured in the
same run; ratios against the baselines of the same run (torch F.conv2d float32, and the dense
binary conv). Sparse kernels use random bits at ones fraction p. Weights are prepared once
(``_core.BConv2d``), so the timings are the per-inference cost including binarising the input.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from sbnn._native import core, native_error

FRACS = (0.05, 0.01)


def median_ms(fn, repeats: int, warmup: int = 3, min_time: float = 0.002) -> float:
    for _ in range(warmup):
        fn()
    # inner loop so that each sample lasts at least min_time (timer resolution, call overhead)
    t0 = time.perf_counter()
    fn()
    inner = max(1, int(min_time / max(time.perf_counter() - t0, 1e-7)))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples) * 1e3


def bench_shape(C, H, N, threads, repeats, impl, rng):
    torch.set_num_threads(threads)
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    xt = torch.from_numpy(x)
    w = torch.randn(C, C, 3, 3)
    ones = np.ones(C, np.float32)
    row = {"C": C, "H": H, "N": N, "threads": threads, "impl": impl}
    with torch.no_grad():
        row["torch_ms"] = median_ms(lambda: F.conv2d(xt, w, padding=1), repeats)
    dense_bits = (rng.random((C, C, 3, 3)) < 0.5).astype(np.uint8)
    dense = core.BConv2d(dense_bits, ones, ones, ones, H, H, 1, 1, None, "dense", impl, threads)
    row["dense_ms"] = median_ms(lambda: dense(x), repeats)
    row["dense_vs_torch"] = row["torch_ms"] / row["dense_ms"]
    for p in FRACS:
        bits = (rng.random((C, C, 3, 3)) < p).astype(np.uint8)
        sp = core.BConv2d(bits, ones, ones, ones, H, H, 1, 1, None, "sparse", impl, threads)
        ms = median_ms(lambda sp=sp: sp(x), repeats)
        row[f"sparse_{p}_ms"] = ms
        row[f"sparse_{p}_vs_dense"] = row["dense_ms"] / ms
        row[f"sparse_{p}_vs_torch"] = row["torch_ms"] / ms
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--impl", default="auto", help="auto, scalar, avx2, avx512")
    ap.add_argument("--quick", action="store_true", help="headline shape only")
    args = ap.parse_args()
    if core is None:
        raise SystemExit(native_error)
    rng = np.random.default_rng(0)
    impl = core.default_impl() if args.impl == "auto" else args.impl
    plan = [(256, 14, n, t) for n in (1, 32) for t in (1, 2)]
    if not args.quick:
        stages = ((64, 32), (128, 16), (256, 8), (512, 4))  # CIFAR ResNet-18 stages
        plan += [(c, h, 32, t) for c, h in stages for t in (1, 2)]
    rows = []
    hdr = (f"{'shape':>14} {'N':>3} {'thr':>3} {'torch ms':>9} {'dense ms':>9} {'x torch':>7}"
           + "".join(f" {'sp' + str(p) + ' ms':>10} {'x dense':>7}" for p in FRACS))
    print(f"impl={impl} cpu={platform.processor() or platform.machine()} "
          f"features={[k for k, v in core.cpu_features().items() if v]}")
    print(hdr)
    for C, H, N, t in plan:
        r = bench_shape(C, H, N, t, args.repeats, impl, rng)
        rows.append(r)
        line = (f"{f'{C}@{H}x{H}':>14} {N:>3} {t:>3} {r['torch_ms']:9.3f} {r['dense_ms']:9.3f} "
                f"{r['dense_vs_torch']:7.2f}")
        for p in FRACS:
            line += f" {r[f'sparse_{p}_ms']:10.3f} {r[f'sparse_{p}_vs_dense']:7.2f}"
        print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"impl": impl, "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
