"""Smoke test of benchmarks/teacher_forward.py: a real MOPD mini-batch of the embedded default, the plain
and the shared-prefix teacher forwards agree, and the shared one runs fewer tokens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_teacher_forward_benchmark_writes_agreeing_figures(tmp_path):
    out = tmp_path / "teacher.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.teacher_forward",
            "--steps",
            "2",
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
    assert "shared/plain" in result.stdout
    data = json.loads(out.read_text())
    assert data["rows"] == 128 and data["max_abs_difference"] < 1e-4
    assert 0 < data["shared_tokens"] < data["teacher_tokens"] and data["tree_nodes"] > 0
    assert all(ms > 0 for ms in data["median_ms"].values())
    assert 0 < data["student_shared_tokens"] < data["student_tokens"]
    assert data["student_grad_max_abs_difference"] < 1e-3
