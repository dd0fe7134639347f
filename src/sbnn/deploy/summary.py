"""``sbnn.summary(model)``: the one summary of a model's deployed graph, for torch models too.

The table is computed on the graph by :func:`sbnn_runtime.summary.summarize` and printed by
:func:`sbnn_runtime.summary.format_summary` (``sbnn summary``, ``python -m sbnn_runtime summary``
and ``sbnn export`` print the same). This module only gets a graph from what the runtime cannot
read (an ``nn.Module`` is traced by :func:`sbnn.deploy.export.to_graph`, BatchNorm folded, so
the rows are what the engine runs) and adds what a graph cannot know (the training epoch of a
run, in the title).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sbnn_runtime.ops import Graph
from sbnn_runtime.summary import format_summary as _format
from sbnn_runtime.summary import summarize

__all__ = ["Summary", "summary", "graph_summary"]


@dataclass
class Summary:
    """:func:`sbnn_runtime.summarize`'s data (``data``) and a title; ``str(summary)`` is the
    table. ``rows``: one dict per node after the input; ``totals``: the model's totals."""

    data: dict[str, Any]
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.data["nodes"][1:]

    @property
    def totals(self) -> dict[str, Any]:
        return self.data["totals"]

    def __str__(self) -> str:
        return _format(self.data, self.title)

    def to_dict(self) -> dict:
        return {"title": self.title, **self.data}


def graph_summary(graph: Graph, file_bytes: int | None = None, title: str = "") -> Summary:
    """The :class:`Summary` of an engine graph; ``file_bytes``: the ``.sbnn`` file's size
    (default: the graph's serialised size)."""
    data = summarize(graph)
    if file_bytes is not None:
        data["totals"]["file_bytes"] = int(file_bytes)
    return Summary(data, title, dict(graph.metadata))


def summary(model, input_shape: tuple[int, int, int] | None = None, *,
            print_fn=None) -> Summary:
    """The :class:`Summary` of ``model``: an ``nn.Module`` (give ``input_shape`` ``(C, H, W)``),
    a ``.sbnn`` file, or an engine ``Graph``. ``print_fn`` (e.g. ``print``) also prints the
    table."""
    if isinstance(model, Graph):
        s = graph_summary(model)
    elif isinstance(model, (str, os.PathLike)):
        p = Path(model)
        if not p.is_file():
            raise FileNotFoundError(f"no .sbnn file at '{p}' (for a run folder use `sbnn "
                                    "summary RUN` or summary(sbnn.load_model(RUN), shape))")
        data = summarize(p)
        s = Summary(data, str(p), data["metadata"])
    else:
        from sbnn.deploy.export import to_graph

        if input_shape is None:
            raise ValueError("summary(model) needs input_shape=(C, H, W) of one sample, e.g. "
                             "(1, 28, 28) for Fashion-MNIST")
        s = graph_summary(to_graph(model, tuple(input_shape)), title=type(model).__name__)
    if print_fn is not None:
        print_fn(str(s))
    return s
