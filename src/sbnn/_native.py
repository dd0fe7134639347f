"""Optional import of the compiled core.

``from sbnn._native import core, native_error``: ``core`` is the ``sbnn._core`` extension module or
None; ``native_error`` says why it could not be imported ("" when it was). The pure-Python paths
of sbnn work without it.
"""

from __future__ import annotations

from types import ModuleType

core: ModuleType | None
native_error: str

try:
    from sbnn import _core as core

    native_error = ""
except ImportError as exc:  # not built, or built for another Python / CPU
    core = None
    native_error = f"sbnn._core could not be imported: {exc}"

__all__ = ["core", "native_error"]
