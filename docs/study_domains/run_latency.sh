#!/usr/bin/env bash
# Accuracy against latency and file bytes for the primary study (issue 21, item 5), after its runs
# have finished: train the float twin once (fmnist_cnn_fp on the study's recipe, 938 steps;
# resumes from its last.pt, skipped when its report.json exists), then time every run's
# model.sbnn on the engine (batch 1, one thread, best of 10 interleaved rounds) with onnxruntime
# fp32 / int8 on the trained twin (and their test accuracy), merged into $OUT/results.csv, and
# regenerate the README and figures. Run it on an otherwise idle machine: the load is recorded
# beside every figure, but a loaded machine inflates them.
#   bash docs/study_domains/run_latency.sh [OUT]      (default: docs/study_domains)
set -euo pipefail
OUT="${1:-docs/study_domains}"
TWIN="$OUT/runs/fp_s0"
if [ ! -f "$TWIN/report.json" ]; then
  if [ -f "$TWIN/last.pt" ]; then
    sbnn train --resume "$TWIN"
  else
    sbnn train --config docs/study_domains/config.yaml --set model.name=fmnist_cnn_fp \
      --out "$TWIN"
  fi
fi
python scripts/study_latency.py "$OUT" --twin-run "$TWIN"
python scripts/study_report.py "$OUT"
