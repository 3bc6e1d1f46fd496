"""Smoke test of benchmarks/rollout_prefill.py: on real prompts of the embedded default, the shared
prefill samples what the plain one samples, and both are timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_rollout_prefill_benchmark_writes_agreeing_figures(tmp_path):
    out = tmp_path / "prefill.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.rollout_prefill",
            "--prompts",
            "4",
            "--n",
            "4",
            "--new-tokens",
            "6",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["same_samples"] is True and data["prompt_tokens"] > 4
    assert set(data["median_ms"]) == {"shared_1_tokens", "plain_1_tokens", "shared_6_tokens", "plain_6_tokens"}
    assert all(ms > 0 for ms in data["median_ms"].values())
