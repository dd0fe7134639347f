"""Export a PyTorch sparse-binary model to the engine's graph and to a ``.sbnn`` file.

    >>> graph = sbnn.deploy.export.to_graph(model.eval(), input_shape=(1, 28, 28))
    >>> sbnn.deploy.export.export(model, "model.sbnn", input_shape=(1, 28, 28))

The model is traced with ``torch.fx``, keeping the sparse-binary layers, the activation shifts
and BatchNorm as leaves, and rewritten into the ops of :mod:`sbnn_runtime.fileformat`:

* ``SBConv2d`` (+ the BatchNorm that follows it, folded) becomes ``sbconv2d`` with bits ``b`` and
  per-channel ``eta' = s (beta - alpha)``, ``xi' = s alpha``, ``bias' = s (bias - mean) + beta_bn``
  where ``s = gamma / sqrt(var + eps)``, because
  ``conv(x, q) = (beta - alpha) conv(x, b) + alpha conv(x, 1)`` (Schiavone et al., 2306.13515).
* The binary activation is fused into the conv as a per-input-channel threshold:
  ``x -> +1 if x >= thr_c else -1`` (``sign(0) = +1``). ``RSign(bias)`` gives ``thr = -bias``;
  a ``LearnableBias`` directly before a conv that binarises its input gives the same.
* Float ``nn.Conv2d`` / ``nn.Linear`` fold a following BatchNorm into weight and bias; any other
  BatchNorm becomes a per-channel ``affine``.

A layer the engine cannot run raises :class:`ExportError` naming it; the file is written
atomically, so a failed export leaves nothing at the output path.
"""

from __future__ import annotations

import math
import operator
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from sbnn.method.exportable import (
    ACT_FUNCTIONS,
    ACT_METHODS,
    ACT_MODULES,
    SUPPORTED,
    ExportError,
    check_conv,
    hw_pair,
    module_problem,
    suggest,
)
from sbnn.method.layers import LearnableBias, RPReLU, RSign, SBConv2d, SBLayer, SBLinear
from sbnn.method.primitives import fold_levels
from sbnn_runtime.fileformat import Graph, Node, infer_shapes, save
from sbnn_runtime.kernels import dequantized_weight

__all__ = ["ExportError", "to_graph", "export", "export_problems", "module_problem", "fold_sbconv",
           "parse_shape", "run_shape", "SUPPORTED", "UPSAMPLE_SCALES"]


# int arithmetic of traced sizes (C // g), and indexing a shape
_INT_OPS = (operator.floordiv, operator.mul, operator.add, operator.sub, operator.getitem)

_LEAVES = (SBLayer, RSign, LearnableBias, RPReLU, nn.modules.batchnorm._BatchNorm)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


@dataclass
class _Val:
    """A value during conversion: a tensor of the graph, or a pending binarisation / shift."""

    tid: int
    # "t": tensor; "bin": sign(x - thr) not materialised; "shift": x + shift; "int": a Python
    # int or the batch size (obj; x.size(0), C // g); "size": the torch shape of tensor tid;
    # "split": tensor tid viewed as (N, g, C // g, H, W) (obj: g); "split_t": that with dims 1
    # and 2 swapped (a channel shuffle once reshaped back)
    kind: str = "t"
    vec: np.ndarray | None = None  # thr for "bin", shift for "shift"
    obj: Any = None


class _Batch:
    """The batch size in a traced shape (``x.size(0)``): free at run time, never changed."""

    def __repr__(self) -> str:
        return "N"


BATCH = _Batch()
UPSAMPLE_SCALES = (2,)  # what the tracer takes of nn.Upsample / F.interpolate


def _f32(t) -> np.ndarray:
    return np.ascontiguousarray(torch.as_tensor(t).detach().cpu().numpy(), dtype=np.float32)


