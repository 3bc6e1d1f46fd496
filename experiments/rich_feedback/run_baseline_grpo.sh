#!/usr/bin/env bash
# Rich-feedback GRPO baseline on LiveCodeBench v6 (release settings): Qwen3-8B, 32 prompts x 8 samples,
# mini-batch 8, lr 1e-6, no warm-up, val n 4.
#   bash experiments/rich_feedback/run_baseline_grpo.sh
#   DRY_RUN=1 bash experiments/rich_feedback/run_baseline_grpo.sh
# Env: DATA_PATH (default $DATASETS_DIR/lcb_v6), MODEL_PATH (default Qwen/Qwen3-8B), DRY_RUN and the
# flags of scripts/launch_common.sh. Extra arguments are Hydra overrides.
set -euo pipefail
source "$(dirname "$0")/../../scripts/launch_common.sh"

: "${DATA_PATH:=${DATASETS_DIR:-datasets}/lcb_v6}" "${MODEL_PATH:=Qwen/Qwen3-8B}"
: "${MINI_BATCH_SIZE:=8}" "${LR:=1e-6}" "${LR_WARMUP_STEPS:=0}" "${VAL_N:=4}"
mopd_require_gpu
mopd_common_args "${MAX_RESPONSE_LENGTH:-8192}"
mopd_experiment_name "rich-grpo-$(basename "$MODEL_PATH")-$(basename "$DATA_PATH")"
mopd_launch grpo "$@"
