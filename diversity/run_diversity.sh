#!/usr/bin/env bash
# Solution-diversity pipeline: compute_metrics.py -> plot_metrics.py (docs/diversity.md).
#
#   SDPO_CANDIDATES=... MOPD_CANDIDATES=... BASE_CANDIDATES=... bash diversity/run_diversity.sh
#
# Each *_CANDIDATES is a candidate_responses.jsonl (analysis/prepare_rollout_dataset.py), a directory
# holding one, a rollout dump <step>.jsonl or a trainer rollout_data_dir; give any subset (at least one).
# OUTPUT_DIR (default diversity_outputs), TASK (code|text, default code), KS (default "1 2 4 8"),
# MAX_PROMPTS (default 300), MAX_RESPONSES (default 8), INTERSECT (1 = --intersect-prompts, default 1),
# SEED (default 42). Extra arguments go to compute_metrics.py.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="${PYTHON:-python}"; fi

OUTPUT_DIR="${OUTPUT_DIR:-diversity_outputs}"
TASK="${TASK:-code}"
KS="${KS:-1 2 4 8}"
MAX_PROMPTS="${MAX_PROMPTS:-300}"
MAX_RESPONSES="${MAX_RESPONSES:-8}"
INTERSECT="${INTERSECT:-1}"
SEED="${SEED:-42}"

RUNS=()
[[ -n "${SDPO_CANDIDATES:-}" ]] && RUNS+=(--run "SDPO=${SDPO_CANDIDATES}")
[[ -n "${MOPD_CANDIDATES:-}" ]] && RUNS+=(--run "MOPD=${MOPD_CANDIDATES}")
[[ -n "${BASE_CANDIDATES:-}" ]] && RUNS+=(--run "base=${BASE_CANDIDATES}")
if [[ ${#RUNS[@]} -eq 0 ]]; then
  echo "run_diversity.sh: error: set at least one of SDPO_CANDIDATES, MOPD_CANDIDATES, BASE_CANDIDATES" >&2
  exit 2
fi

EXTRA=()
[[ "$INTERSECT" == "1" ]] && EXTRA+=(--intersect-prompts)
# shellcheck disable=SC2206
KS_ARR=($KS)

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
set -x
"$PY" "$ROOT/diversity/compute_metrics.py" "${RUNS[@]}" --task "$TASK" --ks "${KS_ARR[@]}" \
  --max-prompts "$MAX_PROMPTS" --max-responses-per-prompt "$MAX_RESPONSES" --seed "$SEED" \
  --output-dir "$OUTPUT_DIR" "${EXTRA[@]}" "$@"
"$PY" "$ROOT/diversity/plot_metrics.py" --input "$OUTPUT_DIR" --output-dir "$OUTPUT_DIR"
