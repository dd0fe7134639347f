"""Optional import of the native core: ``core`` is the extension module or None.

The pure-Python paths of sbnn work without it; ``native_error`` says why it is missing.
"""

from __future__ import annotations

try:
    from sbnn import _core as core

    native_error: str | None = None
except ImportError as exc:  # the wheel was built without the extension, or it failed to load
    core = None
    native_error = f"sbnn._core could not be imported ({exc}); reinstall with `pip install -e .`"

__all__ = ["core", "native_error"]
