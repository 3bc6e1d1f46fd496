#!/usr/bin/env bash
# MOPD (config mopd): the teacher sees 2 successful peers and 1 failed peer of the same prompt.
#   bash run_local_sdpo.sh                                   # CUDA: release settings; else the embedded CPU default
#   DATA_PATH=datasets/lcb_v6 bash run_local_sdpo.sh
#   INCLUDE_FAILURE_SOLUTION=False bash run_local_sdpo.sh    # positive peer imitation only
#   bash run_local_sdpo.sh trainer.total_training_steps=10   # extra Hydra overrides go last
# Peer-context flags (CUDA defaults shown; without CUDA only flags you set are forwarded, mopd.yaml
# already holds the 2S1F context): INCLUDE_PRIMARY_SOLUTION=True INCLUDE_ANOTHER_SOLUTION=True
# INCLUDE_FAILURE_SOLUTION=True FAILURE_SOLUTION_CONDITION=always; also ALPHA DISTILLATION_TOPK
# DONT_REPROMPT_ON_SELF_SUCCESS INCLUDE_ENVIRONMENT_FEEDBACK SUMMARIZE_SOLUTIONS SUMMARY_FROM_ALL SUMMARY_K
# PEER_CONTROL_MODE PEER_CONTROL_MATCH TEACHER_UPDATE_RATE MAX_REPROMPT_LEN, and the common ones in
# scripts/launch_common.sh. Our default context is the paper's 2S1F; the release script's current defaults
# (primary + 7 peer summaries from all rollouts) are:
#   SUMMARIZE_SOLUTIONS=True SUMMARY_FROM_ALL=True SUMMARY_K=7 INCLUDE_ANOTHER_SOLUTION=False \
#   INCLUDE_FAILURE_SOLUTION=False bash run_local_sdpo.sh
set -euo pipefail
source "$(dirname "$0")/scripts/launch_common.sh"

mopd_select_mode Qwen/Qwen3-4B-Instruct-2507
if [ "$MOPD_GPU" = 1 ]; then
  : "${INCLUDE_PRIMARY_SOLUTION:=True}" "${INCLUDE_ANOTHER_SOLUTION:=True}"
  : "${INCLUDE_FAILURE_SOLUTION:=True}" "${FAILURE_SOLUTION_CONDITION:=always}"
fi
if [ -n "${PEER_CONTROL_MODE:-}" ] && [ "$PEER_CONTROL_MODE" != none ]; then
  # Matched-budget controls replace the 2S1F blocks, so the budget is pinned to 2S1F (as the release does).
  mopd_note "PEER_CONTROL_MODE=$PEER_CONTROL_MODE: pinning the 2S1F budget (another, failure, always, no summaries)"
  INCLUDE_ANOTHER_SOLUTION=True INCLUDE_FAILURE_SOLUTION=True FAILURE_SOLUTION_CONDITION=always SUMMARIZE_SOLUTIONS=False
fi

mopd_common_args 4096
mopd_self_distillation_env
mopd_experiment_name "mopd-$(basename "${MODEL_PATH:-embedded}")-$(basename "${DATA_PATH:-embedded}")"
mopd_launch mopd "$@"
