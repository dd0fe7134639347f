#!/usr/bin/env python3
"""Dump exported models for the C++ engine driver (runtime/csrc/tests/engine_test.cpp).

The C++ core has no ``.sbnn`` reader (Python reads the file), so this script replays a loaded
graph's native build (each op's ``lower_native`` in the op table, then the fusion groups of
:func:`sbnn_runtime.passes.plan`: exactly what ``sbnn_runtime.engine.Engine`` does) against a
recorder that stands in for ``sbnn_runtime._core.Engine``, and writes the recorded builder
calls, their raw parameters, a batch of inputs and the x86 engine's outputs to one file.
``engine_test`` rebuilds the same graph through ``sbnn::Engine`` (on aarch64 under qemu, say)
and compares.

    python scripts/dump_graph.py --out build/dumps                      # the default models
    python scripts/dump_graph.py --out build/dumps --models fmnist_cnn --ones 0.05
    python scripts/dump_graph.py --out build/dumps --sbnn model.sbnn    # an exported file

Registry models (``--models``, needs torch and sbnn) are started at ``--ones`` with
``sbnn.init_closed_form_``, their BatchNorm statistics set from one calibration batch, then
exported with ``sbnn.deploy.export.export``. Inputs: Fashion-MNIST test images when the model
takes 1x28x28 and the data is on disk, else standard normal.

Dump format (version 1), a text header then the raw blob::

    sbnn-dump 1
    model <name>
    call <method> <arg> ...        one line per builder call, in order; the last two are
                                   set_output and set_groups (groups split by ``s/``)
    input <offset> <N> <C> <H> <W>          float32 in the blob
    expected <tag> <offset> <ndim> <dims>   float32 outputs of the x86 engine, tag = its ISA
    blob <nbytes>
    <nbytes raw bytes, little-endian>

Arguments: ``t<id>`` a tensor returned by an earlier call, ``i<int>``, ``f<float>`` (a Python
float repr), ``b0``/``b1``, ``s<text>`` (no spaces), ``n`` (None), and arrays
``a<dtype>:<offset>:<d0>x<d1>...`` (dtype f32 or u8, ``-`` for a 0-d shape).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from sbnn_runtime import fileformat, passes
from sbnn_runtime.engine import Engine
from sbnn_runtime.native import core
from sbnn_runtime.ops import Graph, lowering

MAGIC = "sbnn-dump 1"
DEFAULT_MODELS = ("fmnist_cnn", "resnet18_irnet", "reactnet18")


class _Tensor:
    """A tensor handle returned by the recorder (so ints and tensor ids stay apart)."""

    def __init__(self, i: int):
        self.id = i


class Recorder:
    """Stands in for ``sbnn_runtime._core.Engine`` during a build: records each call."""

    def __init__(self):
        self.lines: list[str] = []
        self.blob = bytearray()
        self._n = 0

    def array(self, a: np.ndarray) -> str:
        kinds = {np.dtype("float32"): "f32", np.dtype("uint8"): "u8"}
        if a.dtype not in kinds:
            raise TypeError(f"cannot dump a {a.dtype} array")
        while len(self.blob) % 16:
            self.blob.append(0)
        off = len(self.blob)
        self.blob += np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
        dims = "x".join(str(d) for d in a.shape) or "-"
        return f"a{kinds[a.dtype]}:{off}:{dims}"

    def _arg(self, v) -> str:
        if isinstance(v, _Tensor):
            return f"t{v.id}"
        if v is None:
            return "n"
        if isinstance(v, (bool, np.bool_)):
            return f"b{int(v)}"
        if isinstance(v, (int, np.integer)):
            return f"i{int(v)}"
        if isinstance(v, (float, np.floating)):
            return f"f{float(v)!r}"
        if isinstance(v, str):
            if not v or any(c.isspace() for c in v):
                raise ValueError(f"cannot dump the string {v!r}")
            return f"s{v}"
        if isinstance(v, np.ndarray):
            return self.array(v)
        raise TypeError(f"cannot dump an argument of type {type(v).__name__}")

    def _call(self, method: str, args) -> None:
        self.lines.append(" ".join(["call", method] + [self._arg(a) for a in args]))

    def __getattr__(self, name: str):
        # any builder an op's lower_native calls (engine_test.cpp refuses unknown ones)
        if name.startswith("_"):
            raise AttributeError(name)

        def builder(*args):
            self._call(name, args)
            t = _Tensor(self._n)
            self._n += 1
            return t

        return builder

    def set_output(self, t: _Tensor) -> None:
        self._call("set_output", [t])

    def set_groups(self, groups: list[list[_Tensor]]) -> None:
        args: list = []
        for k, g in enumerate(groups):
            args += (["/"] if k else []) + list(g)
        self._call("set_groups", args)

    def set_memory_plan(self, arena_bytes: int, offsets: list[int]) -> None:
        self._call("set_memory_plan", [arena_bytes, *offsets])


def dump(graph: Graph, name: str, x: np.ndarray, path: Path, sparse: bool = True) -> dict:
    """Write the dump of ``graph`` on inputs ``x`` to ``path``; returns what it ran."""
    if core is None:
        raise RuntimeError("the native engine is needed for the x86 outputs; build sbnn-runtime")
    rec = Recorder()
    opts = {"sparse": sparse, "impl": "scalar"}
    ids: list = []
    for nd, fn in zip(graph.nodes, lowering(graph, "native"), strict=True):
        ids.append(fn(rec, nd, [ids[j] for j in nd.inputs], opts))  # as Engine._build does
    rec.set_output(ids[graph.output])
    pl = passes.plan(graph, "native")  # as Engine._build: its groups, then its memory plan
    rec.set_groups([[ids[i] for i in g] for g in pl.groups()])
    mem = pl.memory
    rec.set_memory_plan(mem.nbytes, [4 * mem.offset(i) if mem.offset(i) >= 0 else -1
                                     for i in range(len(graph.nodes))])
    x = np.ascontiguousarray(x, dtype=np.float32)
    header = [MAGIC, f"model {name}", *rec.lines,
              f"input {rec.array(x).split(':')[1]} {' '.join(map(str, x.shape))}"]
    # The portable ("scalar") outputs are the ones an aarch64 build must reproduce; the x86
    # default ISA's (fused multiply-adds in its epilogues) are kept for information.
    outs = {}
    for impl in dict.fromkeys(["scalar", core.default_impl()]):
        y = Engine(graph, 1, sparse=sparse, backend="native", impl=impl)(x)
        outs[impl] = y
        off = rec.array(y).split(":")[1]
        header.append(f"expected {impl} {off} {y.ndim} {' '.join(map(str, y.shape))}")
    header.append(f"blob {len(rec.blob)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode())
        f.write(rec.blob)
    return outs


# -- registry models -------------------------------------------------------------------------

def _inputs(shape: tuple[int, int, int], n: int, seed: int, offset: int = 0) -> np.ndarray:
    """Fashion-MNIST test images (normalised as in training) for 1x28x28 models, else N(0, 1)."""
    if tuple(shape) == (1, 28, 28):
        try:
            from sbnn.pipeline.data import load_dataset

            ds = load_dataset("fashion_mnist", train=False)
            img = ds.images[offset:offset + n].numpy().astype(np.float32) / 255.0
            return ((img - ds.mean[0]) / ds.std[0]).astype(np.float32)
        except Exception as exc:  # no data on disk: random inputs still test the engine
            print(f"dump_graph: Fashion-MNIST not available ({exc}); random inputs",
                  file=sys.stderr)
    rng = np.random.default_rng(seed + offset)
    return rng.standard_normal((n, *shape), dtype=np.float32)


def registry_graph(name: str, ones: float, seed: int, calib: np.ndarray,
                   shape: tuple[int, int, int]) -> Graph:
    """Registry model ``name`` at ``ones`` (closed form), BN calibrated on ``calib``, exported."""
    import torch
    from torch import nn

    import sbnn
    from sbnn.deploy.export import export

    torch.manual_seed(seed)
    model = sbnn.models.create(name, num_classes=10, in_chans=shape[0])
    sbnn.init_closed_form_(model, ones)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():  # running statistics of one batch: activations stay O(1)
        for bn in bns:
            bn.momentum = None
            bn.reset_running_stats()
        model.train()
        model(torch.from_numpy(calib))
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.sbnn"
        export(model, path, shape, check=False)
        return fileformat.load(path)


MODEL_SHAPES = {"fmnist_cnn": (1, 28, 28)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for the <model>.dump files")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help="registry models, comma separated (default: %(default)s)")
    ap.add_argument("--sbnn", action="append", default=[],
                    help="also (or, with --models '', only) dump this .sbnn file")
    ap.add_argument("--ones", type=float, default=0.05, help="ones fraction (default 0.05)")
    ap.add_argument("--batch", type=int, default=0,
                    help="images per model (default: 8 for 28x28 models, 2 otherwise)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    jobs: list[tuple[str, Graph]] = []
    for name in filter(None, args.models.split(",")):
        shape = MODEL_SHAPES.get(name, (3, 32, 32))
        calib = _inputs(shape, 64, args.seed, offset=1000)
        jobs.append((name, registry_graph(name, args.ones, args.seed, calib, shape)))
    for p in args.sbnn:
        jobs.append((Path(p).stem, fileformat.load(p)))
    if not jobs:
        ap.error("nothing to dump: give --models or --sbnn")
    for name, graph in jobs:
        shape = graph.input_shape
        n = args.batch or (8 if tuple(shape[1:]) == (28, 28) else 2)
        x = _inputs(shape, n, args.seed)
        path = out / f"{name}.dump"
        outs = dump(graph, name, x, path)
        ys = list(outs.values())
        gap = max(float(np.abs(y - ys[0]).max()) for y in ys)
        print(f"dump_graph: {path} ({os.path.getsize(path) / 1e6:.1f} MB, {len(graph.nodes)} "
              f"nodes, input {tuple(x.shape)}, x86 ISAs {', '.join(outs)}: max gap {gap:.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
