#!/usr/bin/env bash
# The aarch64 build, tested under emulation: cross-builds the C++ core (kern_neon.cpp, no x86
# files) and its two test drivers with Debian's g++-aarch64-linux-gnu, statically linked, and
# runs them under qemu-aarch64 (Debian qemu-user):
#   1. runtime/csrc/tests/kernel_test.cpp: every kernel ISA of the target (ref, scalar, neon)
#      against the reference twin on many shapes, integer counts bit-identical; the float conv;
#   2. runtime/csrc/tests/int8_test.cpp: the int8 kernels (scalar on -cpu $QEMU_CPU, NEON sdot on
#      -cpu max) against their scalar twin, bit for bit;
#   3. runtime/csrc/tests/engine_test.cpp: the whole engine on exported models (the main job's
#      fmnist_cnn, resnet18_irnet and reactnet18 at 5 % ones, dumped on this x86 host by
#      scripts/dump_graph.py with the x86 engine's outputs), sparse and dense kernels, within
#      1e-5 of x86.
# Installs the Debian packages it needs when run as root where apt exists. Prints the target
# and ISAs it ran; exits non-zero on any failure.
#   scripts/cross_test.sh [build-dir]        (default build/cross-aarch64)
# Environment: PYTHON (with sbnn and sbnn-runtime installed; default python3), CXX_AARCH64
# (default aarch64-linux-gnu-g++), QEMU_AARCH64 (default qemu-aarch64), QEMU_CPU (default
# cortex-a53), SBNN_CROSS_MODELS (dump_graph.py --models; default
# fmnist_cnn,resnet18_irnet,reactnet18), SBNN_CROSS_SANITIZE=1 (also build both drivers with
# ASan + UBSan and run them under qemu: about a minute more; leak checks off, LeakSanitizer does
# not run under qemu).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-build/cross-aarch64}"
cxx="${CXX_AARCH64:-aarch64-linux-gnu-g++}"
qemu="${QEMU_AARCH64:-qemu-aarch64}"
py="${PYTHON:-python3}"
# Cortex-A53 (ARMv8.0-A, Raspberry Pi 3): the oldest 64-bit cores; proves the build uses no later
# instruction (qemu's default "max" CPU would accept them).
cpu="${QEMU_CPU:-cortex-a53}"
t0=$SECONDS
say() { echo "cross_test: $*"; }

# ---- tools
need=()
command -v "$cxx" >/dev/null 2>&1 || need+=(g++-aarch64-linux-gnu)
command -v "$qemu" >/dev/null 2>&1 || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # other jobs may hold apt's locks: wait for them rather than fail
    for try in 1 2 3 4 5 6; do
      apt-get update -qq -o DPkg::Lock::Timeout=300 && break
      [ "$try" = 6 ] && { say "apt-get update failed"; exit 1; }
      sleep 10
    done
    apt-get install -y -qq -o DPkg::Lock::Timeout=600 "${need[@]}" >/dev/null
  else
    say "missing ${need[*]}: run as root where apt exists, or apt-get install ${need[*]}" >&2
    exit 1
  fi
fi
say "compiler: $("$cxx" --version | head -1)"
say "emulator: $("$qemu" --version | head -1)"

