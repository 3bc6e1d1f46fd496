"""prepare_rollout_dataset: prompt recovery, stable ids across steps, buckets, stratified sampling."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mopd.analysis import dataset as D

ROOT = Path(__file__).resolve().parents[2]


def chatml(user: str, system: str | None = None, thinking_off: bool = False) -> str:
    text = f"<|im_start|>system\n{system}<|im_end|>\n" if system is not None else ""
    text += f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    return text + ("<think>\n\n</think>\n\n" if thinking_off else "")


def dump_row(question: str, output: str, score: float, step: int, **extra) -> dict:
    return {
        "input": chatml(question, extra.pop("system", None)),
        "output": output,
        "gts": "x",
        "score": score,
        "step": step,
        "uid": question,
        "data_source": "t",
        "acc": score,
        "pred": output,
        "feedback": "" if score >= 1 else f"Your answer {output} is wrong.",
        **extra,
    }


def write_dump(directory: Path, rows_by_step: dict[int, list[dict]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for step, rows in rows_by_step.items():
        (directory / f"{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def test_parse_chatml_keeps_system_and_last_user_message():
    text = chatml("What is 2+2?\nAnswer briefly.", system="You are terse.")
    parsed = D.parse_chat_prompt(text)
    assert parsed.parse == "chatml"
    assert parsed.messages == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?\nAnswer briefly."},
    ]
    assert parsed.prompt_text == "What is 2+2?\nAnswer briefly." and parsed.system_text == "You are terse."
    assert parsed.chat_template_kwargs == {}
    assert D.parse_chat_prompt(chatml("q", thinking_off=True)).chat_template_kwargs == {"enable_thinking": False}


def test_parse_multi_turn_and_non_chatml():
    text = (
        "<|im_start|>user\nfirst<|im_end|>\n<|im_start|>assistant\nreply<|im_end|>\n"
        "<|im_start|>user\nsecond<|im_end|>\n<|im_start|>assistant\n"
    )
    parsed = D.parse_chat_prompt(text)
    assert [m["role"] for m in parsed.messages] == ["user", "assistant", "user"]
    assert parsed.prompt_text == "second"
    raw = D.parse_chat_prompt("[INST] plain prompt [/INST]")
    assert raw.parse == "raw" and raw.messages == [{"role": "user", "content": "[INST] plain prompt [/INST]"}]


def test_explicit_prompt_messages_field_wins():
    record = {
        "input": "ignored",
        "prompt_messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
    }
    parsed = D.recover_prompt(record)
    assert parsed.parse == "messages" and parsed.prompt_text == "q"


def test_prompt_ids_are_stable_across_steps_and_groups_merge(tmp_path):
    dump = write_dump(
        tmp_path / "rollouts",
        {
            2: [dump_row("A?", "1", 1.0, 2), dump_row("B?", "9", 0.0, 2)],
            1: [dump_row("A?", "2", 0.0, 1), dump_row("A?", "1", 1.0, 1), dump_row("B?", "3", 1.0, 1)],
            10: [dump_row("A?", "5", 0.0, 10)],
        },
    )
    groups = D.read_rollout_groups(D.resolve_input_paths(dump), success_threshold=1.0)
    pid_a = D.stable_prompt_id(chatml("A?"))
    assert set(groups) == {pid_a, D.stable_prompt_id(chatml("B?"))}
    a = groups[pid_a]
    # merged in step order 1, 2, 10 (numeric, not "10" < "2"), file order inside a step
    assert [(r["rollout_step"], r["response_text"]) for r in a] == [(1, "2"), (1, "1"), (2, "1"), (10, "5")]
    assert [r["response_id"] for r in a] == [f"{pid_a}_r{k}" for k in range(4)]
    assert a[0]["prompt"] == "A?" and a[0]["prompt_messages"] == [{"role": "user", "content": "A?"}]
    assert a[0]["feedback_text"] == "Your answer 2 is wrong." and a[0]["has_feedback"]
    assert not a[1]["has_feedback"]


def test_buckets_follow_successes_in_the_kept_group():
    assert [D.difficulty_bucket(s) for s in (0, 1, 3, 4, 8)] == ["hard", "medium", "medium", "easy", "easy"]


def _groups(spec: dict[str, tuple[int, int]]) -> dict[str, list[dict]]:
    """prompt -> (successes, failures)"""
    out = {}
    for pid, (s, f) in spec.items():
        out[pid] = [
            {
                "prompt_id": pid,
                "response_id": f"{pid}_r{k}",
                "response_index": k,
                "success": k < s,
                "reward": 1.0 if k < s else 0.0,
            }
            for k in range(s + f)
        ]
    return out


def test_select_groups_caps_filters_and_buckets():
    groups = _groups({"a": (6, 6), "b": (1, 0), "c": (0, 3), "d": (2, 2)})
    kept = D.select_groups(groups, max_prompts=None, max_responses_per_prompt=8, min_responses_per_prompt=2, seed=0)
    assert [pid for pid, _, _ in kept] == ["a", "c", "d"]  # b has one rollout
    a_rows = kept[0][1]
    assert len(a_rows) == 8 and [r["response_index"] for r in a_rows] == sorted(r["response_index"] for r in a_rows)
    assert kept[0][2] == D.difficulty_bucket(sum(r["success"] for r in a_rows))
    assert kept[1][2] == "hard" and kept[2][2] == "medium"
    again = D.select_groups(groups, max_prompts=None, max_responses_per_prompt=8, min_responses_per_prompt=2, seed=0)
    assert [r["response_id"] for r in again[0][1]] == [r["response_id"] for r in a_rows]
    other = D.select_groups(groups, max_prompts=None, max_responses_per_prompt=8, min_responses_per_prompt=2, seed=1)
    assert [r["response_id"] for r in other[0][1]] != [r["response_id"] for r in a_rows]
    with pytest.raises(ValueError):
        D.select_groups(groups, max_prompts=None, max_responses_per_prompt=2, min_responses_per_prompt=3, seed=0)


def test_max_prompts_is_stratified_and_redistributes():
    spec = {f"e{i}": (5, 3) for i in range(10)}
    spec.update({f"m{i}": (2, 6) for i in range(10)})
    spec.update({f"h{i}": (0, 8) for i in range(2)})
    kept = D.select_groups(_groups(spec), max_prompts=9, max_responses_per_prompt=8, min_responses_per_prompt=2, seed=7)
    counts = Counter(bucket for _, _, bucket in kept)
    assert counts == {"easy": 4, "medium": 3, "hard": 2} or counts == {"easy": 3, "medium": 4, "hard": 2}
    assert len(kept) == 9
    again = D.select_groups(
        _groups(spec), max_prompts=9, max_responses_per_prompt=8, min_responses_per_prompt=2, seed=7
    )
    assert [g[0] for g in kept] == [g[0] for g in again]
    assert D._stratified_quota({"easy": 10, "medium": 10, "hard": 10}, 10) == {"easy": 4, "medium": 3, "hard": 3}


def test_cli_writes_the_three_files(tmp_path):
    rows = {
        1: [dump_row("Q1?", str(k), 1.0 if k % 2 else 0.0, 1, system="sys") for k in range(8)]
        + [dump_row("Q2?", "7", 1.0, 1) for _ in range(8)],
        2: [dump_row("Q3?", "0", 0.0, 2) for _ in range(3)] + [dump_row("Q4?", "x", 0.0, 2)],
    }
    dump = write_dump(tmp_path / "dump", rows)
    out = tmp_path / "data"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "analysis" / "prepare_rollout_dataset.py"),
            "--input",
            str(dump),
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    candidates = [json.loads(line) for line in (out / "candidate_responses.jsonl").read_text().splitlines()]
    evidence = [json.loads(line) for line in (out / "evidence_items.jsonl").read_text().splitlines()]
    summary = json.loads((out / "dataset_summary.json").read_text())
    assert len(candidates) == 19  # Q4 has one rollout
    assert summary["aggregate"]["bucket_prompt_counts"] == {"easy": 2, "medium": 0, "hard": 1}
    assert summary["aggregate"]["both_present_prompt_count"] == 1
    q1 = [c for c in candidates if c["prompt"] == "Q1?"]
    assert q1[0]["system_prompt"] == "sys" and q1[0]["prompt_messages"][0] == {"role": "system", "content": "sys"}
    assert q1[0]["prompt_success_count"] == 4 and q1[0]["difficulty_bucket"] == "easy"
    assert q1[0]["summary_text_effective"] == "0" and q1[0]["summary_is_fallback"]
    kinds = Counter(e["evidence_type"] for e in evidence)
    assert kinds == {
        "response_full": 19,
        "summary": 19,
        "environment_feedback": sum(c["has_feedback"] for c in candidates),
    }
    assert {e["evidence_id"].split("::")[0] for e in evidence} == {c["response_id"] for c in candidates}
    missing = subprocess.run(
        [
            sys.executable,
            str(ROOT / "analysis" / "prepare_rollout_dataset.py"),
            "--input",
            str(tmp_path / "nothing"),
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "no rollout dump" in missing.stderr
