#!/usr/bin/env bash
# The pure-Python wheels scripts/gpu_check.sh installs on a GPU machine that has torch and transformers but
# no Hydra (and no network): hydra-core, omegaconf and antlr4-python3-runtime (the last ships only an sdist,
# so it is built into a wheel here). Run it where pip can reach the package index; it fills ./.whl (about
# 380 KB), which travels with the working tree to the GPU machine.
#   bash scripts/make_gpu_wheels.sh            # then: bash scripts/gpu_check.sh on the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
OUT="${WHEEL_DIR:-.whl}"
mkdir -p "$OUT"
# Versions the project runs with (requirements.txt); pure Python, so any CPython 3 takes them.
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$OUT" hydra-core==1.3.2 omegaconf==2.3.0
"$PY" -m pip wheel -q --no-deps -w "$OUT" antlr4-python3-runtime==4.9.3
for name in hydra_core omegaconf antlr4_python3_runtime; do
  ls "$OUT"/${name}-*.whl >/dev/null 2>&1 || { echo "make_gpu_wheels: no $name wheel in $OUT" >&2; exit 1; }
done
ls -l "$OUT"
