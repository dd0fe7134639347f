"""Builds and runs the C++ kernel test driver, then the geometry tests against the runtime built
with the same sanitizers, under ASan/UBSan (scripts/sanitize.sh).

Skipped by default; run with ``pytest -m sanitize``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.sanitize
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="no C++ compiler")
def test_kernels_under_asan_ubsan(tmp_path, request):
    if "sanitize" not in (request.config.option.markexpr or ""):
        pytest.skip("slow C++ build; run with -m sanitize")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "sanitize.sh"), str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=2400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert " 0 failures" in out
