#!/usr/bin/env bash
# One-step set-up: the Fashion-MNIST Debian package (when apt is usable), then the two
# distributions of this repository, both editable: sbnn-runtime (./runtime: numpy + the C++ core,
# built by its own scikit-build-core/CMake/nanobind build) and sbnn (the trainer, pure Python,
# with its dev extras). SBNN_WERROR=ON builds the C++ with warnings as errors (CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
    || echo "setup: could not install dataset-fashion-mnist; see README (SBNN_DATA)" >&2
fi
werror="${SBNN_WERROR:-OFF}"
# the C++ build folder lives outside the source tree, one per clone (reused by the next set-up)
key="$(pwd -P | cksum | cut -d' ' -f1)"
build_dir="${SBNN_BUILD_DIR:-${TMPDIR:-/tmp}/sbnn-build-$key}/{wheel_tag}"
python -m pip install -q torch==2.13.0
python -m pip install -q -e ./runtime --config-settings=cmake.define.SBNN_WERROR="$werror" \
  --config-settings=build-dir="$build_dir"
# editable: sbnn's requirement stays sbnn-runtime==0.1.0, met by the editable runtime above
python -m pip install -q -e ".[dev]"
