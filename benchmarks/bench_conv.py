"""Binary-conv latency: PyTorch float conv vs the native dense (XNOR/popcount) and sparse kernels.

    python benchmarks/bench_conv.py [--json out.json] [--repeats 30] [--quick]

Per shape, batch and thread count, every kernel is timed in interleaved rounds (torch, dense,
each sparse variant, then the next round), so that a slow phase of a shared machine hits all of
them alike; a ratio is the median over rounds of the per-round ratio, a time the median over
rounds. On a loaded machine ``--stat p10`` (or ``min``) reports the low quantile of short
samples instead, the ones no other job preempted. Sparse kernels run at ones fraction p with
random bits ("rand") and with the bits of a trained-like layer ("cf": the closed-form
{alpha, beta} split at p of a normal random weight). Weights are prepared once
(``_core.BConv2d``), so the timings are the per-inference cost including binarising the input.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from sbnn.method.primitives import closed_form
from sbnn_runtime.native import core, native_error

FRACS = (0.05, 0.01)


def calibrate(fn, warmup: int = 3, min_time: float = 0.0002) -> int:
    """Calls per sample so that one sample lasts at least min_time (timer, call overhead)."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    return max(1, int(min_time / max(time.perf_counter() - t0, 1e-7)))


def interleaved_ms(fns: dict, repeats: int) -> dict:
    """Per name, the list of per-round times in ms (rounds interleave all fns)."""
    inner = {k: calibrate(f) for k, f in fns.items()}
    out = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner[k]):
                f()
            out[k].append((time.perf_counter() - t0) / inner[k] * 1e3)
    return out


def summary(v: list, stat: str) -> float:
    """median, or a low quantile ("p10", "min") that a shared, loaded machine distorts less:
    short samples that no other job preempted."""
    if stat == "median":
        return statistics.median(v)
    if stat == "min":
        return min(v)
    return float(np.quantile(v, int(stat[1:]) / 100))


def round_ratio(num: list, den: list, stat: str) -> float:
    """median ratio of rounds; for a quantile stat, the ratio of the quantiles (a round's fast
    sample of one kernel need not be fast for the other)."""
    if stat == "median":
        return statistics.median(a / b for a, b in zip(num, den, strict=True))
    return summary(num, stat) / summary(den, stat)


def bench_shape(C, H, N, threads, repeats, impl, rng, stat="median"):
    torch.set_num_threads(threads)
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    xt = torch.from_numpy(x)
    w = torch.randn(C, C, 3, 3)
    ones = np.ones(C, np.float32)
    row = {"C": C, "H": H, "N": N, "threads": threads, "impl": impl}
    dense_bits = (rng.random((C, C, 3, 3)) < 0.5).astype(np.uint8)
    dense = core.BConv2d(dense_bits, ones, ones, ones, H, H, 1, 1, None, "dense", impl, threads)

    def torch_conv():
        with torch.no_grad():
            F.conv2d(xt, w, padding=1)

    fns = {"torch": torch_conv, "dense": lambda: dense(x)}
    for p in FRACS:
        variants = {
            "rand": (rng.random((C, C, 3, 3)) < p).astype(np.uint8),
            "cf": closed_form(torch.randn(C, C, 3, 3), ones=p)[2].to(torch.uint8).numpy(),
        }
        for name, bits in variants.items():
            sp = core.BConv2d(bits, ones, ones, ones, H, H, 1, 1, None, "sparse", impl, threads)
            fns[f"sparse_{p}_{name}"] = lambda sp=sp: sp(x)
    t = interleaved_ms(fns, repeats)
    for k, v in t.items():
        row[f"{k}_ms"] = summary(v, stat)
    row["dense_vs_torch"] = round_ratio(t["torch"], t["dense"], stat)
    for k in fns:
        if k.startswith("sparse_"):
            row[f"{k}_vs_dense"] = round_ratio(t["dense"], t[k], stat)
            row[f"{k}_vs_torch"] = round_ratio(t["torch"], t[k], stat)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--impl", default="auto", help="auto, scalar, avx2, avx512")
    ap.add_argument("--quick", action="store_true", help="headline shape only")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma separated")
    ap.add_argument("--stat", default="median",
                    help="median (default), min or pNN (e.g. p10) of the samples")
    args = ap.parse_args()
    if core is None:
        raise SystemExit(native_error)
    rng = np.random.default_rng(0)
    impl = core.default_impl() if args.impl == "auto" else args.impl
    threads = [int(t) for t in args.threads.split(",")]
    plan = [(256, 14, n, t) for n in (1, 32) for t in threads]
    if not args.quick:
        stages = ((64, 32), (128, 16), (256, 8), (512, 4))  # CIFAR ResNet-18 stages
        plan += [(c, h, 32, t) for c, h in stages for t in threads]
    rows = []
    cols = [f"sparse_{p}_{v}" for p in FRACS for v in ("rand", "cf")]
    hdr = (f"{'shape':>11} {'N':>3} {'thr':>3} {'torch ms':>9} {'dense ms':>9} {'x torch':>7}"
           + "".join(f" {c[7:] + ' ms':>14} {'x dense':>7}" for c in cols))
    print(f"impl={impl} cpu={platform.processor() or platform.machine()} "
          f"features={[k for k, v in core.cpu_features().items() if v]} "
          f"load={os.getloadavg()[0]:.1f} stat={args.stat}")
    print(hdr)
    for C, H, N, t in plan:
        r = bench_shape(C, H, N, t, args.repeats, impl, rng, args.stat)
        rows.append(r)
        line = (f"{f'{C}@{H}x{H}':>11} {N:>3} {t:>3} {r['torch_ms']:9.3f} {r['dense_ms']:9.3f} "
                f"{r['dense_vs_torch']:7.2f}")
        for c in cols:
            line += f" {r[c + '_ms']:14.3f} {r[c + '_vs_dense']:7.2f}"
        print(line, flush=True)
    print(f"load={os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            meta = {"impl": impl, "torch": torch.__version__, "load": os.getloadavg(),
                    "stat": args.stat}
            json.dump({**meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
