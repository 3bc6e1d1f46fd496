#!/usr/bin/env bash
# The GPU check in one command, for one H100/H200: packed attention (test + benchmark, seconds), the
# step-breakdown benchmark (packed sequences), then the GPU tests (tests/gpu) and the padded benchmark;
# the benchmark runs a Qwen3-0.6B-shaped model (MOPD and GRPO, 64 rollouts x 1,024 tokens). Prints the table and
# writes logs + JSON under OUT_DIR (default outputs/gpu_check). Needs torch (CUDA) and transformers; Ray,
# vLLM and flash-attn are optional. Without hydra-core/omegaconf it installs the pure-Python wheels from
# ./.whl if present (see docs/performance.md). About 12 minutes on an H200 with the hf rollout (measured:
# benchmark ~400 s, tests ~250 s); DEADLINE (default 1200 s) caps the whole, each stage has its own budget.
#   bash scripts/gpu_check.sh                 # tests + benchmark
#   SKIP_TESTS=1 bash scripts/gpu_check.sh    # benchmark only
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT_DIR="${OUT_DIR:-outputs/gpu_check}"
RESPONSE_LENGTH="${RESPONSE_LENGTH:-1024}"
PRESET="${PRESET:-0.6b}"
mkdir -p "$OUT_DIR"

if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/mopd_site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/mopd_site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: hydra-core/omegaconf are missing and ./.whl has no wheels (docs/performance.md says which)" >&2
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
DEADLINE=$((SECONDS + ${DEADLINE:-1200}))
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

# Packed sequences under sdpa (torch's varlen flash kernel, workers/packed_attention.py): checked first, in
# seconds, because the benchmark packs; if the check fails, the benchmark runs padded rather than not at all.
REMOVE_PADDING=true
timeout "$(budget 90)" "$PY" -m pytest -q -p no:cacheprovider tests/gpu/test_packed_attention_cuda.py 2>&1 \
  | tee "$OUT_DIR/packed_attention_tests.log"
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
  REMOVE_PADDING=false
  echo "gpu_check: packed attention failed its check (packed_attention_tests.log): the benchmark runs padded"
fi
timeout "$(budget 60)" "$PY" -m benchmarks.packed_attention --device cuda --dtype bfloat16 \
  --json "$OUT_DIR/packed_attention.json" 2>&1 | grep -v "Loading weights" | tee "$OUT_DIR/packed_attention.log"

# The benchmark next: its figures are the point of the check, and a failing test must not hide them.
bench "step_breakdown_${PRESET}" "${BENCH_TIMEOUT:-480}" \
  --override "actor_rollout_ref.model.use_remove_padding=$REMOVE_PADDING" ${BENCH_ARGS:-}
bench_rc=$?
timeout "$(budget 30)" "$PY" -m benchmarks.sampler_cost --device cuda 2>&1 | tee "$OUT_DIR/sampler_cost.log"

tests_rc=0
if [ -z "${SKIP_TESTS:-}" ]; then
  started=$SECONDS
  timeout "$(budget "${TESTS_TIMEOUT:-300}")" "$PY" -m pytest -q -p no:cacheprovider tests/gpu \
    tests/workers/test_rollout_sampling.py 2>&1 | tee "$OUT_DIR/gpu_tests.log"
  tests_rc=${PIPESTATUS[0]}
  echo "gpu_check: tests exit $tests_rc in $((SECONDS - started)) s"
fi

# Same run, padded sequences: the baseline of use_remove_padding (MOPD, whose teacher inputs are longest).
if [ -z "${SKIP_PADDED:-}" ] && [ "$REMOVE_PADDING" = true ] && [ $((DEADLINE - SECONDS)) -gt 60 ]; then
  bench "step_breakdown_${PRESET}_padded" 200 --modes mopd --override actor_rollout_ref.model.use_remove_padding=false
fi
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
