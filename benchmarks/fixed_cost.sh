#!/usr/bin/env bash
# Before/after of the binary conv's per-layer fixed cost (issue 20): builds
# benchmarks/fixed_cost.cpp against this tree's runtime/csrc and against REV's (default main),
# then per ResNet-18 shape prints the best time of each build, interleaved in one run (ROUNDS
# rounds of REPS calls each), their ratio, and with CALLGRIND=1 the instructions per call
# (valgrind --tool=callgrind, REPS=11 minus REPS=1, over 10: deterministic).
#   benchmarks/fixed_cost.sh [REV] [ONES]      (x86-64 with AVX2; SBNN_ISA=scalar: the scalar kernels)
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${1:-main}"; ones="${2:-0}"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
mkdir -p "$work/base"
git archive "$rev" runtime/csrc | tar -x -C "$work/base"
build() {  # build SRC_ROOT OUT
  local flags="-O3 -DNDEBUG -std=c++17 -DSBNN_HAVE_X86_KERNELS -I$1/runtime/csrc" objs=() f b ex
  mkdir -p "$2.o"
  for f in "$1"/runtime/csrc/core/*.cpp; do
    b="$(basename "$f" .cpp)"; ex=""
    case "$b" in
      kern_neon) continue ;;
      kern_avx2) ex="-mavx2 -mfma -mpopcnt -mbmi -mbmi2" ;;
      kern_avx512) ex="-mavx2 -mfma -mpopcnt -mbmi -mbmi2 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vpopcntdq -mprefer-vector-width=512" ;;
      int8) ex="-ffp-contract=off" ;;
    esac
    g++ $flags $ex -c "$f" -o "$2.o/$b.o" & objs+=("$2.o/$b.o")
  done
  wait
  g++ $flags benchmarks/fixed_cost.cpp "${objs[@]}" -o "$2" -lpthread
}
build "$work/base" "$work/before"
build "$PWD" "$work/after"
echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), ones $ones, before = $rev, after = working tree; $(uptime)"
shapes="64@32 64>128s2 128@16 128>256s2 256@8 256>512s2 512@4"
declare -A tb ta
for s in $shapes; do tb[$s]=1e9; ta[$s]=1e9; done
for r in $(seq "${ROUNDS:-5}"); do
  for s in $shapes; do
    t=$("$work/before" "$ones" "$s" | awk '{print $2}'); tb[$s]=$(echo "$t ${tb[$s]}" | awk '{print ($1 < $2 ? $1 : $2)}')
    t=$("$work/after" "$ones" "$s" | awk '{print $2}'); ta[$s]=$(echo "$t ${ta[$s]}" | awk '{print ($1 < $2 ? $1 : $2)}')
  done
done
icount() {  # icount BIN SHAPE
  local a b
  a=$(REPS=1 valgrind --tool=callgrind --callgrind-out-file=/dev/null "$1" "$ones" "$2" 2>&1 | awk '/Collected/{print $4}')
  b=$(REPS=11 valgrind --tool=callgrind --callgrind-out-file=/dev/null "$1" "$ones" "$2" 2>&1 | awk '/Collected/{print $4}')
  echo $(( (b - a) / 10 ))
}
printf "%-10s %11s %11s %7s" shape "before us" "after us" ratio
[ "${CALLGRIND:-0}" = 1 ] && printf " %13s %13s %7s" "before instr" "after instr" ratio
echo
for s in $shapes; do
  printf "%-10s %11s %11s %6.2fx" "$s" "${tb[$s]}" "${ta[$s]}" "$(echo "${tb[$s]} ${ta[$s]}" | awk '{print $1 / $2}')"
  if [ "${CALLGRIND:-0}" = 1 ]; then
    ib=$(icount "$work/before" "$s"); ia=$(icount "$work/after" "$s")
    printf " %13s %13s %6.2fx" "$ib" "$ia" "$(echo "$ib $ia" | awk '{print $1 / $2}')"
  fi
  echo
done
