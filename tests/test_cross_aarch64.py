"""The aarch64 build under qemu (scripts/cross_test.sh): NEON kernels against the reference twin,
the engine on exported models against this x86 host's outputs.

Slow (a cross-build, about a minute on two cores); run with ``pytest -m slow
tests/test_cross_aarch64.py``. Skipped where the cross tools are missing and cannot be installed
(not root, or no apt).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tools_or_installable() -> bool:
    have = shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64")
    return bool(have) or (os.geteuid() == 0 and shutil.which("apt-get") is not None)


@pytest.mark.slow
@pytest.mark.skipif(not _tools_or_installable(),
                    reason="no aarch64-linux-gnu-g++ / qemu-aarch64 and cannot apt-get them")
def test_cross_aarch64_under_qemu(tmp_path):
    pytest.importorskip("sbnn_runtime._core", reason="the x86 engine makes the reference dumps")
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "cross_test.sh"), str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "default ISA neon" in out and " 0 failures" in out
    assert "engine_test: 12 runs, 0 failures" in out  # 3 models x {neon, scalar} x {sparse, dense}
