"""The compiled core, when it is there.

``core`` is the ``sbnn_runtime._core`` extension module, or None when it could not be imported;
``native_error`` says why ("" when it was). The numpy reference paths work without it.
"""

from __future__ import annotations

from types import ModuleType

__all__ = ["core", "native_error", "available_impls", "cpu_features", "default_impl"]

core: ModuleType | None
native_error: str

try:
    from sbnn_runtime import _core as core

    native_error = ""
except ImportError as exc:  # not built, or built for another Python / CPU
    core = None
    native_error = f"sbnn_runtime._core could not be imported: {exc}"


def available_impls() -> list[str]:
    """Native kernel implementations this CPU runs (``[]`` without the extension)."""
    return list(core.available_impls()) if core is not None else []


def cpu_features() -> dict[str, bool]:
    """The CPU features the runtime dispatch sees (``{}`` without the extension)."""
    return dict(core.cpu_features()) if core is not None else {}


def default_impl() -> str | None:
    """What ``impl="auto"`` runs: the best ISA of this CPU, or ``$SBNN_ISA``."""
    return core.default_impl() if core is not None else None
