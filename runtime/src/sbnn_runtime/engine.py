"""Run a ``.sbnn`` model: the native sparse-binary CPU engine, or the numpy reference twin.

    >>> engine = sbnn_runtime.load("model.sbnn")           # native engine, all cores
    >>> logits = engine(x)                                 # x: float32 (N, C, H, W) -> (N, classes)
    >>> engine.run(x, profile=True)                        # (logits, [(op, seconds), ...])

``backend="native"`` builds ``sbnn_runtime._core.Engine`` from the graph, op by op, as each op's
entry in :data:`sbnn_runtime.ops.OPS` says (``lower_native``), and hands it the fusion groups
of :func:`sbnn_runtime.passes.plan`; ``"reference"`` runs every op's numpy reference
(slow, the exact twin of the semantics). ``"auto"`` picks native and falls back to the
reference with a warning when the extension is missing.

Guarantees: a graph is held to :class:`sbnn_runtime.ops.Limits` (work per image, and memory at
the batch being run) before anything is built or run; one :class:`Engine` may be called from
many Python threads at once (each call has its own buffers and timings; the calls share the
engine's thread pool, so they take turns inside each op: for throughput give each thread its
own engine with ``num_threads=1``).
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import numpy as np

from sbnn_runtime import fileformat, native, passes
from sbnn_runtime.ops import Graph, Limits, lowering, reference_forward

__all__ = ["Engine", "load", "as_input", "MAX_THREADS"]

BACKENDS = ("auto", "native", "reference")
_F32 = np.dtype(np.float32)
MAX_THREADS = 256  # the native thread pool's bound (runtime/csrc/core/threadpool.h)


def _check_threads(num_threads: Any) -> int:
    """``None`` (or 0): every core -> 0 for the core; else an int in [1, MAX_THREADS]."""
    if num_threads is None:
        return 0
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) or not (
        0 <= num_threads <= MAX_THREADS
    ):
        raise ValueError(f"num_threads={num_threads!r}: must be None (every core) or an int in "
                         f"[1, {MAX_THREADS}]")
    return int(num_threads)


def as_input(x: Any, shape: tuple[int, ...],
             runs_as: tuple[int, ...] | None = None) -> np.ndarray:
    """Check a batch against the model's input shape (C, H, W), (C, L) or (F,); returns a
    C-contiguous float32 array, shaped ``(N, *runs_as)`` when ``runs_as`` (the (C, H, W) the
    model runs it as, which is also accepted) is given.

    Takes a numpy array or any object with ``__dlpack__`` (a CPU torch tensor, a JAX array, ...)
    or ``__array_interface__``; it must already be float32 (no silent casts) and on the CPU.
    """
    if not isinstance(x, np.ndarray):
        if hasattr(x, "__dlpack__"):
            dev = getattr(x, "device", None)
            if dev is not None and getattr(dev, "type", "cpu") != "cpu":
                raise ValueError(f"input is on {dev}; the sbnn engine runs on CPU arrays only")
            try:
                if getattr(x, "requires_grad", False):
                    x = x.detach()
                x = np.from_dlpack(x)
            except (TypeError, RuntimeError, BufferError) as exc:
                raise TypeError(f"input of type {type(x).__name__} could not be read through "
                                f"DLPack: {exc}") from None
        elif hasattr(x, "__array_interface__"):
            x = np.asarray(x)
        else:
            raise TypeError(f"input must be a numpy array or a DLPack / array-interface object "
                            f"(float32, CPU), got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"input dtype is {x.dtype}; expected float32")
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
        if runs_as is not None and tuple(x.shape[1:]) == tuple(runs_as):
            shape = runs_as  # the (C, H, W) the model runs a (C, L) or (F,) input as
        else:
            want = ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "")
            raise ValueError(f"input shape is {tuple(x.shape)}; expected (N, {want})")
    if runs_as is not None:
        x = x.reshape(x.shape[0], *runs_as)
    if x.shape[0] == 0:
        raise ValueError("input batch is empty (N = 0)")
    return np.ascontiguousarray(x)  # copies only when strided or not native-endian


class Engine:
    """A loaded model: call it on float32 ``(N, C, H, W)`` batches to get outputs (numpy).

    ``num_threads``: None (every core) or 1 to :data:`MAX_THREADS` (256), else ``ValueError``;
    a pool whose threads cannot be started (e.g. under a memory limit) raises ``RuntimeError``.
    ``max_macs`` / ``max_memory``: see :class:`sbnn_runtime.ops.Limits` (defaults 3e10 kernel
    steps per image and 4 GiB; ``$SBNN_MAX_MACS`` / ``$SBNN_MAX_MEMORY``); a graph past them, or
    a batch whose activations would pass ``max_memory``, raises
    :class:`sbnn_runtime.SBNNLimitError`.

    Thread safety: one engine may be called from many Python threads at once; each call gets
    its own activation buffers and per-op timings (the GIL is released while it runs), and the
    calls share the engine's thread pool, taking turns inside each op.
    """

    def __init__(self, graph: Graph, num_threads: int | None = None, *, sparse: bool = True,
                 backend: str = "auto", impl: str = "auto", fuse: bool = True,
                 choose: bool = True, max_macs: Any = None, max_memory: Any = None):
        nt = _check_threads(num_threads)
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        core = native.core
        usable = core is not None and hasattr(core, "Engine")
        if backend == "auto":
            if not usable:
                warnings.warn(f"native engine unavailable ({native.native_error or 'no Engine'}); "
                              "running the slow numpy reference", RuntimeWarning, stacklevel=3)
                backend = "reference"
            else:
                backend = "native"
        if backend == "native" and not usable:
            raise RuntimeError(native.native_error or "sbnn_runtime._core has no Engine; "
                               "rebuild the extension")
        self.graph = graph
        self.backend = backend
        self.sparse = bool(sparse)
        self.impl = impl
        self.fuse, self.choose = bool(fuse), bool(choose)
        self.shapes = graph.shapes()
        # what runs as one op: decided by the graph passes, the engine only follows
        # and where every tensor lives (the arena the engine allocates, what the limit checks)
        self.plan = passes.plan(graph, "native", fuse=self.fuse)
        # what callers feed (the exporter's (C, H, W), (C, L) or (F,)) and what it runs as
        self.input_shape = graph.user_input_shape
        self.run_shape = self.shapes[0]
        self.limits = Limits.resolve(max_macs, max_memory)
        self.cost = passes.graph_cost(graph, self.shapes, memory=self.plan.memory)
        threads = nt or os.cpu_count() or 1
        self.limits.check(self.cost, 1, threads)
        self.num_threads = num_threads
        self._run_shape_t = tuple(self.run_shape)
        self._checked_batches: set[int] = set()  # batch sizes that passed the limits (run)
        self._native = None
        if backend == "native":
            self._native = self._build(core, nt)
            self.num_threads = self._native.num_threads

    def _build(self, core, num_threads: int):
        eng = core.Engine(num_threads)
        eng.set_choice(self.choose)
        opts = {"sparse": self.sparse, "impl": self.impl}
        lower = lowering(self.graph, "native")
        ids: list[int] = []
        for nd, fn in zip(self.graph.nodes, lower, strict=True):
            ids.append(fn(eng, nd, [ids[j] for j in nd.inputs], opts))
        eng.set_output(ids[self.graph.output])
        eng.set_groups([[ids[i] for i in group] for group in self.plan.groups()])
        mem = self.plan.memory
        offsets = [-1] * (max(ids) + 1)
        for i, t in enumerate(ids):  # bytes per image; -1: not in the arena (the input)
            offsets[t] = 4 * mem.offset(i) if mem.offset(i) >= 0 else -1
        eng.set_memory_plan(offsets, mem.nbytes)
        return eng

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.shapes[self.graph.output]

    def run(self, x, profile: bool = False):
        """``x (N, *input_shape) float32 -> numpy (N, ...)``; with ``profile`` also per-op
        seconds. ``input_shape`` is the model's (C, H, W), (C, L) or (F,)."""
        nat = self._native
        # Fast path for what a serving loop passes (issue 20, the cold start: every line of
        # Python a call runs is also code and data that a cold cache must fetch): a C-contiguous
        # float32 numpy batch of the shape the model runs, at a batch size whose limit check
        # already passed (the check depends only on the batch: the graph and threads are fixed).
        if (nat is not None and type(x) is np.ndarray and x.shape[1:] == self._run_shape_t
                and x.shape[0] in self._checked_batches and x.dtype == _F32
                and x.flags.c_contiguous):
            return nat.run(x, profile)
        x = as_input(x, self.input_shape, self.run_shape)
        self.limits.check(self.cost, x.shape[0], self.num_threads or os.cpu_count() or 1)
        if nat is not None:
            self._checked_batches.add(x.shape[0])
        if nat is None:
            return reference_forward(self.graph, x, profile)
        return nat.run(x, profile)

    def __call__(self, x) -> np.ndarray:
        return self.run(x)

    def layer_info(self) -> list[dict]:
        """Per op the native engine runs (fused ops as one): ``name``, ``kernel`` (binary convs:
        ``"sparse"`` / ``"dense"`` / ``"tiny"`` (the tiny-map kernel, outputs of at most 16
        pixels) as chosen at the first run of the last batch size, ``"auto"`` before any run;
        float convs and linears ``"gemm:<isa>"``), ``isa``, and the timings of the choice
        (``sparse_s``, ``dense_s``, ``tiny_s``, ``batch``; -1 where there was none). Empty for
        the reference backend."""
        if self._native is None or not hasattr(self._native, "layer_info"):
            return []
        return [dict(d) for d in self._native.layer_info()]

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
        names: list[str] = []
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
        return (f"sbnn_runtime.Engine(backend={self.backend!r}, input={self.input_shape}, "
                f"output={self.output_shape}, sparse={self.sparse}, "
                f"num_threads={self.num_threads})")


