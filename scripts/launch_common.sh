# shellcheck shell=bash
# Sourced by the launch scripts (run_local_*.sh, run_ts_sdpo.sh, experiments/*/*.sh): python and CUDA
# detection, env flag -> Hydra override mapping, DATA_PATH/MODEL_PATH handling, DRY_RUN.
#
# Common environment (every script):
#   PYTHON          interpreter (default: <repo>/.venv/bin/python if present, else python)
#   USE_CUDA        auto (default: ask torch) | 1 (release GPU settings: release=gpu) | 0 (CPU / YAML defaults)
#   DRY_RUN=1       print the final command line(s) instead of running them
#   DATA_PATH       a folder with train.parquet and test.parquet
#   MODEL_PATH      HF model dir or hub id
#   EXPERIMENT TRAIN_BATCH_SIZE ROLLOUT_N MINI_BATCH_SIZE MICRO_BATCH_SIZE LR N_GPUS_PER_NODE NNODES
#   VAL_N MAX_PROMPT_LENGTH MAX_RESPONSE_LENGTH ROLLOUT_NAME
# On a CUDA machine the command selects the Hydra preset `release=gpu` (trainer/config/release/gpu.yaml,
# the release's settings; `python -m trainer.main ... release=gpu` gets the same) and adds what depends
# on the machine or script; without CUDA the YAML defaults (the embedded tiny model and task) apply.
# Either way, the env values that are set are forwarded and win.

MOPD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$MOPD_ROOT${PYTHONPATH:+:$PYTHONPATH}"
SD=actor_rollout_ref.actor.self_distillation
MOPD_ARGS=()          # the script's Hydra overrides, in order; "$@" goes after them
MOPD_GPU=0            # 1: release (GPU) settings: the release=gpu preset plus the machine's devices
MOPD_SCRIPT="$(basename "$0")"

mopd_die() { echo "$MOPD_SCRIPT: $*" >&2; exit 2; }
mopd_note() { echo "[$MOPD_SCRIPT] $*" >&2; }
mopd_dry_run() { [ "${DRY_RUN:-0}" = 1 ]; }
mopd_add() { MOPD_ARGS+=("$@"); }

mopd_detect_python() {
  if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
  elif [ -x "$MOPD_ROOT/.venv/bin/python" ]; then
    PY="$MOPD_ROOT/.venv/bin/python"
  elif command -v python >/dev/null 2>&1; then
    PY=python
  else
    PY=python3
  fi
}

mopd_cuda_available() {
  case "${USE_CUDA:-auto}" in
    1 | true | True) return 0 ;;
    0 | false | False) return 1 ;;
    auto) "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1 ;;
    *) mopd_die "USE_CUDA must be auto, 1 or 0, got '$USE_CUDA'" ;;
  esac
}

mopd_module_available() {  # installed (found without importing it)
  "$PY" -c "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('$1') else 1)" >/dev/null 2>&1
}

mopd_gpu_count() {
  local count
  count="$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)"
  [ "${count:-0}" -gt 0 ] 2>/dev/null && echo "$count" || echo 1
}

mopd_bool() {  # mopd_bool VAR -> true|false, or exit 2
  local name="$1" value="${!1}"
  case "${value,,}" in
    true | 1 | yes) echo true ;;
    false | 0 | no) echo false ;;
    *) mopd_die "$name must be True or False, got '$value'" ;;
  esac
}

# mopd_setting VAR KEY [GPU_DEFAULT]: forward $VAR if set; else, with the GPU settings, the default
# (only for what the release=gpu preset cannot know: the machine's devices, the script's lengths).
mopd_setting() {
  local name="$1" key="$2" default="${3:-}"
  if [ -n "${!name:-}" ]; then
    mopd_add "$key=${!name}"
  elif [ "$MOPD_GPU" = 1 ] && [ -n "$default" ]; then
    mopd_add "$key=$default"
  fi
}

# mopd_bool_setting VAR KEY: forward a True/False flag if set (normalised to true/false).
mopd_bool_setting() {
  local value
  if [ -n "${!1:-}" ]; then
    value="$(mopd_bool "$1")" || exit 2
    mopd_add "$2=$value"
  fi
}

