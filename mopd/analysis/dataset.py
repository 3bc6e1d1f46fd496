"""Rollout dumps -> the fixed offline dataset of the teacher-signal study.

Input: the trainer's rollout dumps (``trainer.rollout_data_dir``: ``<step>.jsonl``, one line per rollout
with ``input`` = the chat-templated prompt, ``output``, ``score``, ``step``, ``uid``, ``gts`` and the
verifier's extra keys ``feedback``/``acc``/``pred``...). Output (see :func:`prepare_dataset`):

- ``candidate_responses.jsonl``: one row per kept rollout, with ``prompt_id`` = sha1(prompt text)[:16]
  (the same prompt gets the same id in every step, so its rollouts from all steps form one group),
  ``response_id`` = ``{prompt_id}_r{k}`` (k = position of the rollout in its merged group: step order, then
  file order), the prompt as chat messages (``prompt_messages``: system/earlier messages verbatim + the
  last user message, recovered from the ChatML ``input``), reward/success, summary and feedback texts,
  and the group's difficulty bucket.
- ``evidence_items.jsonl``: ``{response_id}::response_full`` / ``::summary`` / ``::feedback`` texts.
- ``dataset_summary.json``: counts per bucket and the settings used.

Difficulty bucket, from the number of successes ``s`` in the *kept* group (after the per-prompt cap):
``s >= 4`` easy, ``1 <= s <= 3`` medium, ``s == 0`` hard (the release's thresholds, made for groups of 8).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mopd.core.peers import extract_summary, strip_thinking

CHATML_MESSAGE = re.compile(r"<\|im_start\|>([^\n]*)\n(.*?)<\|im_end\|>", re.DOTALL)
CHATML_GENERATION = "<|im_start|>assistant\n"
EMPTY_THINK = "<think>\n\n</think>\n\n"
BUCKETS = ("easy", "medium", "hard")
EASY_MIN_SUCCESSES = 4
SUMMARY_FALLBACK_CHARS = 300


# ----------------------------------------------------------------------------------------------------
# Prompt recovery
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParsedPrompt:
    messages: list[dict]  # earlier messages verbatim, the question last
    chat_template_kwargs: dict  # what the generation prompt shows was used (enable_thinking=False)
    parse: str  # "messages" (a field of the dump) | "chatml" | "raw" (not ChatML: whole input as the question)

    @property
    def prompt_text(self) -> str:
        return self.messages[-1]["content"]

    @property
    def system_text(self) -> str | None:
        systems = [m["content"] for m in self.messages if m.get("role") == "system"]
        return "\n".join(systems) if systems else None


def parse_chat_prompt(text: str) -> ParsedPrompt:
    """The chat messages of a ChatML-rendered prompt (``<|im_start|>role\\ncontent<|im_end|>`` blocks).

    The generation prompt (``<|im_start|>assistant\\n``, optionally followed by the empty think block a
    Qwen3 template writes for ``enable_thinking=false``) is not a message. A prompt that is not ChatML is
    kept whole as one user message (``parse="raw"``)."""
    messages = [{"role": role.strip(), "content": content} for role, content in CHATML_MESSAGE.findall(text)]
    if not messages or not any(m["role"] == "user" for m in messages):
        return ParsedPrompt([{"role": "user", "content": text}], {}, "raw")
    # Drop anything after the last user message that is not a complete turn (the generation prompt).
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages = messages[: last_user + 1]
    kwargs: dict = {}
    tail_at = text.rfind(CHATML_GENERATION)
    if tail_at >= 0 and text[tail_at + len(CHATML_GENERATION) :].startswith(EMPTY_THINK.rstrip()):
        kwargs["enable_thinking"] = False
    return ParsedPrompt(messages, kwargs, "chatml")


def recover_prompt(record: dict) -> ParsedPrompt:
    """Prompt messages of one dump row: a ``prompt_messages``/``raw_prompt`` list when the dump has one,
    else parsed out of the ChatML ``input``."""
    for key in ("prompt_messages", "raw_prompt"):
        value = record.get(key)
        if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
            messages = [{"role": str(m.get("role", "user")), "content": str(m["content"])} for m in value]
            kwargs = dict(record.get("chat_template_kwargs") or {})
            return ParsedPrompt(messages, kwargs, "messages")
    return parse_chat_prompt(_as_text(record.get("input", "")))


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def stable_prompt_id(prompt_text: str) -> str:
    return hashlib.sha1(prompt_text.encode("utf-8")).hexdigest()[:16]


def difficulty_bucket(success_count: int) -> str:
    if success_count >= EASY_MIN_SUCCESSES:
        return "easy"
    if success_count >= 1:
        return "medium"
    return "hard"


# ----------------------------------------------------------------------------------------------------
# Reading dumps
# ----------------------------------------------------------------------------------------------------
def _step_key(path: Path):
    return (0, int(path.stem), str(path)) if path.stem.isdigit() else (1, 0, str(path))


def resolve_input_paths(spec: str | Path) -> list[Path]:
    """A dump file, a directory of ``<step>.jsonl`` (searched recursively; numeric step order), or a glob."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted((p for p in path.rglob("*.jsonl") if p.is_file()), key=_step_key)
    import glob

    return sorted((Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file()), key=_step_key)


