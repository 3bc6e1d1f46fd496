"""experiments/cpu_table/aggregate.py: per-prompt metrics, the seeds x prompts bootstrap, results.json."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location(
        "cpu_table_aggregate", ROOT / "experiments" / "cpu_table" / "aggregate.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


agg = _module()


def _write_dump(path: Path, scores: list[list[float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for p, samples in enumerate(scores):
        for s in samples:
            lines.append(json.dumps({"input": f"What is {p}+1?", "gts": str(p + 1), "score": s, "output": "x"}))
    path.write_text("\n".join(lines) + "\n")


def test_bootstrap_interval_matches_the_normal_approximation_over_prompts():
    rng = np.random.default_rng(1)
    values = rng.binomial(1, 0.5, size=(1, 400)).astype(float)
    low, high = agg.bootstrap_ci(values)
    half = 1.96 * values.std() / np.sqrt(values.size)  # independent reference: the CLT interval
    assert low < values.mean() < high
    assert abs((high - low) / 2 - half) < 0.2 * half, (low, high, half)


def test_bootstrap_widens_when_seeds_disagree():
    rng = np.random.default_rng(2)
    prompts = rng.uniform(0, 1, size=200)
    same = np.stack([prompts, prompts, prompts])
    spread = np.stack([prompts - 0.2, prompts, prompts + 0.2])  # same mean, seeds far apart
    w_same = np.subtract(*agg.bootstrap_ci(same)[::-1])
    w_spread = np.subtract(*agg.bootstrap_ci(spread)[::-1])
    assert w_spread > 2 * w_same
    assert agg.bootstrap_ci(np.full((3, 10), 0.25)) == (0.25, 0.25)
    with pytest.raises(ValueError):
        agg.bootstrap_ci(np.zeros(5))


def test_collect_writes_the_issue_schema(tmp_path):
    # 4 prompts x 8 samples. Base: prompt p solves p of 8 -> mean@8 = (0+1+2+3)/32, pass@8 = 3/4.
    base = [[1.0] * p + [0.0] * (8 - p) for p in range(4)]
    _write_dump(tmp_path / "base" / "validation" / "0.jsonl", base)
    for seed, extra in ((0, 1), (1, 2)):
        run = tmp_path / "runs" / "mopd" / f"seed{seed}" / "validation"
        _write_dump(run / "5.jsonl", base)
        _write_dump(run / "10.jsonl", [[1.0] * min(8, p + extra) + [0.0] * (8 - min(8, p + extra)) for p in range(4)])
    agg.main(["--output-dir", str(tmp_path), "--methods", "mopd"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["base"]["mean@8"] == pytest.approx(6 / 32) and results["base"]["pass@8"] == 0.75
    mopd = results["methods"]["mopd"]
    assert set(mopd["mean@8"]) == {"mean", "ci_low", "ci_high", "per_seed"}
    assert mopd["mean@8"]["per_seed"] == pytest.approx([10 / 32, 14 / 32])
    assert mopd["mean@8"]["mean"] == pytest.approx(12 / 32)
    assert mopd["mean@8"]["ci_low"] <= 12 / 32 <= mopd["mean@8"]["ci_high"]
    assert mopd["pass@8"]["per_seed"] == [1.0, 1.0] and mopd["final_step"] == 10 and mopd["seeds"] == 2
    assert results["curves"]["mopd"] == {"0": [6 / 32] * 2, "5": [6 / 32] * 2, "10": pytest.approx([10 / 32, 14 / 32])}
    table = (tmp_path / "table.md").read_text()
    assert "| mopd | 2 | 10 | 0.375 [" in table and "| base |" in table
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_a_missing_run_or_prompt_is_a_clear_error(tmp_path):
    _write_dump(tmp_path / "base" / "validation" / "0.jsonl", [[1.0] * 8, [0.0] * 8])
    with pytest.raises(SystemExit, match="no runs under"):
        agg.collect(tmp_path, ["grpo"])
    _write_dump(tmp_path / "runs" / "grpo" / "seed0" / "validation" / "3.jsonl", [[1.0] * 8])
    with pytest.raises(SystemExit, match="missing from a dump"):
        agg.collect(tmp_path, ["grpo"])


def test_run_script_rejects_bad_settings_before_running_anything(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    env.update(PYTHON=sys.executable, OUTPUT_DIR=str(tmp_path / "out"))
    for bad, message in (
        ({"SEEDS": "0"}, "SEEDS must be a positive integer"),
        ({"METHODS": "grpo ppo"}, "unknown method 'ppo'"),
        ({"JOBS": "x"}, "JOBS must be a positive integer"),
    ):
        proc = subprocess.run(
            ["bash", str(ROOT / "experiments" / "cpu_table" / "run.sh")],
            env={**env, **bad},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and message in proc.stderr, (bad, proc.stderr)
        assert not (tmp_path / "out").exists()
