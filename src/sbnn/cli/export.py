"""``sbnn export``: a run folder or checkpoint to a ``.sbnn`` file (and ONNX, C99); a ``.sbnn``
file to C99 (``--c DIR [--name N]``, as ``python -m sbnn_runtime c`` writes it)."""

from __future__ import annotations

from sbnn.cli.common import add_out

__all__ = ["add_parser", "run", "input_shape_of"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a trained model as a .sbnn file (and optionally ONNX, C99)",
        description="Export RUN_DIR (its last.pt, or best.pt with --best) or a checkpoint to a "
                    "compact .sbnn file for sbnn.engine, BatchNorm folded, sparse bits "
                    "entropy-coded.")
    p.add_argument("path", help="run folder, .pt checkpoint, or a .sbnn file (with --c only)")
    add_out(p, "output .sbnn file (one of -o and --c is required)", dest="output",
            extra=("--output",))
    p.add_argument("--onnx", help="also write a standard-ops ONNX graph to this file")
    p.add_argument("--c", metavar="DIR", dest="c_dir",
                   help="also write a dependency-free C99 translation to DIR/model.c and "
                        "DIR/model.h and its kernels (for microcontrollers; see docs/DEPLOY.md)")
    p.add_argument("--name", help="with --c: N.c/N.h with symbols N_run, N_run_arena, N_* "
                                  "(a C identifier; default model.c, sbnn_run, SBNN_*)")
    p.add_argument("--int8", action="store_true",
                   help="write the layers kept in float (first conv, shortcuts, depthwise, "
                        "classifier) in int8, calibrated on a few batches of the run's training "
                        "data (or --calib), and print the test accuracy change")
    p.add_argument("--calib", metavar="FILE.npy",
                   help="with --int8: calibrate on these float (N, C, H, W) images, "
                        "preprocessed as the model expects, instead of the run's data")
    p.add_argument("--calib-batches", type=int, default=4, metavar="N",
                   help="with --int8: batches of 128 training images to calibrate on")
    p.add_argument("--best", action="store_true", help="use best.pt instead of last.pt")
    p.add_argument("--input-shape", help="C,H,W, C,L or F of one sample (default: from the run's "
                   "dataset)")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing the exported graph with the PyTorch model")
    p.set_defaults(func=run)


def input_shape_of(ckpt: dict, text: str | None) -> tuple[int, int, int]:
    """``--input-shape`` if given, else the shape of one sample of the checkpoint's dataset;
    a ValueError says which to pass."""
    from sbnn.deploy.export import parse_shape
    from sbnn.pipeline.data import DATASET_SHAPES

    if text:
        return parse_shape(text)
    dataset = (ckpt.get("config") or {}).get("data", {}).get("name")
    if dataset not in DATASET_SHAPES:
        raise ValueError(f"unknown input size for dataset {dataset!r}; pass --input-shape C,H,W")
    return (int(ckpt.get("in_chans", DATASET_SHAPES[dataset][0])), *DATASET_SHAPES[dataset][1:])


def _export_sbnn_file(args) -> int:
    """``sbnn export MODEL.sbnn --c DIR [--name N]``: the runtime's C export (the same files
    and report as ``python -m sbnn_runtime c MODEL.sbnn DIR --name N``)."""
    import sys

    from sbnn_runtime.fileformat import SBNNFormatError
    from sbnn_runtime.lower_c import CExportError, export_file

    if args.output or args.onnx or not args.c_dir:
        print("sbnn export: error: a .sbnn file exports to --c DIR only", file=sys.stderr)
        return 2
    try:
        print(export_file(args.path, args.c_dir, args.name)[1])
    except (SBNNFormatError, CExportError, OSError) as exc:
        print(f"sbnn export: error: {exc}", file=sys.stderr)
        return 2
    return 0


