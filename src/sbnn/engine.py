"""Run a ``.sbnn`` model: the native sparse-binary CPU engine, or its PyTorch reference twin.

    >>> model = sbnn.engine.load("model.sbnn")            # native engine, all cores
    >>> logits = model(x)                                  # x: float32 (N, C, H, W) -> (N, classes)
    >>> model.run(x, profile=True)                         # (logits, [(op, seconds), ...])

``backend="native"`` builds ``sbnn._core.Engine`` from the file's graph; ``"reference"`` runs the
same graph with PyTorch float32 ops (one op per node, as the file describes it; slow, exact
twin of the semantics). ``"auto"`` picks native and falls back to the reference with a warning
when the extension is missing.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sbnn import fileformat
from sbnn.fileformat import Graph

__all__ = [
    "Engine", "load", "reference_forward", "evaluate_engine", "format_engine_report",
    "dequantized_weight",
]


def dequantized_weight(params: dict[str, np.ndarray]) -> np.ndarray:
    """The float weight of an ``sbconv2d`` node: ``eta'_c * b + xi'_c`` (BatchNorm folded)."""
    eta, xi = params["eta"], params["xi"]
    w = eta[:, None, None, None] * params["bits"].astype(np.float32) + xi[:, None, None, None]
    return np.ascontiguousarray(w, dtype=np.float32)


def _cview(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # per-channel vector (C,) against x: (N, C, H, W) or (N, F)
    return v.view((1, -1) + (1,) * (x.dim() - 2))


def _ref_node(nd, ins: list[torch.Tensor]) -> torch.Tensor:
    P = {k: torch.from_numpy(v) for k, v in nd.params.items()}
    A = nd.attrs
    x = ins[0] if ins else None
    op = nd.op
    if op == "conv2d":
        return F.conv2d(x, P["weight"], P.get("bias"), A["stride"], A["padding"])
    if op == "sbconv2d":
        if not A["binary_input"]:
            w = torch.from_numpy(dequantized_weight(nd.params))
            return F.conv2d(x, w, P["bias"], A["stride"], A["padding"])
        thr = _cview(P["thr"], x) if "thr" in P else 0.0
        xb = torch.where(x >= thr, 1.0, -1.0)  # sign(0) = +1; zero padding stays 0 below
        bits = P["bits"].float()
        counts = F.conv2d(xb, bits, None, A["stride"], A["padding"])
        wsum = F.conv2d(xb, torch.ones((1,) + bits.shape[1:]), None, A["stride"], A["padding"])
        return _cview(P["eta"], counts) * counts + _cview(P["xi"], counts) * wsum + _cview(
            P["bias"], counts)
    if op == "affine":
        return x * _cview(P["scale"], x) + _cview(P["shift"], x)
    if op == "hardtanh":
        return x.clamp(A["lo"], A["hi"])
    if op == "relu":
        return torch.relu(x)
    if op == "rprelu":
        z = x - _cview(P["shift_in"], x)
        return torch.where(z >= 0, z, z * _cview(P["slope"], x)) + _cview(P["shift_out"], x)
    if op == "add":
        return ins[0] + ins[1]
    if op == "avgpool":
        return F.avg_pool2d(x, A["k"], A["stride"], A["pad"],
                            count_include_pad=A["count_include_pad"])
    if op == "maxpool":
        return F.max_pool2d(x, A["k"], A["stride"], A["pad"])
    if op == "global_avgpool":
        return x.mean((2, 3), keepdim=True)
    if op == "flatten":
        return x.flatten(1)
    if op == "linear":
        return F.linear(x, P["weight"], P.get("bias"))
    raise ValueError(f"unknown op {op!r}")


@torch.no_grad()
def reference_forward(graph: Graph, x, profile: bool = False):
    """Run ``graph`` with PyTorch float32 ops: ``x (N, C, H, W) -> numpy (N, ...)``.

    With ``profile``, returns ``(y, [(op name, seconds), ...])``.
    """
    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    vals: list[torch.Tensor | None] = [xt]
    last_use = {j: i for i, nd in enumerate(graph.nodes) for j in nd.inputs}
    times = []
    for i, nd in enumerate(graph.nodes[1:], start=1):
        t0 = time.perf_counter()
        vals.append(_ref_node(nd, [vals[j] for j in nd.inputs]))
        times.append((f"{nd.op}:{nd.name}", time.perf_counter() - t0))
        for j in nd.inputs:  # free activations nobody reads again
            if last_use.get(j) == i and j != graph.output:
                vals[j] = None
    y = vals[graph.output].numpy()
    return (y, times) if profile else y


def _as_input(x: Any, shape: tuple[int, ...]) -> np.ndarray | torch.Tensor:
    """Check a batch against the model's (C, H, W); returns a C-contiguous float32 array."""
    if isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise ValueError(f"input is on {x.device}; the sbnn engine runs on CPU tensors only")
        if x.dtype != torch.float32:
            raise TypeError(f"input dtype is {x.dtype}; expected torch.float32")
    elif isinstance(x, np.ndarray):
        if x.dtype != np.float32:
            raise TypeError(f"input dtype is {x.dtype}; expected float32")
    else:
        raise TypeError(f"input must be a numpy array or a CPU torch tensor, got "
                        f"{type(x).__name__}")
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
        want = ", ".join(map(str, shape))
        raise ValueError(f"input shape is {tuple(x.shape)}; expected (N, {want})")
    if x.shape[0] == 0:
        raise ValueError("input batch is empty (N = 0)")
    if isinstance(x, torch.Tensor):
        return x.detach().contiguous()  # channels_last or sliced: copied, never misread
    return np.ascontiguousarray(x)  # copies only when strided or not native-endian


