"""Smoke test of benchmarks/packed_attention.py: both packed variants give the padded forward's hidden
states, and all three are timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_packed_attention_benchmark_writes_agreeing_figures(tmp_path):
    out = tmp_path / "packed.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.packed_attention", "--repeats", "2", "--threads", "1", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"teacher_16x150-220", "student_128x28-40"}
    for figures in data["results"].values():
        assert set(figures["seconds"]) == {"padded", "packed_with_mask", "packed_per_sequence"}
        assert all(s > 0 for s in figures["seconds"].values())
        assert all(gap < 1e-4 for gap in figures["max_abs_gap_to_padded"].values()), figures
        assert figures["valid_tokens"] < figures["padded_tokens"]