def run(args) -> int:
    import os
    import sys
    import tempfile

    from sbnn_runtime.lower_c import CExportError, check_name

    if os.fspath(args.path).endswith(".sbnn"):
        return _export_sbnn_file(args)
    try:
        check_name(args.name)  # before anything is read or written
    except CExportError as exc:
        print(f"sbnn export: error: {exc}", file=sys.stderr)
        return 2
    from sbnn import __version__
    from sbnn.deploy.export import ExportError, export
    from sbnn.pipeline.runs import load_checkpoint, load_model
    from sbnn_runtime.fileformat import SBNNFormatError
    from sbnn_runtime.lower_c import export_c, format_sizes
    from sbnn_runtime.summary import format_summary as format_model
    from sbnn_runtime.summary import summarize

    def fail(msg) -> int:
        print(f"sbnn export: error: {msg}", file=sys.stderr)
        return 2

    if not args.output and not args.c_dir:
        return fail("give -o FILE.sbnn and/or --c DIR")
    which = "best" if args.best else "last"
    ckpt = load_checkpoint(args.path, which)
    model = load_model(args.path, which)
    cfg = ckpt.get("config", {})
    try:
        shape = input_shape_of(ckpt, args.input_shape)
    except ValueError as exc:
        return fail(exc)
    meta = {"model": cfg.get("model", {}).get("name"), "model_kwargs":
            cfg.get("model", {}).get("kwargs", {}), "dataset": cfg.get("data", {}).get("name"),
            "num_classes": ckpt.get("num_classes"), "epoch": ckpt.get("epoch"),
            "source": os.fspath(args.path), "producer": f"sbnn {__version__}"}
    calib = None
    if (args.calib or args.calib_batches != 4) and not args.int8:
        return fail("--calib and --calib-batches go with --int8")
    if args.int8:
        from sbnn.pipeline.int8 import calibration_batches, load_calibration_file

        try:
            if args.calib:
                calib = load_calibration_file(args.calib, shape)
            elif not meta["dataset"]:
                return fail("the run names no dataset to calibrate on; pass --calib FILE.npy")
            else:
                calib = calibration_batches(meta["dataset"], cfg.get("data", {}).get("root"),
                                            args.calib_batches)
        except (ValueError, OSError) as exc:
            return fail(exc)
    targets = [t for t in (args.output, args.onnx, args.c_dir) if t]
    for target in targets:
        folder = os.path.dirname(os.path.abspath(target))
        if not os.path.isdir(folder):
            return fail(f"the folder of '{target}' does not exist")
    # a failed export leaves neither file behind (an older file of the same name stays)
    existed = {t: os.path.exists(t) for t in [args.output, args.onnx] if t}
    try:
        with tempfile.TemporaryDirectory() as tmp:  # --c alone: the .sbnn is not kept
            graph = export(model, args.output or os.path.join(tmp, "m.sbnn"), shape,
                           metadata=meta, onnx_path=args.onnx, check=not args.no_check,
                           int8=calib)
        cmodel = export_c(graph, args.c_dir, name=args.name) if args.c_dir else None
    except BaseException as exc:
        for t, was in existed.items():
            if not was and os.path.exists(t):
                os.unlink(t)
        if isinstance(exc, (ExportError, SBNNFormatError, CExportError, OSError)):
            return fail(exc)
        raise
    # the one summary (as `sbnn summary FILE` and `python -m sbnn_runtime summary FILE` print)
    print(format_model(summarize(args.output) if args.output else summarize(graph),
                       title=args.output or ""))
    if args.output:
        size = os.path.getsize(args.output)
        print(f"wrote {args.output} ({size / 1024:.1f} KiB)"
              + (f" and {args.onnx} ({os.path.getsize(args.onnx) / 1024:.1f} KiB)"
                 if args.onnx else ""))
    if calib is not None:
        _report_int8(model, shape, meta, graph, calib, cfg)
    if cmodel is not None:
        print(format_sizes(cmodel))
        print(f"wrote {os.path.join(args.c_dir, cmodel.stem + '.c')}, {cmodel.stem}.h and the "
              "kernels (sbnn_micro.h, sbnn_*.c)")
    return 0


def _report_int8(model, shape, meta, graph, calib, cfg) -> None:
    """What --int8 did, and the test accuracy it costs (fp32 vs int8 float layers, both on the
    engine)."""
    from sbnn.deploy.export import to_graph
    from sbnn.pipeline.int8 import accuracy_change, format_accuracy_change

    layers = list(graph.metadata.get("int8", {}))
    n = sum(len(b) for b in calib)
    print(f"int8: {len(layers)} float layer(s) in int8 ({', '.join(layers)}), calibrated on "
          f"{n} image(s)")
    if not meta["dataset"]:
        print("int8: the run names no dataset, so the accuracy change is not measured")
        return
    fp32 = to_graph(model.eval(), shape, meta)
    print(format_accuracy_change(accuracy_change(fp32, graph, meta["dataset"],
                                                 cfg.get("data", {}).get("root"))))