# ---- x86 side: the exported models and their outputs from this host's engine
mkdir -p "$out/obj" "$out/dumps"
rm -f "$out"/dumps/*.dump
"$py" scripts/dump_graph.py --out "$out/dumps" \
  --models "${SBNN_CROSS_MODELS:-fmnist_cnn,resnet18_irnet,reactnet18}"

# ---- cross-build: the same warnings as CI (-Werror); -ffp-contract=off as runtime/CMakeLists.txt
flags=(-std=c++17 -O3 -ffp-contract=off -Wall -Wextra -Wpedantic -Wshadow -Werror -Iruntime/csrc)
objs=()
pids=()
for src in runtime/csrc/core/*.cpp runtime/csrc/tests/{kernel,engine,int8}_test.cpp; do
  name="$(basename "$src" .cpp)"
  case "$name" in kern_avx2 | kern_avx512) continue ;; esac  # x86 only
  "$cxx" "${flags[@]}" -c "$src" -o "$out/obj/$name.o" &
  pids+=($!)
  case "$name" in kernel_test | engine_test | int8_test) ;; *) objs+=("$out/obj/$name.o") ;; esac
done
for pid in "${pids[@]}"; do wait "$pid"; done  # set -e: fails when any compile failed
for drv in kernel_test engine_test int8_test; do
  "$cxx" -static -O3 "${objs[@]}" "$out/obj/$drv.o" -o "$out/$drv" -lpthread
done
kind="$(command -v file >/dev/null && file -b "$out/kernel_test" | cut -d, -f1-2 || echo "aarch64")"
say "built $kind in $((SECONDS - t0)) s"

# ---- run under qemu
fail=0
say "kernel tests (qemu-aarch64 -cpu $cpu):"
"$qemu" -cpu "$cpu" "$out/kernel_test" | tee "$out/kernel_test.log" || fail=1
grep -q "default ISA neon" "$out/kernel_test.log" || { say "neon is not the default ISA"; fail=1; }
grep -q " 0 failures" "$out/kernel_test.log" || fail=1
# SBNN_ISA forces the ISA; a name the target lacks is refused
one="$(ls "$out"/dumps/*.dump | head -1)"
forced="$(SBNN_ISA=scalar "$qemu" -cpu "$cpu" "$out/engine_test" --isa scalar "$one" 2>&1)" \
  || fail=1
case "$forced" in
  *"default ISA scalar"*) ;;
  *) say "SBNN_ISA=scalar was not honoured"; fail=1 ;;
esac
if SBNN_ISA=avx2 "$qemu" -cpu "$cpu" "$out/engine_test" "$one" >/dev/null 2>&1; then
  say "SBNN_ISA=avx2 was accepted on aarch64"; fail=1
fi
# the int8 kernels: scalar on the Armv8.0 CPU, sdot where the dot product extension is there
say "int8 kernels (qemu-aarch64 -cpu $cpu, then -cpu max: sdot):"
"$qemu" -cpu "$cpu" "$out/int8_test" || fail=1
"$qemu" -cpu max "$out/int8_test" | tee "$out/int8_test.log" || fail=1
grep -q "kernel neon, 0 failures" "$out/int8_test.log" || { say "sdot did not run"; fail=1; }
say "engine on exported models (qemu-aarch64 -cpu $cpu), against the x86 outputs:"
SBNN_ISA=neon "$qemu" -cpu "$cpu" "$out/engine_test" --isa neon,scalar "$out"/dumps/*.dump || fail=1
if [ "${SBNN_CROSS_SANITIZE:-0}" = 1 ]; then
  say "ASan + UBSan build (qemu-aarch64, dynamic: -L /usr/aarch64-linux-gnu):"
  san=(-std=c++17 -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer
       -fno-sanitize-recover=all -ffp-contract=off -Wall -Wextra -Werror -Iruntime/csrc)
  mkdir -p "$out/san"
  sobjs=()
  pids=()
  for src in runtime/csrc/core/*.cpp runtime/csrc/tests/{kernel,engine}_test.cpp; do
    name="$(basename "$src" .cpp)"
    case "$name" in kern_avx2 | kern_avx512) continue ;; esac
    "$cxx" "${san[@]}" -c "$src" -o "$out/san/$name.o" &
    pids+=($!)
    case "$name" in kernel_test | engine_test) ;; *) sobjs+=("$out/san/$name.o") ;; esac
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  for drv in kernel_test engine_test; do
    "$cxx" -fsanitize=address,undefined "${sobjs[@]}" "$out/san/$drv.o" -o "$out/san/$drv" -lpthread
  done
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1"
  sysroot="${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}"
  "$qemu" -cpu "$cpu" -L "$sysroot" "$out/san/kernel_test" | grep -v "^ok" || fail=1
  "$qemu" -cpu "$cpu" -L "$sysroot" "$out/san/engine_test" --isa neon "$out"/dumps/*.dump || fail=1
fi
if [ "$fail" = 0 ]; then
  say "PASS: aarch64 (qemu -cpu $cpu), ISAs ref, scalar, neon, in $((SECONDS - t0)) s"
else
  say "FAILED (see above), after $((SECONDS - t0)) s"
fi
exit "$fail"
