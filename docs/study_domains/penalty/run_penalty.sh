#!/usr/bin/env bash
# The secondary grid with the paper's penalty (docs/study_domains/penalty/README.md): domains ab,
# 01, pm1 and the fifth arm pm1c (the authors' ReActNet-style +-1 with per-channel mean|w|
# scaling), all from the closed-form start, EC 0.25 / 0.05 / 0.01 with the authors' gamma, seeds
# 0-1 (seed 0 everywhere first). Each finished run's row is appended to $OUT/results.csv at once
# and a row already there is skipped, so this script resumes from a committed CSV on any machine.
# Then the engine latency / file bytes of every run and the sweep's tables and plots (achieved ones
# on the x-axis).
#   bash docs/study_domains/penalty/run_penalty.sh [OUT]   (default: docs/study_domains/penalty)
set -euo pipefail
OUT="${1:-docs/study_domains/penalty}"
sweep() {
  sbnn sweep --config docs/study_domains/penalty/config.yaml --domain ab,01,pm1,pm1c --arm cf \
    --no-fp --no-latency --out "$OUT" --ec 0.25,0.05,0.01 "$@"
}
sweep --seeds 0
sweep --seeds 1
python scripts/study_latency.py "$OUT" --no-ort
sweep --seeds 0,1 --collect   # results.md and the plots again, now with the latency column
python scripts/study_report.py --kind penalty "$OUT"   # README.md and the figure
