#!/usr/bin/env python
"""Run Python against an ASan+UBSan build of the runtime (issue 18: the fuzz campaign and the
sanitizer run of the geometry tests share it).

    python scripts/asan_python.py -m pytest -q runtime/tests/test_geometry.py
    python scripts/asan_python.py scripts/fuzz_sbnn.py --mutants 1000

Builds (when missing or stale) the runtime with ``-fsanitize=address,undefined`` into
``build/asan`` as a wheel, unpacks it in ``build/asan-pkg``, and runs this interpreter with the
rest of the command line, the package first on ``PYTHONPATH`` and the ASan runtime preloaded
(leak checks off: the interpreter's own allocations are not ours; the first sanitizer report
aborts). The build is stale when any file under ``runtime/csrc``, ``runtime/src`` or the build
files changed since (a SHA-256 over them, kept in ``build/asan-pkg/STAMP``): the wheel carries
the Python package as well as the extension.

Inside, ``SBNN_ASAN=1`` is set, and a ``sitecustomize`` in the package folder drops the import
hook of the venv's editable install (it would win over ``PYTHONPATH``), in every Python process
started under it, subprocesses of the tests included.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "build" / "asan-pkg"
WHEELS = ROOT / "build" / "asan-wheel"
FLAGS = "-fsanitize=address,undefined -fno-omit-frame-pointer"


def _stamp() -> str:
    h = hashlib.sha256()
    rt = ROOT / "runtime"
    files = [rt / "CMakeLists.txt", rt / "pyproject.toml"]
    for sub in ("csrc", "src"):
        files += sorted(p for p in (rt / sub).rglob("*") if p.is_file()
                        and "__pycache__" not in p.parts and p.suffix not in (".so", ".pyc"))
    for p in files:
        h.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def build() -> Path:
    """The unpacked ASan package, (re)built when missing or stale."""
    stamp = _stamp()
    if (PKG / "STAMP").is_file() and (PKG / "STAMP").read_text() == stamp:
        return PKG
    shutil.rmtree(WHEELS, ignore_errors=True)
    shutil.rmtree(PKG, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT / "runtime"), "--no-deps", "-q", "-w",
         str(WHEELS), f"--config-settings=build-dir={ROOT / 'build' / 'asan'}",
         f"--config-settings=cmake.define.CMAKE_CXX_FLAGS={FLAGS}",
         f"--config-settings=cmake.define.CMAKE_SHARED_LINKER_FLAGS={FLAGS}"], check=True)
    wheels = sorted(WHEELS.glob("sbnn_runtime-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as z:
        z.extractall(PKG)
    (PKG / "STAMP").write_text(stamp)
    return PKG


_SITECUSTOMIZE = """\
# written by scripts/asan_python.py: sbnn_runtime from this folder, not the editable install
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
"""


def env() -> dict:
    """The environment of a Python process that runs against the ASan build."""
    pkg = build()
    (pkg / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    libs = [subprocess.run(["g++", f"-print-file-name={n}"], capture_output=True, text=True,
                           check=True).stdout.strip() for n in ("libasan.so", "libubsan.so")]
    path = [str(pkg)] + [p for p in sys.path if p] + [os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p),
                LD_PRELOAD=" ".join(libs), SBNN_ASAN="1",
                ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
                UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")


def check_asan_engine() -> str | None:
    """Why the imported engine is not the ASan build (None when it is)."""
    import sbnn_runtime

    native = getattr(sbnn_runtime.native.core, "__file__", "?")
    return None if str(PKG) in str(native) else f"the engine at {native} is not the ASan build"


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: asan_python.py (-m module | script) [args]", file=sys.stderr)
        return 2
    return subprocess.run([sys.executable, *argv], env=env(), cwd=os.getcwd()).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