class Engine:
    """A loaded model: call it on float32 ``(N, C, H, W)`` batches to get logits (numpy)."""

    def __init__(self, graph: Graph, num_threads: int | None = None, *, sparse: bool = True,
                 backend: str = "auto"):
        if backend not in ("auto", "native", "reference"):
            raise ValueError(f"unknown backend {backend!r}; valid: auto, native, reference")
        from sbnn._native import core, native_error

        if backend == "auto":
            if core is None or not hasattr(core, "Engine"):
                warnings.warn(f"native engine unavailable ({native_error or 'no Engine'}); "
                              "running the slow PyTorch reference", RuntimeWarning, stacklevel=3)
                backend = "reference"
            else:
                backend = "native"
        if backend == "native" and (core is None or not hasattr(core, "Engine")):
            raise RuntimeError(native_error or "sbnn._core has no Engine; rebuild the extension")
        self.graph = graph
        self.backend = backend
        self.sparse = bool(sparse)
        self.input_shape = graph.input_shape
        self.shapes = graph.shapes()
        self.num_threads = num_threads
        self._native = self._build(core, num_threads) if backend == "native" else None
        if backend == "native":
            self.num_threads = self._native.num_threads

    def _build(self, core, num_threads):
        eng = core.Engine(0 if num_threads is None else int(num_threads))
        self._keep: list[np.ndarray] = []  # arrays handed to the engine stay alive with it
        ids: list[int] = []
        for nd in self.graph.nodes:
            P, A = nd.params, nd.attrs
            self._keep += list(P.values())
            src = [ids[j] for j in nd.inputs]
            op = nd.op
            if op == "input":
                t = eng.input(*A["shape"])
            elif op == "conv2d":
                t = eng.conv2d(src[0], P["weight"], P.get("bias"), A["stride"], A["padding"])
            elif op == "sbconv2d" and not A["binary_input"]:
                w = dequantized_weight(P)
                self._keep.append(w)
                t = eng.conv2d(src[0], w, P["bias"], A["stride"], A["padding"])
            elif op == "sbconv2d":
                t = eng.sbconv2d(src[0], P["bits"], P["eta"], P["xi"], P["bias"], A["stride"],
                                 A["padding"], P.get("thr"), self.sparse)
            elif op == "affine":
                t = eng.affine(src[0], P["scale"], P["shift"])
            elif op == "hardtanh":
                t = eng.hardtanh(src[0], A["lo"], A["hi"])
            elif op == "relu":
                t = eng.relu(src[0])
            elif op == "rprelu":
                t = eng.rprelu(src[0], P["shift_in"], P["slope"], P["shift_out"])
            elif op == "add":
                t = eng.add(src[0], src[1])
            elif op == "avgpool":
                t = eng.avgpool(src[0], A["k"], A["stride"], A["pad"], A["count_include_pad"])
            elif op == "maxpool":
                t = eng.maxpool(src[0], A["k"], A["stride"], A["pad"])
            elif op == "global_avgpool":
                t = eng.global_avgpool(src[0])
            elif op == "flatten":
                t = eng.flatten(src[0])
            elif op == "linear":
                t = eng.linear(src[0], P["weight"], P.get("bias"))
            else:  # pragma: no cover - fileformat.infer_shapes rejects unknown ops
                raise ValueError(f"unknown op {op!r}")
            ids.append(t)
        eng.set_output(ids[self.graph.output])
        return eng

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.shapes[self.graph.output]

    def run(self, x, profile: bool = False):
        """``x (N, C, H, W) float32 -> numpy (N, ...)``; with ``profile`` also per-op seconds."""
        x = _as_input(x, self.input_shape)
        if self._native is None:
            return reference_forward(self.graph, x, profile)
        return self._native.run(x, profile)

    def __call__(self, x) -> np.ndarray:
        return self.run(x)

    def layer_names(self) -> list[str]:
        """``op:name`` of each node after the input, in the order the engine runs them."""
        return [f"{nd.op}:{nd.name}" for nd in self.graph.nodes[1:]]

    def bench(self, batch: int = 1, warmup: int = 3, repeat: int = 20, seed: int = 0) -> dict:
        """Median whole-model and per-op latency (seconds) on a random batch."""
        x = np.random.default_rng(seed).standard_normal((batch, *self.input_shape),
                                                         dtype=np.float32)
        for _ in range(warmup):
            self.run(x)
        totals, per_op = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            _, times = self.run(x, profile=True)
            totals.append(time.perf_counter() - t0)
            per_op.append([float(s) for _, s in times])
        names = [n for n, _ in times]
        return {"batch": batch, "median_s": float(np.median(totals)),
                "layers": [{"name": n, "median_s": float(np.median([r[i] for r in per_op]))}
                           for i, n in enumerate(names)]}

    def __repr__(self) -> str:
        return (f"sbnn.engine.Engine(backend={self.backend!r}, input={self.input_shape}, "
                f"output={self.output_shape}, sparse={self.sparse}, "
                f"num_threads={self.num_threads})")