def _bn_scale_shift(bn: nn.Module, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``y = s * x + t`` (float64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ExportError(f"layer {where!r} (BatchNorm without running stats) is not supported: "
                          "it normalises with batch statistics at inference")
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    s = gamma / torch.sqrt(var + bn.eps)
    return s, beta - mean * s


def fold_sbconv(m: SBLayer, bn: nn.Module | None = None, where: str = "") -> dict[str, np.ndarray]:
    """Bits and per-channel ``eta', xi', bias'`` of a sparse-binary layer, BatchNorm folded.

    ``y_c = eta'_c conv(x, b_c) + xi'_c conv(x, 1) + bias'_c`` equals ``BN(conv(x, q) + bias)``.
    """
    co = m.weight.shape[0]
    alpha, beta = m.alpha_beta()
    s, t = _bn_scale_shift(bn, where) if bn is not None else (None, None)
    eta, xi, bias = fold_levels(alpha, beta, m.bias, s, t, channels=co)
    return {"bits": m.bits().to(torch.uint8).cpu().numpy(), "eta": _f32(eta), "xi": _f32(xi),
            "bias": _f32(bias)}


def _call_args(node: fx.Node) -> str:
    """``(a, b, k=v)`` of an fx call, tensors by their node names."""
    parts = [a.name if isinstance(a, fx.Node) else repr(a) for a in node.args]
    parts += [f"{k}={v.name if isinstance(v, fx.Node) else repr(v)}"
              for k, v in node.kwargs.items()]
    return f"({', '.join(parts)})"


def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def run_shape(input_shape) -> tuple[int, int, int]:
    """The (C, H, W) a model input of ``input_shape`` runs as: (C, H, W) itself, (C, L) as
    (C, 1, L), (F,) as (F, 1, 1); else :class:`ValueError`."""
    s = tuple(int(v) for v in input_shape)
    if len(s) not in (1, 2, 3) or min(s) < 1:
        raise ValueError(f"input_shape must be (C, H, W), (C, L) or (F,) of positive ints, got "
                         f"{tuple(input_shape)}")
    return s if len(s) == 3 else (s[0], 1, s[-1]) if len(s) == 2 else (s[0], 1, 1)


class _Converter:
    def __init__(self, gm: fx.GraphModule, input_shape: tuple[int, ...]):
        self.gm = gm
        self.nodes: list[Node] = [Node("input", [], {"shape": list(run_shape(input_shape))},
                                       name="input")]
        self.vals: dict[fx.Node, _Val] = {}
        self.folded: dict[fx.Node, _Val] = {}  # BatchNorm nodes already folded into a conv
        self.shapes = infer_shapes(Graph(self.nodes, 0))
        # tensors torch sees as (N, C, L) (the graph holds them as (C, 1, L))
        self.seq: set[int] = {0} if len(input_shape) == 2 else set()
        # tensors torch sees as (N, F) that the graph holds as (F, 1, 1) maps: the outputs of
        # binary linears (binary 1x1 convs) and the per-feature ops after them, so that those
        # fuse into the conv and no reshape runs between two binary linears
        self.flat: set[int] = {0} if len(input_shape) == 1 else set()

    def torch_shape(self, tid: int) -> tuple:
        """The torch shape of graph tensor ``tid``, batch first."""
        s = self.shapes[tid]
        if tid in self.seq:
            return (BATCH, s[0], s[2])
        if tid in self.flat:
            return (BATCH, s[0])
        return (BATCH, *s)

    def image(self, tid: int) -> bool:
        """Whether torch sees graph tensor ``tid`` as an (N, C, H, W) image."""
        return len(self.shapes[tid]) == 3 and tid not in self.seq and tid not in self.flat

    def features(self, tid: int, where: str) -> int:
        """``tid`` as the flat (F,) tensor a linear reads (a (F, 1, 1) map is flattened)."""
        return self.emit("flatten", [tid], where + ".flat").tid if tid in self.flat else tid

    # -- graph building ----------------------------------------------------------------------
    def emit(self, op: str, inputs: list[int], name: str, attrs=None, params=None) -> _Val:
        nd = Node(op, inputs, dict(attrs or {}), {k: v for k, v in (params or {}).items()
                                                  if v is not None}, name)
        self.nodes.append(nd)
        try:
            self.shapes = infer_shapes(Graph(self.nodes, len(self.nodes) - 1))
        except ValueError as exc:
            self.nodes.pop()
            raise ExportError(f"layer {name!r}: {exc}") from None
        tid = len(self.nodes) - 1
        s = self.shapes[tid]
        if op != "reshape" and len(s) == 3 and s[1] == 1 and any(i in self.seq for i in inputs):
            self.seq.add(tid)  # a (C, L) sequence stays one through per-position ops
        if op not in ("reshape", "flatten") and len(s) == 3 and s[1] == s[2] == 1 and any(
                i in self.flat for i in inputs):
            self.flat.add(tid)  # so do features through per-feature ops
        return _Val(tid)

    def tensor(self, v: _Val, where: str) -> int:
        """Materialise a value as a graph tensor."""
        if v.kind == "t":
            return v.tid
        if v.kind in ("int", "size"):
            raise ExportError(f"operation {where!r} takes a shape or size ({v.obj!r}) where a "
                              "tensor belongs; only reshapes may use sizes")
        if v.kind in ("split", "split_t"):
            raise ExportError(f"operation {where!r} reads a 5-D view (N, g, C // g, H, W); the "
                              "only 5-D view supported is a channel shuffle: x.view(N, g, C // g, "
                              "H, W).transpose(1, 2).reshape(N, C, H, W), or nn.ChannelShuffle")
        if v.kind == "shift":
            c = self.shapes[v.tid][0]
            return self.emit("affine", [v.tid], where + ".shift",
                             params={"scale": np.ones(c, np.float32), "shift": v.vec}).tid
        raise ExportError(f"layer {where!r} takes a binarised activation (RSign output) as "
                          "input; the engine only binarises inside sparse-binary convs")

    def bn_after(self, node: fx.Node) -> tuple[nn.Module | None, fx.Node | None]:
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module":
            mod = self.gm.get_submodule(users[0].target)
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                return mod, users[0]
        return None, None

    # -- conversion --------------------------------------------------------------------------
    def run(self, problems: list[tuple[str, str]] | None = None) -> Graph:
        """The graph; with ``problems``, every layer that cannot be exported is appended to it
        as ``(layer, why)`` (what only depends on such a layer is passed over) instead of the
        first raising."""
        out = None
        bad = _Val(-1, "bad")
        for node in self.gm.graph.nodes:
            if problems is not None and node.op not in ("placeholder", "output"):
                if any(self.vals.get(a) is bad for a in node.all_input_nodes):
                    self.vals[node] = bad  # what it reads is not there: only the layer itself
                    why = (module_problem(self.gm.get_submodule(node.target), node.target)
                           if node.op == "call_module" else None)
                    if why is not None:
                        problems.append((str(node.target), why))
                    continue
                try:
                    self.vals[node] = (self.folded[node] if node in self.folded
                                       else self.convert(node))
                except ExportError as exc:
                    name = node.target if node.op in ("call_module", "get_attr") else node.name
                    problems.append((str(name), str(exc)))
                    self.vals[node] = bad
                continue
            if problems is not None and node.op == "output" and (
                    not isinstance(node.args[0], fx.Node) or self.vals.get(node.args[0]) is bad):
                continue
            if node.op == "placeholder":
                if self.vals:
                    raise ExportError("models with more than one input are not supported")
                self.vals[node] = _Val(0)
            elif node.op == "output":
                arg = node.args[0]
                if not isinstance(arg, fx.Node):
                    raise ExportError("the model must return a single tensor")
                out = self.tensor(self.vals[arg], "output")
                if out in self.flat:  # the caller gets (N, F)
                    out = self.emit("flatten", [out], "output.flat").tid
            elif node.op == "get_attr":
                raise ExportError(f"parameter access {node.target!r} outside a layer is not "
                                  "supported")
            elif node in self.folded:
                self.vals[node] = self.folded[node]
            else:
                self.vals[node] = self.convert(node)
        return Graph(self.nodes, len(self.nodes) - 1 if out is None else out)

    def inp(self, node: fx.Node, i: int = 0) -> _Val:
        a = node.args[i]
        if not isinstance(a, fx.Node):
            raise ExportError(f"operation {node.name!r}: argument {i} is not a tensor")
        return self.vals[a]

    def convert(self, node: fx.Node) -> _Val:
        if node.op == "call_module":
            return self.convert_module(node, self.gm.get_submodule(node.target), node.target)
        where = node.name
        fn = node.target
        if node.op == "call_method":
            name = fn
            if name in ("flatten",):
                return self.flatten(node, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim",
                                                                               -1))
            if name in ("size", "dim", "view", "reshape", "transpose", "permute"):
                return self.shape_method(node, name, where)
            if name in ("relu",):
                return self.emit("relu", [self.tensor(self.inp(node), where)], where)
            if name in ("contiguous",):
                return self.inp(node)
            if name in ACT_METHODS:
                return self.activation(node, ACT_METHODS[name], 0.0, where)
            if name == "softmax":
                return self.softmax(node, _arg(node, 1, "dim"), where)
            if name == "mean":
                return self.mean(node, _arg(node, 1, "dim"), _arg(node, 2, "keepdim", False), where)
            if name in ("add", "mul", "add_", "mul_"):
                return self.binary(node, name.rstrip("_"), where)
            raise ExportError(f"operation {where!r} (tensor method .{name}()) is not supported; "
                              f"{suggest(name)}")
        if fn is getattr and _arg(node, 1, "name") == "shape":
            return _Val(-1, "size", obj=self.vshape(self.inp(node), where))
        if fn in _INT_OPS and any(isinstance(a, fx.Node) and self.vals[a].kind in ("int", "size")
                                  for a in node.args):
            return self.int_op(node, fn, where)
        if fn in (torch.reshape, torch.transpose, torch.permute):
            return self.shape_method(node, fn.__name__, where)
        if fn in (torch.channel_shuffle, F.channel_shuffle):
            return self.shuffle(node, _arg(node, 1, "groups"), where)
        if fn is F.interpolate:
            return self.upsample(node, _arg(node, 1, "size"), _arg(node, 2, "scale_factor"),
                                 _arg(node, 3, "mode", "nearest"), _arg(node, 4, "align_corners"),
                                 where, _arg(node, 6, "antialias", False))
        if fn in (operator.add, operator.iadd, torch.add):
            return self.binary(node, "add", where)
        if fn in (operator.mul, operator.imul, torch.mul):
            return self.binary(node, "mul", where)
        if fn in (F.relu, torch.relu):
            return self.emit("relu", [self.tensor(self.inp(node), where)], where)
        if fn is F.relu6:
            return self.emit("hardtanh", [self.tensor(self.inp(node), where)], where,
                             {"lo": 0.0, "hi": 6.0})
        if fn is F.leaky_relu:
            return self.activation(node, "leaky_relu", _arg(node, 1, "negative_slope", 0.01), where)
        if fn in ACT_FUNCTIONS:
            return self.activation(node, ACT_FUNCTIONS[fn], 0.0, where)
        if fn in (F.softmax, torch.softmax):
            return self.softmax(node, _arg(node, 1, "dim"), where)
        if fn is torch.mean:
            return self.mean(node, _arg(node, 1, "dim"), _arg(node, 2, "keepdim", False), where)
        if fn is torch.cat:
            return self.cat(node, where)
        if fn is F.hardtanh:
            lo, hi = _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
            return self.emit("hardtanh", [self.tensor(self.inp(node), where)], where,
                             {"lo": float(lo), "hi": float(hi)})
        if fn is torch.flatten:
            return self.flatten(node, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
        if fn is F.adaptive_avg_pool2d:
            return self.global_pool(node, _arg(node, 1, "output_size"), where)
        if fn in (F.max_pool2d, F.avg_pool2d):
            k = _arg(node, 1, "kernel_size")
            s = _arg(node, 2, "stride", None) or k
            p = _arg(node, 3, "padding", 0)
            if fn is F.max_pool2d:
                if _arg(node, 6, "return_indices", False):
                    raise ExportError(f"operation {where!r}: max pooling with return_indices")
                return self.pool("maxpool", node, k, s, p, True, where,
                                 bool(_arg(node, 5, "ceil_mode", False)),
                                 _arg(node, 4, "dilation", 1))
            if _arg(node, 6, "divisor_override") is not None:
                raise ExportError(f"operation {where!r}: avg pooling with divisor_override "
                                  "(nearest supported form: divisor_override=None)")
            return self.pool("avgpool", node, k, s, p, _arg(node, 5, "count_include_pad", True),
                             where, bool(_arg(node, 4, "ceil_mode", False)))
        name = getattr(fn, "__name__", repr(fn))
        raise ExportError(f"operation {where!r} (function {name}{_call_args(node)}) is not "
                          f"supported by the sbnn engine; {suggest(name)}")

    def activation(self, node: fx.Node, kind: str, alpha: float, where: str) -> _Val:
        return self.emit("activation", [self.tensor(self.inp(node), where)], where,
                         {"kind": kind, "alpha": float(alpha)})

    def softmax(self, node: fx.Node, dim, where: str) -> _Val:
        src = self.tensor(self.inp(node), where)
        if not isinstance(dim, int) or dim % len(self.torch_shape(src)) != 1:
            raise ExportError(f"operation {where!r}: softmax over dim {dim} (supported: over the "
                              "channels or features, dim=1); permute is not supported yet")
        return self.emit("softmax", [src], where)

    def mean(self, node: fx.Node, dim, keepdim, where: str) -> _Val:
        src = self.tensor(self.inp(node), where)
        rank = len(self.torch_shape(src))
        dims = sorted(d % rank for d in (dim if isinstance(dim, (tuple, list)) else [dim])
                      if isinstance(d, int))
        if src in self.seq and dims == [2]:
            return self.seq_mean(src, keepdim, where)
        if not self.image(src) or dims != [2, 3]:
            raise ExportError(f"operation {where!r}: mean over dim {dim} of a {self.shapes[src]} "
                              "tensor (supported: the spatial mean x.mean((2, 3)) of an image)")
        v = self.emit("global_avgpool", [src], where)
        return v if keepdim else self.emit("flatten", [v.tid], where + ".flat")

    def seq_mean(self, src: int, keepdim, where: str) -> _Val:
        v = self.emit("global_avgpool", [src], where)  # (C, 1, 1): still a (C, L) tensor
        return v if keepdim else self.emit("flatten", [v.tid], where + ".flat")

    def binary(self, node: fx.Node, kind: str, where: str) -> _Val:
        if (kind == "add" and _arg(node, 2, "alpha", 1) != 1) or len(node.args) < 2 or not all(
            isinstance(a, fx.Node) for a in node.args[:2]
        ):
            raise ExportError(f"operation {where!r} ({kind}{_call_args(node)}): only the {kind} "
                              "of two tensors is supported; fold constants into a layer")
        a, b = (self.tensor(self.inp(node, i), where) for i in (0, 1))
        if self.shapes[a] == self.shapes[b] and kind == "add":
            return self.emit("add", [a, b], where)
        if math.prod(self.shapes[a]) < math.prod(self.shapes[b]):
            a, b = b, a  # the op broadcasts its second input
        return self.emit("eltwise", [a, b], where, {"kind": kind})

    def cat(self, node: fx.Node, where: str) -> _Val:
        parts, dim = _arg(node, 0, "tensors"), _arg(node, 1, "dim", 0)
        if not isinstance(parts, (list, tuple)) or not parts or not all(
                isinstance(p, fx.Node) for p in parts):
            raise ExportError(f"operation {where!r}: torch.cat of a list of tensors only")
        ids = [self.tensor(self.vals[p], where) for p in parts]
        rank = len(self.torch_shape(ids[0]))
        if dim % rank != 1:
            raise ExportError(f"operation {where!r}: torch.cat along dim {dim} (supported: the "
                              "channels, dim=1)")
        out = ids[0]
        for k, t in enumerate(ids[1:]):
            out = self.emit("concat", [out, t], where if k == len(ids) - 2 else f"{where}.{k}").tid
        return _Val(out)

    def flatten(self, node: fx.Node, start: int, end: int) -> _Val:
        v, where = self.inp(node), node.name
        ts = self.vshape(v, where)
        start, end = start % len(ts), end % len(ts)
        if start == 0 or end < start:
            raise ExportError(f"operation {where!r}: flatten(start_dim={start}) merges the batch "
                              "dimension; write torch.flatten(x, 1) or nn.Flatten()")
        dims = [*ts[:start], math.prod(ts[start:end + 1]), *ts[end + 1:]]
        return self.reshape_to(v, dims, where)

    # -- shapes: sizes, view/reshape, transpose/permute, channel shuffle ------------------------
    def vshape(self, v: _Val, where: str) -> tuple:
        """The torch shape (batch first, :data:`BATCH`) of a tensor value."""
        if v.kind in ("int", "size"):
            raise ExportError(f"operation {where!r}: {v.obj!r} is not a tensor")
        if v.kind in ("split", "split_t"):
            c, h, w = self.shapes[v.tid]
            g = v.obj
            return (BATCH, g, c // g, h, w) if v.kind == "split" else (BATCH, c // g, g, h, w)
        return self.torch_shape(v.tid)

    def value(self, a, where: str):
        """A traced size argument as a Python int, :data:`BATCH` or a tuple of them."""
        if isinstance(a, fx.Node):
            v = self.vals[a]
            if v.kind not in ("int", "size"):
                raise ExportError(f"operation {where!r}: a tensor where a size belongs")
            return v.obj
        if isinstance(a, (list, tuple)):
            return tuple(self.value(e, where) for e in a)
        return a

    def int_op(self, node: fx.Node, fn, where: str) -> _Val:
        a = [self.value(x, where) for x in node.args]
        if fn is operator.getitem:
            r = a[0][a[1]]
            return _Val(-1, "size" if isinstance(r, tuple) else "int", obj=r)
        if any(x is BATCH for x in a) or not all(isinstance(x, int) for x in a):
            raise ExportError(f"operation {where!r}: arithmetic on the batch size or a shape "
                              f"({fn.__name__}{tuple(a)}); the batch dimension must stay x.size(0)")
        return _Val(-1, "int", obj=int(fn(*a)))

    def shape_method(self, node: fx.Node, name: str, where: str) -> _Val:
        v = self.inp(node)
        rest = [self.value(a, where) for a in node.args[1:]]
        kw = {k: self.value(a, where) for k, a in node.kwargs.items()}
        if name == "dim":
            return _Val(-1, "int", obj=len(self.vshape(v, where)))
        if name == "size":
            ts = self.vshape(v, where)
            d = rest[0] if rest else kw.get("dim")
            return _Val(-1, "size", obj=ts) if d is None else _Val(-1, "int", obj=ts[d])
        if name in ("view", "reshape"):
            dims = rest[0] if len(rest) == 1 and isinstance(rest[0], tuple) else tuple(rest)
            dims = dims or kw.get("shape") or kw.get("size")
            return self.reshape_to(v, list(dims), where)
        ts = self.vshape(v, where)
        if name == "transpose":
            d0, d1 = (rest + [kw.get("dim0"), kw.get("dim1")])[:2]
            perm = list(range(len(ts)))
            perm[d0 % len(ts)], perm[d1 % len(ts)] = perm[d1 % len(ts)], perm[d0 % len(ts)]
        else:
            perm = list(rest[0] if len(rest) == 1 and isinstance(rest[0], tuple) else rest)
            perm = list(perm or kw.get("dims"))
            perm = [d % len(ts) for d in perm]
        if perm == list(range(len(ts))):
            return v
        if v.kind in ("split", "split_t") and perm == [0, 2, 1, 3, 4]:
            return _Val(v.tid, "split_t" if v.kind == "split" else "split", obj=v.obj)
        raise ExportError(f"operation {where!r} ({name}{tuple(rest)} of a {ts} tensor): the only "
                          "permutation supported is the channel shuffle x.view(N, g, C // g, H, "
                          "W).transpose(1, 2).reshape(N, C, H, W) (or nn.ChannelShuffle(g))")

    def reshape_to(self, v: _Val, dims: list, where: str) -> _Val:
        """``v`` viewed as the torch shape ``dims`` (batch first; one -1 may stand for a size)."""
        ts = self.vshape(v, where)
        numel = math.prod(ts[1:])
        if dims and dims[0] is BATCH:
            rest = list(dims[1:])
        elif dims and dims[0] == -1 and all(isinstance(d, int) and d > 0 for d in dims[1:]) \
                and math.prod(dims[1:]) == numel:
            rest = list(dims[1:])
        else:
            raise ExportError(
                f"operation {where!r}: reshape of a {ts} tensor to {tuple(dims)} changes the "
                "batch dimension (or cannot show it stays); write x.view(x.size(0), ...) / "
                "x.reshape(x.size(0), -1) or torch.flatten(x, 1)")
        if any(d is BATCH or not isinstance(d, int) for d in rest) or \
                sum(d == -1 for d in rest) > 1 or any(d == 0 or d < -1 for d in rest):
            raise ExportError(f"operation {where!r}: reshape to {tuple(dims)} (sizes must be "
                              "positive ints after the batch, at most one -1)")
        known = math.prod(d for d in rest if d != -1)
        if -1 in rest:
            if known == 0 or numel % known:
                raise ExportError(f"operation {where!r}: cannot reshape {ts} to {tuple(dims)}")
            rest[rest.index(-1)] = numel // known
        if math.prod(rest) != numel:
            raise ExportError(f"operation {where!r}: cannot reshape {ts} to {tuple(dims)}")
        if v.kind in ("split", "split_t"):
            c, h, w = self.shapes[v.tid]
            if rest == [c, h, w]:  # back to the image: shuffled when dims 1, 2 were swapped
                if v.kind == "split":
                    return _Val(v.tid)
                return self.emit("channel_shuffle", [v.tid], where, {"groups": v.obj})
            if len(rest) == 4 and rest == list(ts[1:]):
                return v
            raise ExportError(f"operation {where!r}: a 5-D view (N, g, C // g, H, W) goes back "
                              f"to (N, C, H, W) = (N, {c}, {h}, {w}) only (channel shuffle)")
        src = self.tensor(v, where)
        shape = self.shapes[src]
        if len(rest) == 4 and self.image(src) and \
                rest[0] * rest[1] == shape[0] and rest[2:] == list(shape[1:]):
            return _Val(src, "split", obj=rest[0])  # (N, g, C // g, H, W): a shuffle begins
        if len(rest) not in (1, 2, 3):
            raise ExportError(f"operation {where!r}: reshape of {ts} to {tuple(dims)}: tensors "
                              "are (N, F), (N, C, L) or (N, C, H, W), and 5-D views only as "
                              "(N, g, C // g, H, W) of a channel shuffle")
        new = (rest[0], 1, rest[1]) if len(rest) == 2 else tuple(rest)
        if new == shape and (len(rest) == 2) == (src in self.seq):
            return _Val(src)
        if len(new) == 1 and len(shape) == 3:
            out = self.emit("flatten", [src], where)
        else:
            out = self.emit("reshape", [src], where, {"shape": list(new)})
        if len(rest) == 2:
            self.seq.add(out.tid)
        return out

    def shuffle(self, node: fx.Node, groups, where: str) -> _Val:
        src = self.tensor(self.inp(node), where)
        if not self.image(src) or not isinstance(groups, int):
            raise ExportError(f"operation {where!r}: channel shuffle of an (N, C, H, W) tensor "
                              "by an int number of groups only")
        return self.emit("channel_shuffle", [src], where, {"groups": groups})

    def upsample(self, node: fx.Node, size, scale, mode, align_corners, where: str,
                 antialias: bool = False) -> _Val:
        src = self.tensor(self.inp(node), where)
        shape = self.shapes[src]
        supported = (f"supported: mode 'nearest' or 'bilinear' (align_corners False or True), "
                     f"scale_factor in {UPSAMPLE_SCALES} on an (N, C, H, W) tensor")
        if not self.image(src) or mode not in ("nearest", "bilinear") or antialias:
            raise ExportError(f"operation {where!r}: upsampling (mode={mode!r}) of a "
                              f"{self.torch_shape(src)} tensor; {supported}")
        k = None
        if scale is not None:
            sc = scale if isinstance(scale, (tuple, list)) else (scale, scale)
            if len(set(sc)) == 1 and float(sc[0]).is_integer():
                k = int(sc[0])
        elif size is not None:
            sz = size if isinstance(size, (tuple, list)) else (size, size)
            _, h, w = shape
            if len(sz) == 2 and sz[0] % h == 0 and sz[0] // h == sz[1] / w:
                k = sz[0] // h
        if k not in UPSAMPLE_SCALES:
            raise ExportError(f"operation {where!r}: upsampling by size={size!r} "
                              f"scale_factor={scale!r}; {supported}")
        if mode == "nearest" and align_corners:
            raise ExportError(f"operation {where!r}: align_corners with mode 'nearest'; "
                              f"{supported}")
        return self.emit("upsample", [src], where, {"scale": k, "mode": mode,
                                                   "align_corners": bool(align_corners)})

    def global_pool(self, node: fx.Node, size, where: str) -> _Val:
        if size not in (1, (1, 1), [1, 1]):
            raise ExportError(f"layer {where!r}: adaptive pooling to {size} (only 1x1) ")
        return self.emit("global_avgpool", [self.tensor(self.inp(node), where)], where)

    def pool(self, op, node, k, s, p, cip, where, ceil: bool = False, dilation=1) -> _Val:
        (kh, kw), (sh, sw), (ph, pw) = (hw_pair(v, where, n) for v, n in (
            (k, "kernel"), (s if s not in (None, (), []) else k, "stride"), (p, "padding")))
        if hw_pair(dilation, where, "dilation") != (1, 1):
            raise ExportError(f"layer {where!r}: dilated pooling (nearest supported form: "
                              "dilation=1)")
        one = kh == kw and sh == sw and ph == pw  # files keep the int form where it fits
        attrs: dict[str, Any] = {"k": kh if one else [kh, kw], "stride": sh if one else [sh, sw],
                                 "pad": ph if one else [ph, pw]}
        if op == "avgpool":
            attrs["count_include_pad"] = bool(cip)
        if ceil:
            attrs["ceil_mode"] = True
        return self.emit(op, [self.tensor(self.inp(node), where)], where, attrs)

    def convert_module(self, node: fx.Node, m: nn.Module, where: str) -> _Val:
        kind = type(m).__name__
        if isinstance(m, SBConv2d):
            return self.sbconv(node, m, where)
        if isinstance(m, SBLinear):
            if m.act is not None:
                return self.sblinear(node, m, where)
            p = fold_sbconv(m, None, where)
            w = dequantized_weight(p["bits"], p["eta"], p["xi"])  # (out, in) float32
            return self.emit("linear", [self.features(self.tensor(self.inp(node), where), where)],
                             where, params={"weight": w, "bias": p["bias"]})
        if type(m) is nn.Conv2d:
            stride, pad = check_conv(m, where)
            bn, bn_node = self.bn_after(node)
            w = m.weight.detach().double()
            b = m.bias.detach().double() if m.bias is not None else None
            if bn is not None:
                s, t = _bn_scale_shift(bn, bn_node.target)
                w = w * s.view(-1, 1, 1, 1)
                b = (b * s if b is not None else 0) + t
            v = self.emit("conv2d", [self.tensor(self.inp(node), where)], where,
                          {"stride": stride, "padding": pad},
                          {"weight": _f32(w), "bias": None if b is None else _f32(b)})
            if bn_node is not None:
                self.folded[bn_node] = v
            return v
        if type(m) is nn.Linear:
            return self.emit("linear", [self.features(self.tensor(self.inp(node), where), where)],
                             where,
                             params={"weight": _f32(m.weight),
                                     "bias": None if m.bias is None else _f32(m.bias)})
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if not isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                raise ExportError(f"layer {where!r} ({kind}) is not supported")
            s, t = _bn_scale_shift(m, where)
            src = self.tensor(self.inp(node), where)
            if isinstance(m, nn.BatchNorm1d) and len(self.shapes[src]) != 1 and \
                    src not in self.seq and src not in self.flat:
                raise ExportError(f"layer {where!r}: BatchNorm1d over a {self.torch_shape(src)} "
                                  "tensor (it takes (N, F) or (N, C, L))")
            return self.emit("affine", [src], where, params={"scale": _f32(s), "shift": _f32(t)})
        if isinstance(m, RSign):
            if not isinstance(node.args[0], fx.Node):
                raise ExportError(f"layer {where!r}: input is not a tensor")
            src = self.tensor(self.inp(node), where)
            return _Val(src, "bin", _f32(-m.bias.detach().double()))
        if isinstance(m, LearnableBias):
            v = self.inp(node)
            if v.kind == "shift":  # two shifts in a row add up
                return _Val(v.tid, "shift", _f32(v.vec.astype(np.float64) + _f32(m.bias)))
            return _Val(self.tensor(v, where), "shift", _f32(m.bias))
        if isinstance(m, RPReLU):
            return self.emit("rprelu", [self.tensor(self.inp(node), where)], where,
                             params={"shift_in": _f32(m.shift_in), "slope": _f32(m.slope),
                                     "shift_out": _f32(m.shift_out)})
        if isinstance(m, nn.Hardtanh):
            return self.emit("hardtanh", [self.tensor(self.inp(node), where)], where,
                             {"lo": float(m.min_val), "hi": float(m.max_val)})
        if isinstance(m, nn.ReLU):
            return self.emit("relu", [self.tensor(self.inp(node), where)], where)
        if isinstance(m, nn.LeakyReLU):
            return self.activation(node, "leaky_relu", m.negative_slope, where)
        if type(m) in ACT_MODULES:
            return self.activation(node, ACT_MODULES[type(m)], 0.0, where)
        if isinstance(m, nn.Softmax):
            return self.softmax(node, m.dim, where)
        if isinstance(m, nn.PReLU):  # an RPReLU without its shifts
            src = self.tensor(self.inp(node), where)
            c = self.shapes[src][0]
            if m.weight.numel() not in (1, c):
                raise ExportError(f"layer {where!r} (PReLU with {m.weight.numel()} slopes) over "
                                  f"{c} channels: use num_parameters=1 or {c}")
            zero = np.zeros(c, np.float32)
            return self.emit("rprelu", [src], where, params={
                "shift_in": zero, "slope": np.broadcast_to(_f32(m.weight), (c,)).copy(),
                "shift_out": zero})
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return self.inp(node)
        if isinstance(m, nn.MaxPool2d):
            if m.return_indices:
                raise ExportError(f"layer {where!r}: max pooling with return_indices")
            return self.pool("maxpool", node, m.kernel_size, m.stride, m.padding, True, where,
                             m.ceil_mode, m.dilation)
        if isinstance(m, nn.AvgPool2d):
            if m.divisor_override is not None:
                raise ExportError(f"layer {where!r}: avg pooling with divisor_override (nearest "
                                  "supported form: divisor_override=None)")
            return self.pool("avgpool", node, m.kernel_size, m.stride, m.padding,
                             m.count_include_pad, where, m.ceil_mode)
        if isinstance(m, nn.Upsample):
            return self.upsample(node, m.size, m.scale_factor, m.mode, m.align_corners, where)
        if isinstance(m, nn.ChannelShuffle):
            return self.shuffle(node, m.groups, where)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self.global_pool(node, m.output_size, where)
        if isinstance(m, nn.Flatten):
            return self.flatten(node, m.start_dim, m.end_dim)
        raise ExportError(f"layer {where!r} ({kind}) with arguments ({m.extra_repr()}) is not "
                          f"supported by the sbnn engine; {suggest(kind)}")

    def binarised_source(self, v: _Val, m: SBLayer, where: str):
        """``(tensor, thr, binary)`` of a sparse-binary layer's input value."""
        if v.kind == "bin":  # RSign before: the conv binarises with its threshold
            return v.tid, v.vec, True
        if m.act is not None and v.kind == "shift":  # sign(x + shift) = [x >= -shift]
            return v.tid, -v.vec, True
        if m.act is not None:
            return self.tensor(v, where), None, True
        return self.tensor(v, where), None, False

    def sblinear(self, node: fx.Node, m: SBLinear, where: str) -> _Val:
        """A binary linear layer with binary activations: the binary conv of a (F, 1, 1) map by
        (O, F, 1, 1) bits. Its output stays an (O, 1, 1) map (``self.flat``) through per-feature
        ops, up to the next binary linear; a float linear or the output flattens it (free in
        C). A BatchNorm1d after it folds."""
        bn, bn_node = self.bn_after(node)
        params = fold_sbconv(m, bn, where)
        src, thr, _ = self.binarised_source(self.inp(node), m, where)
        f = self.shapes[src]
        if len(f) != 1 and src not in self.flat:
            raise ExportError(f"layer {where!r} (SBLinear) reads a {self.torch_shape(src)} "
                              "tensor; it takes (N, F): flatten first")
        o = params["bits"].shape[0]
        params["bits"] = params["bits"].reshape(o, f[0], 1, 1)
        params["thr"] = thr
        if src not in self.flat:
            src = self.emit("reshape", [src], where + ".map", {"shape": [f[0], 1, 1]}).tid
        out = self.emit("sbconv2d", [src], where,
                        {"stride": 1, "padding": 0, "binary_input": True}, params)
        self.flat.add(out.tid)
        if bn_node is not None:
            self.folded[bn_node] = out
        return out

    def sbconv(self, node: fx.Node, m: SBConv2d, where: str) -> _Val:
        stride, pad = check_conv(m, where)
        bn, bn_node = self.bn_after(node)
        params = fold_sbconv(m, bn, where)
        # without binary activations: a float conv with the dequantized, folded weights
        src, thr, binary = self.binarised_source(self.inp(node), m, where)
        params["thr"] = thr
        out = self.emit("sbconv2d", [src], where,
                        {"stride": stride, "padding": pad, "binary_input": binary}, params)
        if bn_node is not None:
            self.folded[bn_node] = out
        return out


def to_graph(model: nn.Module, input_shape: tuple[int, ...],
             metadata: dict[str, Any] | None = None) -> Graph:
    """Trace ``model`` (used in eval mode) into an engine :class:`~sbnn_runtime.fileformat.Graph`.

    ``input_shape`` is one sample's ``(C, H, W)``, ``(C, L)`` or ``(F,)``; the batch size is
    free at run time. A (C, L) input runs as (C, 1, L) and an (F,) one as (F, 1, 1); the graph's
    metadata records ``input_shape``, which the runtimes then take.
    """
    run_shape(input_shape)
    try:
        graph_fx = _Tracer().trace(model)
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError, ...)
        raise ExportError(f"torch.fx could not trace {type(model).__name__}: {exc}") from exc
    gm = fx.GraphModule(model, graph_fx)
    with torch.no_grad():
        graph = _Converter(gm, tuple(input_shape)).run()
    graph.metadata = dict(metadata or {})
    graph.metadata.setdefault("input_shape", [int(v) for v in input_shape])
    return graph


def export_problems(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, str]]:
    """``[(layer, why), ...]``: every layer of ``model`` that :func:`export` would refuse (empty
    when it exports), found by tracing it as export does, without writing anything. Meant to run
    before training (``sbnn train`` does), so that a model is refused in seconds, not after."""
    run_shape(input_shape)
    try:
        graph_fx = _Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds (TraceError, TypeError, ...)
        return [(type(model).__name__, f"torch.fx could not trace it: {exc}")]
    problems: list[tuple[str, str]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _Converter(fx.GraphModule(model, graph_fx), tuple(input_shape)).run(problems)
    except ExportError as exc:  # a whole-model problem (inputs, outputs)
        problems.append((type(model).__name__, str(exc)))
    finally:
        model.train(was_training)
    return problems


def _max_rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def export(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...], *,
           metadata: dict[str, Any] | None = None, onnx_path: str | os.PathLike | None = None,
           check: bool = True) -> Graph:
    """Write ``model`` to ``path`` as a ``.sbnn`` file (and optionally an ONNX twin).

    With ``check``, the exported graph is run by the reference executor on two random inputs
    and compared with the PyTorch model. A gap above 5% of the largest logit warns: an export
    bug gives gaps of that order, while float rounding alone (an activation within ~1e-7 of a
    binarisation threshold flipping) gives well under 1%.
    """
    was_training = model.training
    model.eval()
    try:
        graph = to_graph(model, input_shape, metadata)
        if check:
            from sbnn.engine import reference_forward

            x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                want = model(x).numpy()
            got = reference_forward(graph, x.numpy().reshape(2, *graph.input_shape))
            err = _max_rel_err(got, want)
            if not math.isfinite(err) or err > 5e-2:
                warnings.warn(f"exported graph differs from the model by {err:.3g} (relative "
                              "to the largest logit) on random inputs", stacklevel=2)
    finally:
        model.train(was_training)
    save(graph, path)
    if onnx_path is not None:
        from sbnn_runtime.lower_onnx import save_onnx

        save_onnx(graph, onnx_path)
    return graph


# -- helpers of the command line (sbnn.cli.export) ------------------------------------------


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        parts = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2, 3) or min(parts) < 1:
        raise ValueError(f"--input-shape expects C,H,W (e.g. 1,28,28), C,L (e.g. 10,49) or F "
                         f"(e.g. 640), got {text!r}")
    return tuple(parts)


