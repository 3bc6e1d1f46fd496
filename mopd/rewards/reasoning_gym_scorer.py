"""reasoning-gym tasks, scored by the task's own scorer (data source ``reasoning_gym``).

The answer is the text of the last ``<answer>...</answer>`` (reasoning-gym's ``extract_answer``). The row's
``extra_info`` names the task and carries the generated entry, as ``mopd.dataprep`` writes them:
``reasoning_gym_dataset`` (e.g. ``"basic_arithmetic"``) and ``reasoning_gym_entry`` (the entry dict, or
its JSON string). The score is the task scorer's ``score_answer(answer, entry)`` (a float in [0, 1];
some tasks give partial credit); ``acc`` is 1 only for a full score. Without those keys the extracted
answer is compared with the ground truth as a string. Feedback only for format/truncation.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

__all__ = ["compute_score", "FORMAT_FEEDBACK"]

FORMAT_FEEDBACK = "Your answer had the wrong format. Give the final answer as <answer>your answer</answer>."
TRUNCATION_FEEDBACK = "Your response was truncated because it exceeded the maximum length."


@functools.cache
def _scorer(task: str) -> Callable[..., float]:
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(task)


def _extract_answer(text: str) -> str | None:
    from reasoning_gym.utils import extract_answer

    return extract_answer(text)


def compute_score(solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> dict:
    extra_info = extra_info or {}
    solution_str = "" if solution_str is None else str(solution_str)
    truncated = bool(extra_info.get("truncated", False))
    answer = _extract_answer(solution_str)

    task = extra_info.get("reasoning_gym_dataset")
    entry = extra_info.get("reasoning_gym_entry")
    if isinstance(entry, str):
        entry = json.loads(entry)
    if answer is None:
        score = 0.0
    elif task and isinstance(entry, dict):
        score = float(_scorer(str(task))(answer=answer, entry=entry) or 0.0)
    else:
        score = 1.0 if answer.strip() == str(ground_truth).strip() else 0.0

    feedback = TRUNCATION_FEEDBACK if truncated else (FORMAT_FEEDBACK if answer is None else "")
    return {
        "score": score,
        "acc": 1.0 if score >= 1.0 else 0.0,
        "pred": (answer or "")[:500],
        "incorrect_format": 1 if answer is None else 0,
        "truncated": 1 if truncated else 0,
        "feedback": feedback,
    }