def load(path: str | os.PathLike, num_threads: int | None = None, *, sparse: bool = True,
         backend: str = "auto") -> Engine:
    """Load a ``.sbnn`` file into a callable :class:`Engine`.

    ``num_threads=None`` uses every core. ``sparse=False`` runs the binary convs with the dense
    bit-packed XNOR/popcount kernel (the BNN baseline) instead of the sparse one.
    """
    return Engine(fileformat.load(path), num_threads, sparse=sparse, backend=backend)


def evaluate_engine(path: str | os.PathLike, data_cfg=None, *, dataset: str | None = None,
                    root: str | None = None, batch_size: int = 1000,
                    num_threads: int | None = None, subset: int | None = None,
                    compare_with: str | os.PathLike | None = None, which: str = "last",
                    backend: str = "auto") -> dict:
    """Test accuracy of the ``.sbnn`` model at ``path`` on its dataset's test split.

    ``data_cfg`` is a :class:`sbnn.config.DataConfig` (or None: the dataset recorded in the
    file's metadata); ``compare_with`` (a run folder or checkpoint) also runs the PyTorch model
    and counts the test images whose predicted class differs between the two.
    """
    from sbnn import data as sdata

    eng = load(path, num_threads, backend=backend)
    name = dataset or (data_cfg.name if data_cfg is not None else None) or \
        eng.graph.metadata.get("dataset")
    if not name:
        raise ValueError(f"{path} does not record its dataset; pass dataset=...")
    root = root if root is not None else (data_cfg.root if data_cfg is not None else None)
    test = sdata.load_dataset(name, root, train=False).subset(subset)
    loader = sdata.BatchLoader(test, batch_size)
    torch_model = None
    if compare_with is not None:
        from sbnn.evaluate import load_model

        torch_model = load_model(compare_with, which)
    correct = total = differ = over = 0
    max_rel = 0.0
    t_engine = 0.0
    for x, y in loader:
        t0 = time.perf_counter()
        logits = eng(x)
        t_engine += time.perf_counter() - t0
        pred = logits.argmax(1)
        correct += int((pred == y.numpy()).sum())
        total += len(y)
        if torch_model is not None:
            with torch.no_grad():
                ref = torch_model(x).numpy()
            differ += int((ref.argmax(1) != pred).sum())
            rel = np.abs(ref - logits).max(1) / np.maximum(np.abs(ref).max(1), 1e-30)
            max_rel = max(max_rel, float(rel.max()))
            over += int((rel > 1e-4).sum())
    out: dict[str, Any] = {"engine": os.fspath(path), "backend": eng.backend, "dataset": name,
                           "n": total, "accuracy": correct / max(total, 1),
                           "engine_seconds": t_engine}
    if torch_model is not None:
        out.update({"pytorch_checkpoint": os.fspath(compare_with), "predictions_differ": differ,
                    "max_rel_logit_diff": max_rel, "images_over_1e-4": over})
    return out


def format_engine_report(r: dict) -> str:
    """A few lines for ``sbnn evaluate --engine``."""
    lines = [f"{r['engine']} ({r['backend']} engine) on {r['dataset']} test, {r['n']} images",
             f"  accuracy            {100 * r['accuracy']:.2f} %",
             f"  engine time         {r['engine_seconds']:.2f} s"]
    if "predictions_differ" in r:
        lines += [f"  vs PyTorch          {r['predictions_differ']} predictions differ "
                  f"({r['pytorch_checkpoint']})",
                  f"  max logit gap       {r['max_rel_logit_diff']:.2e} (relative to the "
                  "image's largest logit)",
                  f"  images over 1e-4    {r['images_over_1e-4']} (an activation within float "
                  "rounding of a threshold binarised the other way)"]
    return "\n".join(lines)
