"""Smoke test of benchmarks/step_breakdown.py on the CPU: the real trainer, the 151,936-entry synthetic
vocabulary, both modes, every figure in the table and the JSON (a small workload to stay quick)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIGURES = (
    "step_s",
    "gen_s",
    "update_s",
    "rollout_tokens_per_s",
    "rollout_bandwidth_fraction",
    "train_mfu",
    "peak_memory_gb",
)


def test_tiny_preset_on_cpu_prints_and_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.step_breakdown",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--steps",
            "1",
            "--prompts",
            "2",
            "--n",
            "4",
            "--response-length",
            "8",
            "--micro-batch",
            "4",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for line in (
        "timing_s/gen",
        "timing_s/update_actor",
        "rollout fraction of bandwidth limit",
        "train MFU",
        "peak memory GB",
        "mopd/grpo",
    ):
        assert line in result.stdout
    data = json.loads(out.read_text())
    assert set(data) == {"mopd", "grpo", "meta"}
    for mode in ("mopd", "grpo"):
        for key in FIGURES:
            assert math.isfinite(data[mode][key]) and data[mode][key] > 0, (mode, key, data[mode][key])
    assert data["mopd"]["teacher_tokens"] > data["mopd"]["response_tokens"]  # peer contexts formed
    # MFU counts the tokens the forwards ran (shared prefixes once): never more than the plain count.
    for mode in ("mopd", "grpo"):
        assert 0 < data[mode]["student_tokens_run"] <= data[mode]["student_tokens"]
        assert data[mode]["train_mfu"] <= data[mode]["train_plain_equivalent_mfu"]
    assert 0 < data["mopd"]["teacher_tokens_run"] <= data["mopd"]["teacher_tokens"]
    assert data["grpo"]["teacher_tokens"] == 0
    assert data["meta"]["params"] > 151_936 * 128  # the real vocabulary's embedding alone


def test_synthetic_tokenizer_has_the_real_vocabulary_and_round_trips(tmp_path):
    from benchmarks.step_breakdown import VOCAB_SIZE, synthetic_alphabet, write_tokenizer

    tok = write_tokenizer(tmp_path)
    assert len(tok) == VOCAB_SIZE
    text = "".join(synthetic_alphabet(VOCAB_SIZE - 4)[i] for i in (0, 5000, 100000, 150000))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 4 and tok.decode(ids) == text
