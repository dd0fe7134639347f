"""The PEP 517 build backend of the ``sbnn`` distribution: setuptools, run on a copy.

Two things plain setuptools cannot do here:

1. **The runtime dependency of a source install.** ``sbnn`` needs ``sbnn-runtime``, which lives
   in ``runtime/`` beside it and in no index. When that folder is there (a clone), the wheel
   built for ``pip install .`` requires ``sbnn-runtime @ file:///<clone>/runtime``, so pip builds
   and installs the runtime from the clone in the same command. Built from an sdist (no
   ``runtime/`` beside it), or with ``SBNN_RUNTIME_FROM_INDEX=1`` in the environment (what
   ``scripts/build_wheels.sh`` sets), the requirement stays ``sbnn-runtime==<version>``, found
   by ``pip install --find-links DIR`` or an index. ``sbnn_runtime`` is never copied into the
   ``sbnn`` wheel: one distribution owns its files.
2. **No build outputs in the source tree.** setuptools writes ``build/`` and ``*.egg-info``
   next to the sources; wheels, sdists and metadata are built from a copy of the sources in a
   temporary folder instead. An editable install (``pip install -e .``) has to point at the
   real sources, so it runs in place (its ``src/sbnn.egg-info`` is git-ignored) and keeps the
   pinned requirement: ``scripts/setup.sh`` installs ``./runtime`` (editable) first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from setuptools import build_meta as _setuptools

__all__ = ["build_wheel", "build_sdist", "build_editable", "get_requires_for_build_wheel",
           "get_requires_for_build_sdist", "get_requires_for_build_editable",
           "prepare_metadata_for_build_wheel", "prepare_metadata_for_build_editable",
           "runtime_requirement"]

ROOT = Path(__file__).resolve().parents[1]
PINNED = '"sbnn-runtime==0.1.0"'  # as written in pyproject.toml's dependencies
COPIED = ("pyproject.toml", "README.md", "MANIFEST.in", "LICENSE", "build_backend", "src")


def runtime_requirement(root: Path = ROOT, environ=os.environ) -> str | None:
    """``sbnn-runtime @ file:///...`` when ``root/runtime`` holds the runtime's project and the
    environment does not ask for the index (``SBNN_RUNTIME_FROM_INDEX``); else None."""
    if environ.get("SBNN_RUNTIME_FROM_INDEX", "") not in ("", "0"):
        return None
    runtime = root / "runtime"
    if not (runtime / "pyproject.toml").is_file():
        return None
    return f"sbnn-runtime @ {runtime.resolve().as_uri()}"


@contextmanager
def _staged(resolve_runtime: bool):
    """A copy of the sources in a temporary folder, as the working directory."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc", "*.so")
    with tempfile.TemporaryDirectory(prefix="sbnn-build-") as tmp:
        for name in COPIED:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, Path(tmp) / name, ignore=ignore)
            elif src.is_file():
                shutil.copy2(src, Path(tmp) / name)
        req = runtime_requirement() if resolve_runtime else None
        if req:
            py = Path(tmp) / "pyproject.toml"
            text = py.read_text(encoding="utf-8")
            if PINNED not in text:
                raise RuntimeError(f"build_backend: {PINNED} not found in pyproject.toml")
            py.write_text(text.replace(PINNED, f'"{req}"', 1), encoding="utf-8")
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(cwd)


def get_requires_for_build_wheel(config_settings=None):
    with _staged(False):
        return _setuptools.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_sdist(config_settings=None):
    with _staged(False):
        return _setuptools.get_requires_for_build_sdist(config_settings)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    with _staged(True):
        return _setuptools.prepare_metadata_for_build_wheel(
            os.path.abspath(metadata_directory), config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    with _staged(True):
        return _setuptools.build_wheel(os.path.abspath(wheel_directory), config_settings,
                                       metadata_directory and os.path.abspath(metadata_directory))


def build_sdist(sdist_directory, config_settings=None):
    with _staged(False):  # an sdist has no runtime/ beside it: the pinned requirement
        return _setuptools.build_sdist(os.path.abspath(sdist_directory), config_settings)


# editable installs run in place (see the module docstring)
get_requires_for_build_editable = _setuptools.get_requires_for_build_editable
prepare_metadata_for_build_editable = _setuptools.prepare_metadata_for_build_editable
build_editable = _setuptools.build_editable
