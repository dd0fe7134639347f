#!/usr/bin/env bash
# The Fashion-MNIST sweep of docs/RESULTS.md, trained on a GPU machine: six `sbnn sweep` processes
# (domain x seed) share one GPU, without engine timing; the sweep is then finished (latency at
# batch 1, one thread) on the CPU machine by rerunning the same sweep command on the fetched
# folder, which trains nothing and reuses each run's exported model.sbnn.
#   usage: SBNN_DATA=/path/to/fashion-mnist bash benchmarks/gpu_sweep.sh OUT_DIR [extra --set ...]
set -u
out=$1; shift
ecs=0.5,0.25,0.1,0.05,0.02,0.01
mkdir -p "$out"
for d in ab pm1 01; do
  for s in 0 1; do
    fp=--no-fp
    [ "$d" = ab ] && fp=
    python3 -m sbnn.cli sweep --ec $ecs --domain $d --seeds $s $fp --no-latency \
      --set progress=false "$@" --out "$out/sweep" > "$out/log_${d}_s$s.txt" 2>&1 &
  done
done
wait
