"""Builds and runs the C++ test driver under ThreadSanitizer (``SBNN_SANITIZE=thread
scripts/sanitize.sh``): every kernel, and one engine run by four std::threads at once.

Skipped by default; run with ``pytest -m sanitize``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.sanitize
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="no C++ compiler")
def test_kernels_and_shared_engine_under_tsan(tmp_path, request):
    if "sanitize" not in (request.config.option.markexpr or ""):
        pytest.skip("slow C++ build; run with -m sanitize")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "sanitize.sh"), str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, SBNN_SANITIZE="thread"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert " 0 failures" in out and "ThreadSanitizer" not in out
