#!/usr/bin/env bash
# Trained Sub-bit against SBNN at equal bits per weight (docs/study_domains/subbit/README.md),
# 3 seeds each. Sub-bit: a dense pm1 BNN with 2**k trained 3x3 patterns, k = 4 / 5 / 6 =
# 0.44 / 0.56 / 0.67 bits per weight, one sweep folder per k ($OUT/k4, $OUT/k5, $OUT/k6). SBNN: the
# primary study's recipe ({alpha, beta}, exact sparsity) at the EC whose entropy H(p) equals k/9:
# H(0.0924) = 0.444, H(0.1293) = 0.556, H(0.1740) = 0.667 ($OUT/sbnn). Every finished run's row is
# appended to its folder's results.csv at once and rows already there are skipped, so this
# script resumes from committed CSVs on any machine. About 18 runs of 938 steps.
#   bash docs/study_domains/subbit/run_subbit.sh [OUT]     (default: docs/study_domains/subbit)
set -euo pipefail
OUT="${1:-docs/study_domains/subbit}"
for seeds in 0 1 2; do
  for k in 4 5 6; do
    sbnn sweep --config docs/study_domains/subbit/config.yaml --domain pm1 --arm cf --ec 0.5 \
      --gamma 0 --seeds "$seeds" --no-fp --no-latency --set prune.patterns="$k" \
      --out "$OUT/k$k"
  done
  sbnn sweep --config docs/study_domains/config.yaml --domain ab --arm cf \
    --ec 0.0924,0.1293,0.174 --seeds "$seeds" --no-fp --no-latency --out "$OUT/sbnn"
done
python scripts/study_report.py --kind subbit "$OUT"    # README.md and the figure
