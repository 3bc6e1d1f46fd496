#!/usr/bin/env bash
# Generalization sweep, self-distillation: SciKnowEval (biology, chemistry, material, physics) and
# ToolUse x MODELS, with the release's settings (32 prompts x 8 samples, mini 32, lr 1e-5, alpha 0.5,
# top-k 100, no environment feedback, val n 16).
#   bash experiments/generalization/run_sdpo_all.sh
#   METHOD=mopd bash experiments/generalization/run_sdpo_all.sh   # the 2S1F MOPD context instead of SDPO's
#   DRY_RUN=1 MODELS="Qwen/Qwen3-8B" bash experiments/generalization/run_sdpo_all.sh
# Env: DATASETS_DIR (default datasets), MODELS, METHOD (sdpo | mopd), EXPERIMENT (name prefix, default
# gen), DRY_RUN and the flags of scripts/launch_common.sh / run_local_sdpo.sh. A dataset without
# train.parquet is skipped with a message. Extra arguments are Hydra overrides for every run.
set -euo pipefail
source "$(dirname "$0")/../../scripts/launch_common.sh"

DATASETS_DIR="${DATASETS_DIR:-datasets}"
MODELS="${MODELS:-Qwen/Qwen3-8B allenai/Olmo-3-7B-Instruct}"
METHOD="${METHOD:-sdpo}"
PREFIX="${EXPERIMENT:-gen}"
case "$METHOD" in sdpo | mopd) ;; *) mopd_die "METHOD must be sdpo or mopd, got '$METHOD'" ;; esac
: "${ALPHA:=0.5}" "${DISTILLATION_TOPK:=100}" "${INCLUDE_ENVIRONMENT_FEEDBACK:=False}" "${VAL_N:=16}"
mopd_require_gpu

for model in $MODELS; do
  for dataset in sciknoweval/biology sciknoweval/chemistry sciknoweval/material sciknoweval/physics tooluse; do
    DATA_PATH="$DATASETS_DIR/$dataset"
    if [ ! -f "$DATA_PATH/train.parquet" ]; then
      mopd_note "skipping $dataset: $DATA_PATH/train.parquet not found (README: data/load_dataset.py, split_tasks.py, preprocess.py)"
      continue
    fi
    MOPD_ARGS=()
    MODEL_PATH="$model"
    mopd_common_args "${MAX_RESPONSE_LENGTH:-8192}"
    mopd_self_distillation_env
    mopd_add "trainer.experiment_name=$PREFIX-$METHOD-$(basename "$model")-${dataset//\//-}"
    mopd_launch "$METHOD" "$@"
  done
done
