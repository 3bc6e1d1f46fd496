#!/usr/bin/env bash
# Generalization sweep, GRPO baseline: SciKnowEval (biology, chemistry, material, physics) and ToolUse
# x MODELS x mini-batch {8, 32} x lr {1e-5, 1e-6}, 32 prompts x 8 samples, val n 16 (release settings).
#   bash experiments/generalization/run_baseline_grpo_all.sh
#   DRY_RUN=1 MINI_BATCH_SIZES=32 LRS=1e-6 bash experiments/generalization/run_baseline_grpo_all.sh
# Env: DATASETS_DIR (default datasets), MODELS, MINI_BATCH_SIZES ("8 32"), LRS ("1e-5 1e-6"), EXPERIMENT
# (name prefix, default gen), DRY_RUN and the flags of scripts/launch_common.sh. A dataset without
# train.parquet is skipped with a message. Extra arguments are Hydra overrides for every run.
set -euo pipefail
source "$(dirname "$0")/../../scripts/launch_common.sh"

DATASETS_DIR="${DATASETS_DIR:-datasets}"
MODELS="${MODELS:-Qwen/Qwen3-8B allenai/Olmo-3-7B-Instruct}"
MINI_BATCH_SIZES="${MINI_BATCH_SIZES:-8 32}"
LRS="${LRS:-1e-5 1e-6}"
PREFIX="${EXPERIMENT:-gen}"
: "${VAL_N:=16}"
mopd_require_gpu

for model in $MODELS; do
  for dataset in sciknoweval/biology sciknoweval/chemistry sciknoweval/material sciknoweval/physics tooluse; do
    DATA_PATH="$DATASETS_DIR/$dataset"
    if [ ! -f "$DATA_PATH/train.parquet" ]; then
      mopd_note "skipping $dataset: $DATA_PATH/train.parquet not found (README: data/load_dataset.py, split_tasks.py, preprocess.py)"
      continue
    fi
    for MINI_BATCH_SIZE in $MINI_BATCH_SIZES; do
      for LR in $LRS; do
        MOPD_ARGS=()
        MODEL_PATH="$model"
        mopd_common_args "${MAX_RESPONSE_LENGTH:-8192}"
        mopd_add "trainer.experiment_name=$PREFIX-grpo-$(basename "$model")-${dataset//\//-}-mini$MINI_BATCH_SIZE-lr$LR"
        mopd_launch grpo "$@"
      done
    done
  done
done
