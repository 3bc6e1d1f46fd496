#!/usr/bin/env bash
# GRPO baseline (config grpo): PPO-clip on group-relative advantages.
#   bash run_local_grpo.sh                                   # CUDA: release settings; else the embedded CPU default
#   DATA_PATH=datasets/lcb_v6 bash run_local_grpo.sh
# Env: DATA_PATH MODEL_PATH EXPERIMENT TRAIN_BATCH_SIZE ROLLOUT_N MINI_BATCH_SIZE LR N_GPUS_PER_NODE ...
# (scripts/launch_common.sh). Extra arguments are Hydra overrides and go last.
set -euo pipefail
source "$(dirname "$0")/scripts/launch_common.sh"

mopd_select_mode Qwen/Qwen3-4B
mopd_common_args 8192
mopd_experiment_name "grpo-$(basename "${MODEL_PATH:-embedded}")-$(basename "${DATA_PATH:-embedded}")"
mopd_launch grpo "$@"
