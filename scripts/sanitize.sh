#!/usr/bin/env bash
# Builds the standalone C++ kernel test driver (runtime/csrc/tests/kernel_test.cpp, no Python) with
# AddressSanitizer + UndefinedBehaviorSanitizer and runs it: every ISA path this CPU runs against
# the reference kernels on a few shapes, every small geometry (input 1-4, kernel 1-5, stride 1-3,
# pad 0-2, and 200 non-square ones) of the float conv, both binary kernels and the pools, and one
# engine run by several threads at once. Then (ASan+UBSan only, unless SBNN_SANITIZE_PY=0) the
# geometry tests of every spatial op (runtime/tests/test_geometry.py: SPATIAL_OPS, the list a new
# op joins) in Python against the runtime built with the same sanitizers (scripts/asan_python.py,
# build/asan-pkg), on every ISA and with SBNN_ISA=scalar forced. Run it in the venv.
# Usage: scripts/sanitize.sh [build-dir] [driver args]
# SBNN_SANITIZE=thread builds it with ThreadSanitizer instead (data races; default build dir
# build/sanitize-thread). SBNN_SANITIZE=0 builds the same driver optimised and without
# sanitizers (for timing: --bench).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${SBNN_SANITIZE:-1}"
case "$mode" in
  1) flags=(-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
     default_out=build/sanitize ;;
  thread) flags=(-O1 -g -fsanitize=thread -fno-omit-frame-pointer)
     default_out=build/sanitize-thread ;;
  0) flags=(-O3 -DNDEBUG)
     default_out=build/sanitize ;;
  *) echo "sanitize.sh: SBNN_SANITIZE must be 1 (ASan+UBSan), thread (TSan) or 0, got '$mode'" >&2
     exit 2 ;;
esac
out="${1:-$default_out}"
shift || true
mkdir -p "$out"
CXX="${CXX:-g++}"
common=(-std=c++17 -Wall -Wextra -Wpedantic -Wshadow -Werror -Iruntime/csrc -DSBNN_HAVE_X86_KERNELS
        "${flags[@]}")
avx2=(-mavx2 -mfma -mpopcnt -mbmi -mbmi2)
avx512=("${avx2[@]}" -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vpopcntdq
        -mprefer-vector-width=512)
objs=()
pids=()
for src in runtime/csrc/core/*.cpp runtime/csrc/tests/kernel_test.cpp; do
  name="$(basename "$src" .cpp)"
  extra=()
  case "$name" in
    kern_avx2) extra=("${avx2[@]}") ;;
    kern_avx512) extra=("${avx512[@]}") ;;
  esac
  "$CXX" "${common[@]}" "${extra[@]}" -c "$src" -o "$out/$name.o" &
  pids+=($!)
  objs+=("$out/$name.o")
done
for pid in "${pids[@]}"; do wait "$pid"; done  # fails the script when any compile failed
"$CXX" "${flags[@]}" "${objs[@]}" -o "$out/kernel_test" -lpthread ${SBNN_LDFLAGS:-}
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}"
"$out/kernel_test" "$@"
if [ "$mode" = 1 ] && [ "${SBNN_SANITIZE_PY:-1}" != 0 ]; then
  "${PYTHON:-python}" scripts/asan_python.py -c \
    "import sbnn_runtime.native as n; print('geometry tests against', n.core.__file__)"
  "${PYTHON:-python}" scripts/asan_python.py -m pytest -q -p no:cacheprovider \
    runtime/tests/test_geometry.py
fi
