"""sbnn-runtime: run ``.sbnn`` sparse binary networks on CPUs, with numpy and nothing else.

    >>> import sbnn_runtime
    >>> engine = sbnn_runtime.load("model.sbnn", num_threads=1)
    >>> logits = engine(x)        # float32 (N, C, H, W): numpy, or DLPack / array-interface

Modules: :mod:`sbnn_runtime.ops` (the graph and the one table of its ops),
:mod:`sbnn_runtime.fileformat` (the file reader and writer), :mod:`sbnn_runtime.engine`,
:mod:`sbnn_runtime.kernels` (the binary convs and their reference twins) and
:mod:`sbnn_runtime.native` (the compiled core, or why it is missing) and
:mod:`sbnn_runtime.summary` (``summarize(model)``: per-node shapes, params, bits, MACs).
Loading checks a file whole before decoding it and holds it to :class:`Limits` (work, memory).
"""

from sbnn_runtime.engine import Engine, load
from sbnn_runtime.fileformat import SBNNFormatError
from sbnn_runtime.ops import OPS, Graph, Limits, Node, SBNNLimitError, reference_forward
from sbnn_runtime.summary import summarize

__version__ = "0.1.0"

__all__ = ["Engine", "Graph", "Limits", "Node", "OPS", "SBNNFormatError", "SBNNLimitError",
           "load", "reference_forward", "summarize"]
