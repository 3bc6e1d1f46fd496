#!/usr/bin/env bash
# The paper's comparison at CPU scale on the embedded default: the base model, GRPO, SDPO, MOPD
# positive-only (2 successes) and MOPD (2 successes + 1 failure), over seeds, with 95% intervals.
#   bash experiments/cpu_table/run.sh                                   # SEEDS=3, all four methods
#   SEEDS=1 METHODS="grpo sdpo mopd" bash experiments/cpu_table/run.sh
#   DEV=1 LR=1e-3 STEPS=40 SEEDS=1 OUTPUT_DIR=outputs/cpu_sweep/lr1e-3 bash experiments/cpu_table/run.sh  # a sweep point
# Env: SEEDS (count, 3), METHODS ("grpo sdpo mopd_pos mopd"), OUTPUT_DIR (outputs/cpu_table), JOBS (runs at
#      a time, 2), STEPS (100), TEST_FREQ (25), LR (one lr for every method: sweeps only), DEV=1 (train on
#      the first 1744 training prompts and validate on the last 256 of the training split: the sweep's dev
#      slice; never the held-out test), PYTHON.
# Equal budgets: every method runs STEPS steps of 16 prompts x 8 rollouts (the embedded YAML defaults),
# validation on the same held-out prompts x 8 samples every TEST_FREQ steps and at the end; seed k (1..SEEDS)
# sets trainer.seed and data.seed (seed 1 = the YAML defaults, i.e. the main job's settings).
# The base is evaluated once (a 1-step run's step-0 validation).
# Writes OUTPUT_DIR/{results.json,table.md,curves.png}; runs in OUTPUT_DIR/runs/<method>/seed<k>/ (train.log,
# metrics.jsonl, validation/ and rollouts/ dumps). Finished runs are kept, so a rerun only does what is left.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
SEEDS="${SEEDS:-3}"
METHODS="${METHODS:-grpo sdpo mopd_pos mopd}"
OUTPUT_DIR="${OUTPUT_DIR:-outputs/cpu_table}"
JOBS="${JOBS:-2}"
STEPS="${STEPS:-100}"
TEST_FREQ="${TEST_FREQ:-25}"
SD=actor_rollout_ref.actor.self_distillation
die() { echo "cpu_table/run.sh: $*" >&2; exit 2; }
[[ "$SEEDS" =~ ^[1-9][0-9]*$ ]] || die "SEEDS must be a positive integer, got '$SEEDS'"
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die "JOBS must be a positive integer, got '$JOBS'"
[[ "$STEPS" =~ ^[1-9][0-9]*$ ]] || die "STEPS must be a positive integer, got '$STEPS'"

# Per-method settings. Learning rates chosen by the dev-slice sweep (experiments/cpu_table/sweep.sh: 1e-4,
# 3e-4, 1e-3, 100 steps, seed 1, 2026-11-28; experiments/cpu_table/README.md); everything else is the YAML
# default of each config (cosine schedule, 10 warm-up steps). LR_<METHOD> in the environment overrides.
method_args() {
  case "$1" in
    grpo) echo "--config-name grpo actor_rollout_ref.actor.optim.lr=${LR:-$LR_GRPO}" ;;
    sdpo) echo "--config-name sdpo actor_rollout_ref.actor.optim.lr=${LR:-$LR_SDPO}" ;;
    mopd_pos) echo "--config-name mopd $SD.include_failure_solution=false actor_rollout_ref.actor.optim.lr=${LR:-$LR_MOPD_POS}" ;;
    mopd) echo "--config-name mopd actor_rollout_ref.actor.optim.lr=${LR:-$LR_MOPD}" ;;
    *) die "unknown method '$1' (METHODS: grpo sdpo mopd_pos mopd)" ;;
  esac
}
LR_GRPO="${LR_GRPO:-1e-3}"  # dev mean@8 after 100 steps: 1e-4 0.597, 3e-4 0.744, 1e-3 0.802
LR_SDPO="${LR_SDPO:-3e-4}"  # 0.543, 0.552, 0.160 (1e-3 collapses)
LR_MOPD="${LR_MOPD:-3e-4}"  # 0.599, 0.729, 0.006 (1e-3 collapses)
LR_MOPD_POS="${LR_MOPD_POS:-$LR_MOPD}"  # not swept: MOPD's context less the failed peer
for m in $METHODS; do method_args "$m" >/dev/null; done

mkdir -p "$OUTPUT_DIR"
DATA_ARGS=()
if [ "${DEV:-0}" = 1 ]; then
  "$PYTHON" - "$OUTPUT_DIR/data" <<'EOF'
import sys
from pathlib import Path
import pandas as pd
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
train = pd.read_parquet("datasets/embedded/train.parquet")
train.iloc[:-256].to_parquet(out / "train.parquet", index=False)
train.iloc[-256:].to_parquet(out / "dev.parquet", index=False)
EOF
  DATA_ARGS=("data.train_files=$OUTPUT_DIR/data/train.parquet" "data.val_files=$OUTPUT_DIR/data/dev.parquet")
fi
THREADS=$(( $(nproc) / JOBS )); [ "$THREADS" -ge 1 ] || THREADS=1
COMMON=("${DATA_ARGS[@]}" "trainer.total_training_steps=$STEPS" "trainer.backend=local"
        "trainer.num_threads=$THREADS" "trainer.logger=[console,jsonl]")

run_one() {  # run_one DIR ARGS... : one training run, its log in DIR/train.log; skipped when finished
  local dir="$1"; shift
  if [ -f "$dir/.done" ]; then echo "[cpu_table] kept $dir (finished earlier)"; return 0; fi
  rm -rf "$dir"; mkdir -p "$dir"
  local start=$SECONDS
  if "$PYTHON" -m trainer.main "$@" "trainer.default_local_dir=$dir" >"$dir/train.log" 2>&1; then
    echo "$((SECONDS - start))" >"$dir/.done"
    echo "[cpu_table] done $dir in $((SECONDS - start))s: $(grep -o 'mean@8: .*' "$dir/train.log" | head -1)"
  else
    echo "[cpu_table] FAILED $dir (see $dir/train.log):" >&2; tail -5 "$dir/train.log" >&2; return 1
  fi
}

started=$SECONDS
# The base, once: a 1-step run whose step-0 validation is the base model's.
# shellcheck disable=SC2046
run_one "$OUTPUT_DIR/base" $(method_args grpo) "${COMMON[@]}" trainer.total_training_steps=1 \
  trainer.val_before_train=true trainer.test_freq=-1 trainer.rollout_data_dir=null &
dirs=("$OUTPUT_DIR/base")
for method in $METHODS; do
  for ((k = 1; k <= SEEDS; k++)); do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    # shellcheck disable=SC2046
    run_one "$OUTPUT_DIR/runs/$method/seed$k" $(method_args "$method") "${COMMON[@]}" \
      "trainer.seed=$k" "data.seed=$k" trainer.val_before_train=false "trainer.test_freq=$TEST_FREQ" &
    dirs+=("$OUTPUT_DIR/runs/$method/seed$k")
  done
done
wait || true
for dir in "${dirs[@]}"; do
  [ -f "$dir/.done" ] || die "$dir did not finish (its train.log says why); finished runs are kept, rerun to retry"
done
echo "[cpu_table] all runs finished in $((SECONDS - started))s (JOBS=$JOBS, $THREADS thread(s) each)"
"$PYTHON" experiments/cpu_table/aggregate.py --output-dir "$OUTPUT_DIR" --methods $METHODS
echo "[cpu_table] wrote $OUTPUT_DIR/results.json, table.md, curves.png; wall $((SECONDS - started))s"