# mopd_data DIR: the train/test parquet files of a prepared dataset folder.
mopd_data() {
  local dir="${1%/}"
  if ! mopd_dry_run; then
    local split
    for split in train test; do
      [ -f "$dir/$split.parquet" ] || mopd_die "$dir/$split.parquet not found: prepare the dataset " \
        "(README: data/load_dataset.py, split_tasks.py/split_tests.py, preprocess.py) or set DATA_PATH"
    done
  fi
  mopd_add "data.train_files=$dir/train.parquet" "data.val_files=$dir/test.parquet"
}

# mopd_select_mode GPU_MODEL: GPU (release settings) when CUDA is there, else the CPU defaults.
# Sets MOPD_GPU and, on GPU, MODEL_PATH's default.
mopd_select_mode() {
  mopd_detect_python
  if mopd_cuda_available; then
    MOPD_GPU=1
    MODEL_PATH="${MODEL_PATH:-$1}"
  elif [ -z "${MODEL_PATH:-}" ]; then
    if [ -z "${DATA_PATH:-}" ]; then
      echo "No CUDA device and no MODEL_PATH: running the embedded CPU default (tiny Qwen3 on datasets/embedded)" >&2
    else
      echo "No CUDA device and no MODEL_PATH: training the embedded tiny Qwen3 on $DATA_PATH (set MODEL_PATH for a real model)" >&2
    fi
  else
    mopd_note "no CUDA device: YAML defaults with MODEL_PATH=$MODEL_PATH and the env settings given"
  fi
  if [ "$MOPD_GPU" = 0 ] && [ -z "${ROLLOUT_NAME:-}" ]; then
    mopd_note "no CUDA device: rollout with hf (vllm is the default on CUDA machines that have it)"
  fi
}

# mopd_gpu_stack: once, on the GPU path, the defaults that depend on the machine (devices, vllm, FA2).
mopd_gpu_stack() {
  [ -n "${MOPD_GPU_STACK:-}" ] && return 0
  MOPD_GPU_STACK=1
  MOPD_GPU_COUNT="${N_GPUS_PER_NODE:-$(mopd_gpu_count)}"
  if [ -n "${ROLLOUT_NAME:-}" ]; then
    :  # the user's choice, forwarded below
  elif mopd_module_available vllm; then
    local problem
    # installed is not enough: a vLLM without the in-place reload would stop at engine start
    if problem="$("$PY" -m workers.vllm_rollout 2>/dev/null)"; then
      MOPD_ROLLOUT=vllm
    else
      MOPD_ROLLOUT=hf
      problem="${problem##*$'\n'}"  # the reason is the last line (vLLM may log while importing)
      mopd_note "${problem:-vllm cannot be imported}: rollout with hf instead"
    fi
  else
    MOPD_ROLLOUT=hf
    mopd_note "vllm is not installed: rollout with hf (transformers generate); pip install -e .[gpu] for the vLLM engine"
  fi
  MOPD_ATTN=""
  mopd_module_available flash_attn && MOPD_ATTN=flash_attention_2
  return 0
}