def _step_of(record: dict, path: Path) -> int | None:
    step = record.get("step")
    if isinstance(step, (int, float)):
        return int(step)
    return int(path.stem) if path.stem.isdigit() else None


def read_rollout_groups(
    paths: Sequence[Path], success_threshold: float, summary_tag: str = "summary"
) -> dict[str, list[dict]]:
    """All rollouts of all dumps, grouped by prompt id, in (step, file, line) order."""
    records = []
    for file_no, path in enumerate(paths):
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{line_no}: not a JSON object ({err.msg})") from None
                step = _step_of(record, path)
                records.append(((step if step is not None else -1, file_no, line_no), path, line_no, record))
    records.sort(key=lambda item: item[0])

    groups: dict[str, list[dict]] = defaultdict(list)
    for _, path, line_no, record in records:
        parsed = recover_prompt(record)
        prompt_id = stable_prompt_id(
            _as_text(record.get("input"))
            if parsed.parse != "messages"
            else json.dumps(parsed.messages, ensure_ascii=False, sort_keys=True)
        )
        output = _as_text(record.get("output", ""))
        reward = float(record.get("score") or 0.0)
        tagged = extract_summary(output, summary_tag)
        feedback = _as_text(record.get("feedback")).strip()
        k = len(groups[prompt_id])
        groups[prompt_id].append(
            {
                "prompt_id": prompt_id,
                "response_id": f"{prompt_id}_r{k}",
                "response_index": k,
                "uid": prompt_id,
                "train_uid": record.get("uid"),
                "prompt": parsed.prompt_text,
                "system_prompt": parsed.system_text,
                "prompt_messages": parsed.messages,
                "chat_template_kwargs": parsed.chat_template_kwargs,
                "prompt_parse": parsed.parse,
                "student_input_text": _as_text(record.get("input")),
                "response_text": output,
                "response_truncated": bool(record["truncated"]) if "truncated" in record else None,
                "reward": reward,
                "success": reward >= success_threshold,
                "success_threshold": success_threshold,
                "summary_text": tagged,
                "summary_text_effective": tagged
                if tagged is not None
                else strip_thinking(output)[:SUMMARY_FALLBACK_CHARS],
                "summary_has_tag": tagged is not None,
                "summary_is_fallback": tagged is None,
                "feedback_text": feedback,
                "has_feedback": bool(feedback),
                "ground_truth": record.get("gts"),
                "pred": record.get("pred"),
                "acc": record.get("acc"),
                "incorrect_format": record.get("incorrect_format"),
                "data_source": record.get("data_source"),
                "training_teacher_input": record.get("teacher_input"),
                "training_distillation_mask": record.get("distillation_mask"),
                "source_file": str(path),
                "source_line": line_no,
                "rollout_step": _step_of(record, path),
            }
        )
    return dict(groups)


# ----------------------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------------------
def _group_rng(seed: int, prompt_id: str) -> random.Random:
    return random.Random(int(hashlib.sha1(f"{seed}|{prompt_id}".encode()).hexdigest(), 16) % (2**32))


