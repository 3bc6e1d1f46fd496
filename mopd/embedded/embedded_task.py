"""The embedded default task: two-digit addition with an exact verifier (pure Python).

A problem is "What is a+b?" with ``a, b`` in 10..99 and the answer ``str(a + b)``. The problem space
(8,100 ordered pairs) is split once and for all by a hash of the *unordered* pair, so a held-out problem
never appears in the train split, not even with its operands swapped. ``make_problems`` draws from one
split deterministically (the same ``split, n, seed`` always give the same list, independent of the
global RNG and of ``PYTHONHASHSEED``).

``compute_score`` is the verifier (the answer must be one integer; surrounding whitespace and a trailing
``<|im_end|>`` are ignored) and ``to_verl_row`` turns a problem into a row of the verl parquet schema.
``scripts/make_embedded_default.py`` builds ``datasets/embedded`` (data + tiny base model) from this.
"""

from __future__ import annotations

import hashlib
import random
import re

DATA_SOURCE = "embedded_arith"
SPLITS = ("train", "test")
OPERAND_MIN, OPERAND_MAX = 10, 99
TEST_FRACTION_PER_MILLE = 100  # ~10% of the unordered pairs are held out
EOS_TEXT = "<|im_end|>"
_INTEGER = re.compile(r"[+-]?\d+")

__all__ = [
    "DATA_SOURCE",
    "SPLITS",
    "split_of",
    "problem_space",
    "make_problem",
    "make_problems",
    "compute_score",
    "to_verl_row",
    "prompt_messages",
]


def split_of(a: int, b: int) -> str:
    """The split of ``a+b`` (and of ``b+a``): a fixed hash of the unordered pair."""
    lo, hi = min(a, b), max(a, b)
    digest = hashlib.sha256(f"{DATA_SOURCE}:{lo}+{hi}".encode()).digest()
    return "test" if int.from_bytes(digest[:4], "big") % 1000 < TEST_FRACTION_PER_MILLE else "train"


def make_problem(a: int, b: int) -> dict:
    return {"question": f"What is {a}+{b}?", "answer": str(a + b), "a": a, "b": b, "op": "+"}


def problem_space(split: str) -> list[tuple[int, int]]:
    """Every ordered pair ``(a, b)`` of ``split``, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = range(OPERAND_MIN, OPERAND_MAX + 1)
    return [(a, b) for a in rng for b in rng if split_of(a, b) == split]


def make_problems(split: str, n: int, seed: int) -> list[dict]:
    """``n`` distinct problems of ``split``, drawn without replacement by ``random.Random(seed)``."""
    space = problem_space(split)
    if not 0 <= n <= len(space):
        raise ValueError(f"split {split!r} holds {len(space)} problems; cannot draw n={n}")
    return [make_problem(a, b) for a, b in random.Random(seed).sample(space, n)]


def _strip_response(solution_str: str) -> str:
    text = solution_str.strip()
    while text.endswith(EOS_TEXT):
        text = text[: -len(EOS_TEXT)].rstrip()
    return text


def compute_score(solution_str: str, ground_truth: str) -> dict:
    """Exact-match verifier: the response must be a single integer equal to ``ground_truth``."""
    text = _strip_response(solution_str)
    if not _INTEGER.fullmatch(text):
        shown = text if len(text) <= 20 else text[:17] + "..."
        return {
            "score": 0.0,
            "acc": 0.0,
            "pred": "",
            "incorrect_format": 1,
            "feedback": f"Your answer {shown!r} is not a single number." if text else "Your answer is empty.",
        }
    pred = text
    correct = int(pred) == int(str(ground_truth).strip())
    return {
        "score": 1.0 if correct else 0.0,
        "acc": 1.0 if correct else 0.0,
        "pred": pred,
        "incorrect_format": 0,
        "feedback": "" if correct else f"Your answer {pred} is wrong.",
    }


def prompt_messages(problem: dict) -> list[dict]:
    """The student's chat prompt (just the question; the task needs no system message)."""
    return [{"role": "user", "content": problem["question"]}]


def to_verl_row(problem: dict, split: str, index: int) -> dict:
    return {
        "data_source": DATA_SOURCE,
        "prompt": prompt_messages(problem),
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(problem["answer"])},
        "extra_info": {"split": split, "index": int(index), "question": problem["question"]},
    }
