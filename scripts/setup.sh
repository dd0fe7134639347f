#!/usr/bin/env bash
# One-step set-up: the Fashion-MNIST Debian package (when apt is usable) and sbnn itself with its
# dev extras, built in place (editable) so the C++ core compiles with the package's own build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
    || echo "setup: could not install dataset-fashion-mnist; see README (SBNN_DATA)" >&2
fi
werror="${SBNN_WERROR:-OFF}"
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]" --config-settings=cmake.define.SBNN_WERROR="$werror"
