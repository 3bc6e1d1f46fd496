"""End to end: a short embedded-default MOPD run dumps its rollouts; the five analysis CLIs turn the dump
into the teacher-signal table and plots, scoring with the shipped embedded base model (on CPU).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
N_CONDITIONS = 19

pytestmark = pytest.mark.slow


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", RAY_AUTH_MODE="disabled")


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args[:2]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analysis_e2e")
    run_dir = tmp / "run"
    model = "embedded"
    _run(
        "-m",
        "trainer.main",
        "--config-name",
        "mopd",
        "trainer.backend=local",
        "trainer.total_training_steps=2",
        "data.train_batch_size=8",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.logger=[jsonl]",
        f"trainer.default_local_dir={run_dir}",
        f"trainer.rollout_data_dir={run_dir / 'rollouts'}",
        timeout=400,
    )
    data = tmp / "analysis"
    _run("analysis/prepare_rollout_dataset.py", "--input", str(run_dir / "rollouts"), "--output-dir", str(data))
    _run(
        "analysis/build_context_variants.py",
        "--candidates",
        str(data / "candidate_responses.jsonl"),
        "--evidence",
        str(data / "evidence_items.jsonl"),
        "--output",
        str(data / "context_variants.jsonl"),
    )
    _run(
        "analysis/score_teacher_contexts.py",
        "--variants",
        str(data / "context_variants.jsonl"),
        "--targets",
        str(data / "candidate_responses.jsonl"),
        "--output",
        str(data / "teacher_scores.jsonl"),
        "--model",
        model,
        "--self-target-only",
        "--batch-size",
        "32",
        "--num-threads",
        "1",
        "--max-model-len",
        "1024",
        "--max-response-length",
        "16",
    )
    _run(
        "analysis/compute_teacher_signal_metrics.py",
        "--input",
        str(data / "teacher_scores.jsonl"),
        "--output",
        str(data / "teacher_metrics.json"),
        "--table-output",
        str(data / "teacher_metrics_table.md"),
        "--num-bootstrap",
        "2000",
        "--sample-set",
        "both_present_effective_only",
    )
    # all_samples: every condition has prompts, whatever the run's success mix
    _run(
        "analysis/plot_teacher_metrics.py",
        "--input",
        str(data / "teacher_metrics.json"),
        "--output-dir",
        str(data / "plots"),
        "--sample-set",
        "all_samples",
    )
    return {"run": run_dir, "data": data}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_dump_and_dataset(pipeline):
    dumps = sorted((pipeline["run"] / "rollouts").glob("*.jsonl"))
    assert [p.name for p in dumps] == ["1.jsonl", "2.jsonl"]
    rollouts = sum(len(_jsonl(p)) for p in dumps)
    assert rollouts == 2 * 8 * 8  # 2 steps x 8 prompts x n=8
    summary = json.loads((pipeline["data"] / "dataset_summary.json").read_text())["aggregate"]
    assert summary["response_count"] == rollouts and summary["prompt_count"] == 16
    assert summary["prompt_parse_counts"] == {"chatml": rollouts}
    assert sum(summary["bucket_prompt_counts"].values()) == 16
    candidates = _jsonl(pipeline["data"] / "candidate_responses.jsonl")
    assert all(c["prompt"].startswith("What is ") and c["prompt_messages"][-1]["role"] == "user" for c in candidates)


def test_variants_and_scores(pipeline):
    variants = _jsonl(pipeline["data"] / "context_variants.jsonl")
    assert len(variants) == N_CONDITIONS * 128
    scores = _jsonl(pipeline["data"] / "teacher_scores.jsonl")
    assert len(scores) == len(variants)
    assert all(math.isfinite(r["teacher_score"]) and r["teacher_score"] <= 0 for r in scores)
    for r in scores:  # eos closes every response that stopped before data.max_response_length=16
        assert r["teacher_response_len"] >= 1
        if r["score_format"] == "raw":
            assert not r["response_appended_eos"]
        elif not r["response_appended_eos"]:
            assert r["teacher_response_len"] >= 16  # hit the limit: the trainer's response had no eos either
    assert {r["score_format"] for r in scores if r["condition"] == "base_raw"} == {"raw"}
    summary = json.loads((pipeline["data"] / "teacher_scores.summary.json").read_text())
    # the base context rendered by the analysis is byte-identical to the prompt the student was sampled from
    assert summary["base_context_equals_student_prompt"] == 1.0
    assert summary["skipped_response_too_long"] == 0
    # teacher contexts with peers are longer than the bare prompt
    mean_len = {
        c: sum(r["teacher_prompt_len"] for r in scores if r["condition"] == c) / 128
        for c in ("base", "solution+another_solution+failure_solution")
    }
    assert mean_len["solution+another_solution+failure_solution"] > mean_len["base"]


def test_metrics_and_table(pipeline):
    result = json.loads((pipeline["data"] / "teacher_metrics.json").read_text())
    assert result["num_bootstrap"] == 2000
    all_view = result["sample_sets"]["all_samples"]["conditions"]
    assert len(all_view) == N_CONDITIONS
    for name, view in result["sample_sets"].items():
        for condition, m in view["conditions"].items():
            assert m["bootstrap_resamples"] == (2000 if m["count_prompts"] else 0)
            for key in ("mean_spearman", "mean_kendall_tau", "success_point_biserial"):
                assert m[key] is None or -1 <= m[key] <= 1
            for key in ("pairwise_accuracy", "success_auc", "success_brier_minmax", "top1_hit_rate"):
                assert m[key] is None or 0 <= m[key] <= 1
                ci = m[f"{key}_ci"]
                if ci is not None:
                    assert ci[0] - 1e-9 <= m[key] <= ci[1] + 1e-9, (name, condition, key)
    md = (pipeline["data"] / "teacher_metrics_table.md").read_text()
    assert "both_present_effective_only" in md and "2000 resamples" in md
    with open(pipeline["data"] / "teacher_metrics_table.csv") as f:
        table = list(csv.DictReader(f))
    view = result["sample_sets"]["both_present_effective_only"]["conditions"]
    assert [row["condition"] for row in table] and {row["condition"] for row in table} == set(view)
    for row in table:
        assert int(row["count_prompts"]) == view[row["condition"]]["count_prompts"]
        assert float(row["success_auc"]) == pytest.approx(view[row["condition"]]["success_auc"], abs=1e-6)
    if result["both_present_prompt_count"]:
        assert f"| {table[0]['condition']} |" in md


def test_plots(pipeline):
    import matplotlib.image as mpimg

    for name in ("teacher_metrics_main.png", "teacher_metrics_by_bucket.png"):
        path = pipeline["data"] / "plots" / name
        image = mpimg.imread(path)
        assert image.shape[0] > 600 and image.shape[1] > 1000, name
        assert image[..., :3].std() > 0.05, name
