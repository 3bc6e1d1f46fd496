#!/usr/bin/env bash
# Teacher-student distillation (config sdpo): a frozen external teacher (TEACHER_MODEL_PATH, same
# vocabulary as the student) re-prompted with the primary successful peer.
#   DATA_PATH=datasets/lcb_v6 TEACHER_MODEL_PATH=Qwen/Qwen3-14B bash run_ts_sdpo.sh
#   bash run_ts_sdpo.sh          # no CUDA, no MODEL_PATH: embedded CPU default, teacher = the embedded base model
# TEACHER_UPDATE_RATE defaults to 0.0 (frozen); the self-distillation and common env flags of
# run_local_sdpo.sh apply. Extra arguments are Hydra overrides and go last.
set -euo pipefail
source "$(dirname "$0")/scripts/launch_common.sh"

embedded=0
[ -z "${MODEL_PATH:-}" ] && embedded=1
mopd_select_mode Qwen/Qwen3-4B-Instruct-2507
if [ -z "${TEACHER_MODEL_PATH:-}" ]; then
  if [ "$MOPD_GPU" = 0 ] && [ "$embedded" = 1 ]; then
    TEACHER_MODEL_PATH=embedded
  else
    mopd_die "TEACHER_MODEL_PATH is not set: name the teacher model (HF dir or hub id, same vocabulary as" \
      "MODEL_PATH=${MODEL_PATH}), e.g. TEACHER_MODEL_PATH=Qwen/Qwen3-14B bash run_ts_sdpo.sh"
  fi
fi
: "${INCLUDE_PRIMARY_SOLUTION:=True}" "${INCLUDE_ANOTHER_SOLUTION:=False}" "${INCLUDE_FAILURE_SOLUTION:=False}"
: "${TEACHER_UPDATE_RATE:=0.0}"

mopd_common_args 4096
mopd_add "actor_rollout_ref.ref.model.path=$TEACHER_MODEL_PATH"
mopd_self_distillation_env
mopd_experiment_name "ts-$(basename "$TEACHER_MODEL_PATH")-to-$(basename "${MODEL_PATH:-embedded}")-$(basename "${DATA_PATH:-embedded}")"
mopd_launch sdpo "$@"