def load(path: str | os.PathLike, num_threads: int | None = None, *, sparse: bool = True,
         backend: str = "auto", impl: str = "auto", fuse: bool = True,
         choose: bool = True, max_macs: Any = None, max_memory: Any = None) -> Engine:
    """Load a ``.sbnn`` file into a callable :class:`Engine`.

    The file is checked whole from its header, and held to ``max_macs`` (per image, default
    3e10 kernel steps) and ``max_memory`` (bytes, default 4 GiB), before anything is decoded or
    built; see :class:`sbnn_runtime.ops.Limits` to raise them for a model you trust.

    ``num_threads=None`` uses every core. By default each binary conv runs the faster of the
    sparse and the dense kernel for its shape, ones and ISA (timed on the first batch of each
    size, then cached: :meth:`Engine.layer_info` says which); ``choose=False`` keeps the sparse
    kernel everywhere, ``sparse=False`` the dense bit-packed XNOR/popcount kernel everywhere
    (the BNN baseline). ``fuse`` folds a residual add and hardtanh (or RPReLU) after a binary
    conv into its epilogue, and a hardtanh after a float conv (the groups
    :func:`sbnn_runtime.passes.fuse_epilogues` finds). ``impl`` forces a kernel ISA (``"ref"``,
    ``"scalar"``, ``"avx2"``,
    ``"avx512"`` on x86, ``"neon"`` on aarch64; default: the best this CPU runs, or
    ``$SBNN_ISA``).
    """
    graph = fileformat.load(path, max_macs=max_macs, max_memory=max_memory)
    return Engine(graph, num_threads, sparse=sparse, backend=backend, impl=impl, fuse=fuse,
                  choose=choose, max_macs=max_macs, max_memory=max_memory)