def select_groups(
    groups: dict[str, list[dict]],
    *,
    max_prompts: int | None,
    max_responses_per_prompt: int,
    min_responses_per_prompt: int,
    seed: int,
) -> list[tuple[str, list[dict], str]]:
    """Keep prompts with enough rollouts, cap each group, bucket it, then stratify ``max_prompts``.

    A group larger than the cap keeps a seeded random subset (per-prompt generator from ``seed`` and the
    prompt id, so one prompt's draw does not depend on the others), in rollout order. ``max_prompts`` is
    split evenly over the non-empty buckets (remainder to the buckets in easy/medium/hard order); a bucket
    with fewer prompts than its share gives the rest to the others. Prompts are drawn per bucket with
    ``random.Random(seed)`` and returned in prompt-id order."""
    if max_responses_per_prompt < 1 or min_responses_per_prompt < 1:
        raise ValueError("--max-responses-per-prompt and --min-responses-per-prompt must be >= 1")
    if min_responses_per_prompt > max_responses_per_prompt:
        raise ValueError(
            f"--min-responses-per-prompt ({min_responses_per_prompt}) is larger than "
            f"--max-responses-per-prompt ({max_responses_per_prompt})"
        )
    kept = []
    for prompt_id in sorted(groups):
        rows = groups[prompt_id]
        if len(rows) < min_responses_per_prompt:
            continue
        if len(rows) > max_responses_per_prompt:
            rows = sorted(
                _group_rng(seed, prompt_id).sample(rows, max_responses_per_prompt), key=lambda r: r["response_index"]
            )
        successes = sum(1 for r in rows if r["success"])
        kept.append((prompt_id, [dict(r) for r in rows], difficulty_bucket(successes)))
    if max_prompts is not None and max_prompts < len(kept):
        if max_prompts < 0:
            raise ValueError("--max-prompts must be >= 0")
        rng = random.Random(seed)
        by_bucket = {b: [g for g in kept if g[2] == b] for b in BUCKETS}
        for bucket in BUCKETS:
            rng.shuffle(by_bucket[bucket])
        quota = _stratified_quota({b: len(v) for b, v in by_bucket.items()}, max_prompts)
        kept = sorted((g for b in BUCKETS for g in by_bucket[b][: quota[b]]), key=lambda g: g[0])
    return kept


def _stratified_quota(available: dict[str, int], total: int) -> dict[str, int]:
    quota = {b: 0 for b in available}
    left = min(total, sum(available.values()))
    while left > 0:
        open_buckets = [b for b in BUCKETS if b in available and quota[b] < available[b]]
        share, extra = divmod(left, len(open_buckets))
        for i, b in enumerate(open_buckets):
            add = min(share + (1 if i < extra else 0), available[b] - quota[b])
            quota[b] += add
            left -= add
    return quota


# ----------------------------------------------------------------------------------------------------
# Output rows
# ----------------------------------------------------------------------------------------------------
def candidate_rows(kept: list[tuple[str, list[dict], str]]) -> list[dict]:
    out = []
    for _, rows, bucket in kept:
        size = len(rows)
        successes = sum(1 for r in rows if r["success"])
        for row in rows:
            out.append(
                {
                    **row,
                    "difficulty_bucket": bucket,
                    "prompt_group_size": size,
                    "prompt_success_count": successes,
                    "prompt_failure_count": size - successes,
                    "prompt_has_primary_success": successes >= 1,
                    "prompt_has_another_success": successes >= 2,
                    "prompt_has_failure_peer": size - successes >= 1,
                    # the same for this candidate's peers (itself excluded), which is what its contexts can show
                    "has_success_peer": successes - int(row["success"]) >= 1,
                    "has_another_success_peer": successes - int(row["success"]) >= 2,
                    "has_failure_peer": (size - successes) - int(not row["success"]) >= 1,
                }
            )
    return out