# mopd_common_args DEFAULT_RESPONSE_LENGTH: model, data, batch sizes, optimizer; with MOPD_GPU=1 the
# release=gpu preset and the machine-dependent settings (env values win).
mopd_common_args() {
  local response_length="$1"
  if [ "$MOPD_GPU" = 1 ]; then
    mopd_gpu_stack
    mopd_add release=gpu
  fi
  if [ -n "${MODEL_PATH:-}" ]; then
    mopd_add "actor_rollout_ref.model.path=$MODEL_PATH"
  fi
  if [ -z "${DATA_PATH:-}" ] && [ "$MOPD_GPU" = 1 ]; then
    DATA_PATH="${DATASETS_DIR:-datasets}/lcb_v6"  # the release's default task
  fi
  if [ -n "${DATA_PATH:-}" ]; then
    mopd_data "$DATA_PATH"
    if [ "$MOPD_GPU" = 0 ] && [ -z "${MAX_PROMPT_LENGTH:-}" ]; then
      # The YAML's 256-token limit fits the embedded task only; a benchmark's prompts (SciKnowEval: up
      # to 1869 tokens) would all be filtered out, so a DATA_PATH gets the release's prompt limit.
      mopd_add data.max_prompt_length=2048
    fi
  fi
  mopd_setting TRAIN_BATCH_SIZE data.train_batch_size
  mopd_setting ROLLOUT_N actor_rollout_ref.rollout.n
  mopd_setting MINI_BATCH_SIZE actor_rollout_ref.actor.ppo_mini_batch_size
  mopd_setting MICRO_BATCH_SIZE actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu
  mopd_setting LR actor_rollout_ref.actor.optim.lr
  mopd_setting LR_WARMUP_STEPS actor_rollout_ref.actor.optim.lr_warmup_steps
  mopd_setting MAX_PROMPT_LENGTH data.max_prompt_length
  mopd_setting MAX_RESPONSE_LENGTH data.max_response_length "$response_length"
  mopd_setting VAL_N actor_rollout_ref.rollout.val_kwargs.n
  mopd_setting N_GPUS_PER_NODE trainer.n_gpus_per_node "${MOPD_GPU_COUNT:-}"
  mopd_setting NNODES trainer.nnodes
  mopd_setting ROLLOUT_NAME actor_rollout_ref.rollout.name "${MOPD_ROLLOUT:-}"
  if [ "$MOPD_GPU" = 1 ] && [ -n "$MOPD_ATTN" ]; then
    mopd_add "actor_rollout_ref.model.attn_implementation=$MOPD_ATTN"
  fi
}

# mopd_experiment_name DEFAULT: EXPERIMENT if set, else DEFAULT with the GPU settings.
mopd_experiment_name() { mopd_setting EXPERIMENT trainer.experiment_name "$1"; }

# The self-distillation env flags (only those that are set; scripts set their own defaults first).
mopd_self_distillation_env() {
  mopd_bool_setting INCLUDE_PRIMARY_SOLUTION "$SD.include_primary_solution"
  mopd_bool_setting INCLUDE_ANOTHER_SOLUTION "$SD.include_another_solution"
  mopd_bool_setting INCLUDE_FAILURE_SOLUTION "$SD.include_failure_solution"
  mopd_setting FAILURE_SOLUTION_CONDITION "$SD.failure_solution_condition"
  mopd_bool_setting DONT_REPROMPT_ON_SELF_SUCCESS "$SD.dont_reprompt_on_self_success"
  mopd_bool_setting INCLUDE_ENVIRONMENT_FEEDBACK "$SD.include_environment_feedback"
  mopd_bool_setting SUMMARIZE_SOLUTIONS "$SD.summarize_solutions"
  mopd_bool_setting SUMMARY_FROM_ALL "$SD.summary_from_all"
  mopd_setting SUMMARY_K "$SD.summary_k"
  mopd_setting PEER_CONTROL_MODE "$SD.peer_control_mode"
  mopd_setting PEER_CONTROL_MATCH "$SD.peer_control_match"
  mopd_setting ALPHA "$SD.alpha"
  mopd_setting DISTILLATION_TOPK "$SD.distillation_topk"
  mopd_setting TEACHER_UPDATE_RATE "$SD.teacher_update_rate"
  mopd_setting MAX_REPROMPT_LEN "$SD.max_reprompt_len"
}

mopd_quote() {  # one shell-safe word per argument, on one line
  local out="" arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then
      out+="$arg "
    else
      out+="'${arg//\'/\'\\\'\'}' "
    fi
  done
  echo "${out% }"
}

# mopd_launch CONFIG_NAME [extra Hydra overrides...]: print (DRY_RUN=1) or run the trainer.
mopd_launch() {
  local config="$1"
  shift
  local cmd=("$PY" -m trainer.main --config-name "$config" "${MOPD_ARGS[@]}" "$@")
  if mopd_dry_run; then
    mopd_quote "${cmd[@]}"
  else
    mopd_note "$(mopd_quote "${cmd[@]}")"
    "${cmd[@]}"
  fi
}

# Experiment sweeps are GPU runs with the release's settings; DRY_RUN=1 shows them anywhere.
mopd_require_gpu() {
  mopd_detect_python
  MOPD_GPU=1
  if ! mopd_dry_run && ! mopd_cuda_available; then
    mopd_die "needs a CUDA device (the release ran on 8 H100/A100); DRY_RUN=1 prints the commands"
  fi
}
