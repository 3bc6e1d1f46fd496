"""benchmarks/plan_vs_measured.py (run by scripts/gpu_check.sh after the benchmark): rebuilds the benchmark's
config from its JSON and compares the plan with each mode's measured peak; here against the H200 run
recorded in docs/performance.md (0.6b preset, 64 x 1,024 tokens: 22.6 / 20.2 GB)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import plan_vs_measured

QWEN3_06B = {
    "model_type": "qwen3",
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 3072,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
}


def _bench_dir(tmp_path: Path, mopd: float, grpo: float) -> Path:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps(QWEN3_06B))  # what the benchmark's workdir holds
    (tmp_path / "prepared.json").write_text(json.dumps({"model": str(model), "params": 596049920}))
    command = (
        "step_breakdown.py --preset 0.6b --device cuda --response-length 1024 --steps 2 --gradient-checkpointing on"
    )
    out = tmp_path / "bench.json"
    out.write_text(
        json.dumps({"mopd": {"peak_memory_gb": mopd}, "grpo": {"peak_memory_gb": grpo}, "meta": {"command": command}})
    )
    return out


def test_the_h200_run_is_within_tolerance(tmp_path, capsys):
    out = _bench_dir(tmp_path, 22.6, 20.2)
    assert plan_vs_measured.main(["--json", str(out), "--workdir", str(tmp_path), "--device-memory-gb", "141"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.endswith("ok") for line in lines)


def test_a_peak_far_from_the_plan_fails(tmp_path, capsys):
    out = _bench_dir(tmp_path, 60.0, 20.2)
    assert plan_vs_measured.main(["--json", str(out), "--workdir", str(tmp_path), "--device-memory-gb", "141"]) == 1
    assert "OUTSIDE" in capsys.readouterr().out
