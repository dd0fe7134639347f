#!/usr/bin/env bash
# The primary domain study (docs/study_domains/README.md), most informative complete cells first:
# EC 0.25 and 0.10 at seeds 0-1 (all four arms), then EC 0.05 and 0.01 at seeds 0-1, then seeds
# 2-3 everywhere. Each finished run's row is appended to $OUT/results.csv at once, and a row
# already there is skipped, so this script resumes from a committed CSV on any machine.
#   bash docs/study_domains/run_study.sh [OUT]      (default: docs/study_domains)
set -euo pipefail
OUT="${1:-docs/study_domains}"
sweep() {
  sbnn sweep --config docs/study_domains/config.yaml --domain ab,01,pm1,abr --arm cf \
    --no-fp --no-latency --out "$OUT" "$@"
}
sweep --ec 0.1,0.25 --seeds 0,1
sweep --ec 0.05,0.01 --seeds 0,1
sweep --ec 0.1,0.25,0.05,0.01 --seeds 2,3
