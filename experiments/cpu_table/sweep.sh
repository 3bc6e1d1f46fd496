#!/usr/bin/env bash
# The learning-rate sweep behind run.sh's per-method values, on the DEV slice of the training split (the
# last 256 training prompts; run.sh DEV=1): never on the held-out test.
#   bash experiments/cpu_table/sweep.sh
# Env: LRS ("1e-4 3e-4 1e-3"), METHODS ("grpo sdpo mopd"; mopd_pos takes mopd's value), STEPS (100: the
#      table's budget), JOBS (2),
#      OUTPUT_DIR (outputs/cpu_sweep). One seed per point (seed 1). Prints dev mean@8 per method and lr.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LRS="${LRS:-1e-4 3e-4 1e-3}"
METHODS="${METHODS:-grpo sdpo mopd}"
OUTPUT_DIR="${OUTPUT_DIR:-outputs/cpu_sweep}"
for lr in $LRS; do
  DEV=1 LR="$lr" SEEDS=1 STEPS="${STEPS:-100}" TEST_FREQ="${STEPS:-100}" JOBS="${JOBS:-2}" METHODS="$METHODS" \
    OUTPUT_DIR="$OUTPUT_DIR/lr$lr" bash "$ROOT/experiments/cpu_table/run.sh"
done
echo "| method | lr | dev mean@8 (seed 1, last step) |"
echo "|---|---|---|"
for method in $METHODS; do
  for lr in $LRS; do
    "${PYTHON:-python}" -c "import json,sys; r=json.load(open(sys.argv[1])); print(f'| {sys.argv[2]} | {sys.argv[3]} | {r[\"methods\"][sys.argv[2]][\"mean@8\"][\"mean\"]:.3f} (base {r[\"base\"][\"mean@8\"]:.3f}) |')" \
      "$OUTPUT_DIR/lr$lr/results.json" "$method" "$lr"
  done
done
