#!/usr/bin/env bash
# Rich-feedback self-distillation on LiveCodeBench v6 (release settings): Qwen3-8B, 32 prompts x 8
# samples, mini-batch 1 (32 optimizer steps per step: off-policy, so is_clip is active), lr 1e-6, no
# warm-up, alpha 1.0 (reverse KL), top-k 20, EMA teacher rate 0.01, environment feedback on, val n 4.
#   bash experiments/rich_feedback/run_sdpo.sh
#   DRY_RUN=1 bash experiments/rich_feedback/run_sdpo.sh
# Env: DATA_PATH (default $DATASETS_DIR/lcb_v6), MODEL_PATH (default Qwen/Qwen3-8B), DRY_RUN and the
# flags of scripts/launch_common.sh / run_local_sdpo.sh. Extra arguments are Hydra overrides.
set -euo pipefail
source "$(dirname "$0")/../../scripts/launch_common.sh"

: "${DATA_PATH:=${DATASETS_DIR:-datasets}/lcb_v6}" "${MODEL_PATH:=Qwen/Qwen3-8B}"
: "${MINI_BATCH_SIZE:=1}" "${LR:=1e-6}" "${LR_WARMUP_STEPS:=0}" "${VAL_N:=4}"
: "${ALPHA:=1.0}" "${DISTILLATION_TOPK:=20}" "${TEACHER_UPDATE_RATE:=0.01}" "${INCLUDE_ENVIRONMENT_FEEDBACK:=True}"
mopd_require_gpu
mopd_common_args "${MAX_RESPONSE_LENGTH:-8192}"
mopd_self_distillation_env
mopd_experiment_name "rich-sdpo-$(basename "$MODEL_PATH")-$(basename "$DATA_PATH")"
mopd_launch sdpo "$@"
