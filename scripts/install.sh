#!/usr/bin/env bash
# Create ./.venv (if missing) and install the project into it, CPU stack by default.
#   bash scripts/install.sh          # runtime
#   bash scripts/install.sh dev      # + test tools
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
extra="${1:-}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install --quiet -r requirements.txt
if [ "$extra" = "dev" ]; then
  "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
else
  "$VENV/bin/python" -m pip install --quiet -e .
fi
echo "installed into $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
