"""``sbnn bench``: latency of a ``.sbnn`` model, per layer, against its baselines."""

from __future__ import annotations

from sbnn.cli.common import add_seed, add_threads

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="latency of a .sbnn model vs dense-binary, PyTorch and onnxruntime "
                      "baselines",
        description="Per-layer and whole-model latency (medians after warm-up) of a .sbnn "
                    "model in the native engine (the kernel each binary conv runs, per layer, "
                    "named by its module path), against the same graph with dense binary convs, "
                    "the float twin in PyTorch float32, and onnxruntime: fp32 and int8 (QDQ, "
                    "per-channel) on the ONNX lowering of the float twin, fp32 on the ONNX "
                    "lowering of the model's graph, measured in the same run.")
    p.add_argument("model", help=".sbnn file")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32], metavar="N",
                   help="batch sizes")
    add_threads(p, many=True)
    add_seed(p, "seed of the random input (default: 0)")
    p.add_argument("--warmup", type=int, default=3, metavar="N",
                   help="untimed runs before timing")
    p.add_argument("--repeat", type=int, default=10, metavar="N",
                   help="timed runs per candidate (the median is reported)")
    p.add_argument("--no-float-twin", action="store_true",
                   help="skip the registry float twin (<model>_fp) baseline")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer tables")
    p.add_argument("--no-onnxruntime", action="store_true",
                   help="skip the onnxruntime baselines (float twin fp32/int8, sbnn's ONNX)")
    p.add_argument("--json", dest="json_out", metavar="FILE",
                   help="also write the results to this JSON file")
    p.add_argument("--csv", dest="csv_out", metavar="FILE",
                   help="also write one CSV row per (batch, threads, candidate or layer)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import sys

    from sbnn_runtime.native import core, native_error

    if core is None or not hasattr(core, "Engine"):
        print(f"sbnn bench: error: the native engine is unavailable: {native_error}",
              file=sys.stderr)
        return 2
    from sbnn.deploy.bench import bench, format_table, to_csv
    from sbnn_runtime.fileformat import SBNNFormatError

    def progress(run):
        print(f"  batch {run['batch']}, {run['threads']} thread(s): sparse "
              f"{1e3 * run['median_s']['sparse']:.3f} ms", file=sys.stderr)

    try:
        res = bench(args.model, args.batch, args.threads, args.warmup, args.repeat,
                    not args.no_float_twin, not args.no_layers, progress,
                    onnxruntime=not args.no_onnxruntime,
                    seed=0 if args.seed is None else args.seed)
    except SBNNFormatError as exc:
        print(f"sbnn bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(res, not args.no_layers))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
    if args.csv_out:
        with open(args.csv_out, "w", newline="") as f:
            f.write(to_csv(res))
    return 0