def evidence_rows(candidates: list[dict]) -> list[dict]:
    out = []
    for row in candidates:
        common = {
            "prompt_id": row["prompt_id"],
            "uid": row["uid"],
            "source_response_id": row["response_id"],
            "role": "success" if row["success"] else "failure",
            "reward": row["reward"],
            "success": row["success"],
            "difficulty_bucket": row.get("difficulty_bucket", "unknown"),
            "source_file": row.get("source_file"),
            "source_line": row.get("source_line"),
            "rollout_step": row.get("rollout_step"),
        }
        out.append(
            {
                "evidence_id": f"{row['response_id']}::response_full",
                "evidence_type": "response_full",
                "text": row["response_text"],
                "has_summary_tag": row["summary_has_tag"],
                "is_fallback_summary": False,
                **common,
            }
        )
        out.append(
            {
                "evidence_id": f"{row['response_id']}::summary",
                "evidence_type": "summary",
                "text": row["summary_text_effective"],
                "has_summary_tag": row["summary_has_tag"],
                "is_fallback_summary": row["summary_is_fallback"],
                **common,
            }
        )
        if row["has_feedback"]:
            out.append(
                {
                    "evidence_id": f"{row['response_id']}::feedback",
                    "evidence_type": "environment_feedback",
                    "text": row["feedback_text"],
                    "has_summary_tag": False,
                    "is_fallback_summary": False,
                    **common,
                }
            )
    return out


def dataset_summary(
    kept: list[tuple[str, list[dict], str]],
    candidates: list[dict],
    evidence: list[dict],
    total_groups: int,
    settings: dict,
) -> dict:
    n_prompts = len(kept)
    parses = Counter(r["prompt_parse"] for r in candidates)
    return {
        **settings,
        "bucket_rule": {
            "easy": f">= {EASY_MIN_SUCCESSES} successes in the kept group",
            "medium": f"1..{EASY_MIN_SUCCESSES - 1} successes",
            "hard": "0 successes",
        },
        "aggregate": {
            "prompts_in_dumps": total_groups,
            "prompt_count": n_prompts,
            "response_count": len(candidates),
            "bucket_prompt_counts": {b: sum(1 for g in kept if g[2] == b) for b in BUCKETS},
            "both_present_prompt_count": sum(
                1 for _, rows, _ in kept if any(r["success"] for r in rows) and not all(r["success"] for r in rows)
            ),
            "mean_responses_per_prompt": len(candidates) / n_prompts if n_prompts else 0.0,
            "mean_successes_per_prompt": (
                sum(sum(r["success"] for r in rows) for _, rows, _ in kept) / n_prompts if n_prompts else 0.0
            ),
            "success_rate": sum(r["success"] for r in candidates) / len(candidates) if candidates else 0.0,
            "summary_tag_rate": sum(r["summary_has_tag"] for r in candidates) / len(candidates) if candidates else 0.0,
            "feedback_rate": sum(r["has_feedback"] for r in candidates) / len(candidates) if candidates else 0.0,
            "prompt_parse_counts": dict(parses),
            "steps": sorted({r["rollout_step"] for r in candidates if r["rollout_step"] is not None}),
            "candidate_count": len(candidates),
            "evidence_count": len(evidence),
            "evidence_type_counts": dict(Counter(e["evidence_type"] for e in evidence)),
        },
    }


def prepare_dataset(
    input_spec: str | Path,
    output_dir: str | Path,
    *,
    max_prompts: int | None = None,
    max_responses_per_prompt: int = 8,
    min_responses_per_prompt: int = 2,
    success_threshold: float = 1.0,
    seed: int = 42,
    summary_tag: str = "summary",
) -> dict:
    """Write the three dataset files to ``output_dir``; returns the summary."""
    from mopd.common.io import write_json, write_jsonl

    paths = resolve_input_paths(input_spec)
    if not paths:
        raise FileNotFoundError(f"no rollout dump (*.jsonl) found at {input_spec}")
    groups = read_rollout_groups(paths, success_threshold, summary_tag)
    kept = select_groups(
        groups,
        max_prompts=max_prompts,
        max_responses_per_prompt=max_responses_per_prompt,
        min_responses_per_prompt=min_responses_per_prompt,
        seed=seed,
    )
    candidates = candidate_rows(kept)
    evidence = evidence_rows(candidates)
    settings = {
        "input_paths": [str(p) for p in paths],
        "success_threshold": success_threshold,
        "max_prompts": max_prompts,
        "max_responses_per_prompt": max_responses_per_prompt,
        "min_responses_per_prompt": min_responses_per_prompt,
        "seed": seed,
        "summary_tag": summary_tag,
    }
    summary = dataset_summary(kept, candidates, evidence, len(groups), settings)
    out = Path(output_dir)
    write_jsonl(out / "candidate_responses.jsonl", candidates)
    write_jsonl(out / "evidence_items.jsonl", evidence)
    write_json(out / "dataset_summary.json", summary)
    return summary
