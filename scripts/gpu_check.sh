#!/usr/bin/env bash
# The GPU check in one device call (8 minutes on one H100/H200): the GPU tests first (packed attention,
# the paths that had not run on a GPU: old log-probs with rollout IS under token budgets, the trust-region
# teacher, DPO's reference, the memory plan before start with the optimizer offloaded; then the other
# tests/gpu files while time allows), then the step-breakdown benchmark (a Qwen3-0.6B-shaped model, MOPD and
# GRPO, 64 rollouts x RESPONSE_LENGTH=512 tokens, packed sequences), then the memory plan against each
# mode's measured peak (benchmarks/plan_vs_measured.py, +-25%). Prints the table and writes logs + JSON
# under OUT_DIR (default outputs/gpu_check). Needs torch (CUDA) and transformers; Ray, vLLM and flash-attn
# are optional. Without hydra-core/omegaconf it installs the pure-Python wheels from ./.whl, which
# `bash scripts/make_gpu_wheels.sh` makes on a machine with the package index. DEADLINE (default 480 s)
# caps the whole; each stage has its own budget.
#   bash scripts/gpu_check.sh                 # tests, benchmark, plan check
#   SKIP_TESTS=1 bash scripts/gpu_check.sh    # benchmark and plan check only
#   PADDED=1 SAMPLER=1 DEADLINE=900 bash scripts/gpu_check.sh   # also the padded baseline and the sampler cost
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT_DIR="${OUT_DIR:-outputs/gpu_check}"
RESPONSE_LENGTH="${RESPONSE_LENGTH:-512}"
PRESET="${PRESET:-0.6b}"
mkdir -p "$OUT_DIR"

if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/mopd_site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/mopd_site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: hydra-core/omegaconf are missing and ./.whl has no wheels: run bash scripts/make_gpu_wheels.sh" \
      "where pip reaches the index, and bring ./.whl along" >&2
    exit 2
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "gpu_check: no CUDA device visible to torch" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/device.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$OUT_DIR/device.txt"

# Everything ends by DEADLINE seconds from here (a lent machine's call has a hard limit): each stage gets
# at most its own budget and never more than what is left.
DEADLINE=$((SECONDS + ${DEADLINE:-480}))
budget() { local left=$((DEADLINE - SECONDS)); [ "$1" -lt "$left" ] && echo "$1" || echo "$((left > 5 ? left : 5))"; }
bench() {  # bench NAME SECONDS ARGS...: the step breakdown, table to the log, JSON beside it
  local name=$1 limit; limit=$(budget "$2"); shift 2
  local started=$SECONDS
  timeout "$limit" "$PY" -m benchmarks.step_breakdown --preset "$PRESET" --device cuda \
    --response-length "$RESPONSE_LENGTH" --steps "${STEPS:-2}" --json "$OUT_DIR/$name.json" \
    --workdir "${BENCH_WORKDIR:-/tmp/mopd_step_breakdown}" "$@" 2>&1 \
    | grep --line-buffered -v "Loading weights" | tee "$OUT_DIR/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "gpu_check: $name exit $rc in $((SECONDS - started)) s"
  return "$rc"
}

# Tests first: what never ran on a GPU, then packed attention under gradient checkpointing (the benchmark
# packs; if that check fails, the benchmark runs padded rather than not at all).
REMOVE_PADDING=true
tests_rc=0
if [ -z "${SKIP_TESTS:-}" ]; then
  started=$SECONDS
  timeout "$(budget 90)" "$PY" -m pytest -q -p no:cacheprovider tests/gpu/test_packed_attention_cuda.py 2>&1 \
    | tee "$OUT_DIR/packed_attention_tests.log"
  if [ "${PIPESTATUS[0]}" -ne 0 ]; then
    REMOVE_PADDING=false
    tests_rc=1
    echo "gpu_check: packed attention failed its check (packed_attention_tests.log): the benchmark runs padded"
  fi
  timeout "$(budget "${TESTS_TIMEOUT:-150}")" "$PY" -m pytest -q -p no:cacheprovider tests/gpu/test_release_paths_cuda.py \
    2>&1 | tee "$OUT_DIR/gpu_tests.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || tests_rc=1
  echo "gpu_check: tests exit $tests_rc in $((SECONDS - started)) s"
fi

# The benchmark next, with what is left but the plan check's share.
bench "step_breakdown_${PRESET}" "${BENCH_TIMEOUT:-260}" \
  --override "actor_rollout_ref.model.use_remove_padding=$REMOVE_PADDING" ${BENCH_ARGS:-}
bench_rc=$?

# The memory plan against each mode's measured peak (same config, same model).
plan_rc=0
if [ -f "$OUT_DIR/step_breakdown_${PRESET}.json" ]; then
  timeout "$(budget 40)" "$PY" -m benchmarks.plan_vs_measured --json "$OUT_DIR/step_breakdown_${PRESET}.json" \
    --workdir "${BENCH_WORKDIR:-/tmp/mopd_step_breakdown}" 2>&1 | tee "$OUT_DIR/plan_vs_measured.log"
  plan_rc=${PIPESTATUS[0]}
fi

# Optional, when the deadline allows: the other GPU tests, the sampler's cost, the padded baseline.
if [ -z "${SKIP_TESTS:-}" ] && [ $((DEADLINE - SECONDS)) -gt 60 ]; then
  timeout "$(budget 300)" "$PY" -m pytest -q -p no:cacheprovider tests/gpu/test_worker_cuda.py \
    tests/gpu/test_shared_prefix_cuda.py tests/gpu/test_train_cuda.py 2>&1 | tee "$OUT_DIR/gpu_tests_more.log"
fi
if [ -n "${SAMPLER:-}" ] && [ $((DEADLINE - SECONDS)) -gt 30 ]; then
  timeout "$(budget 30)" "$PY" -m benchmarks.sampler_cost --device cuda 2>&1 | tee "$OUT_DIR/sampler_cost.log"
fi
if [ -n "${PADDED:-}" ] && [ "$REMOVE_PADDING" = true ] && [ $((DEADLINE - SECONDS)) -gt 60 ]; then
  bench "step_breakdown_${PRESET}_padded" 200 --modes mopd --override actor_rollout_ref.model.use_remove_padding=false
fi
echo "gpu_check: tests $tests_rc, benchmark $bench_rc, plan $plan_rc, $SECONDS s in all"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$plan_rc" -eq 0 ]
