"""Math verifier: the last ``\\boxed{}`` of the response against the ground-truth answer.

Rules (the release's math verifier in its reward-feedback package, with two fixes noted below):

1. The prediction is the content of the last brace-matched ``\\boxed{...}`` in the response (anywhere in
   it, not only in the final characters). No box, or a box that is never closed (a truncated response),
   is a format error: score 0, ``incorrect_format`` 1.
2. Both sides are normalised: ``\\dfrac``/``\\tfrac`` -> ``\\frac``; ``\\left``/``\\right`` and ``$`` dropped;
   ``\\text{...}`` unwrapped; LaTeX spacing commands and all whitespace removed. Equal strings score 1.
3. Otherwise ``math_verify`` decides equivalence (``\\frac{1}{2}`` vs ``0.5``, ``\\sqrt{12}`` vs ``2\\sqrt{3}``,
   sets, intervals, ...), under a time limit (``MATH_VERIFY_TIMEOUT_S``). Fix: both sides are parsed as
   ``\\boxed{...}`` (the release parsed the bare normalised strings, which math_verify mostly fails to
   read, so the fallback rarely fired).
4. ``compute_score(..., whole_response_fallback=True)`` (used for ``aime*``/``hmmt*``, as the release's
   dispatch does with verl's ``math_verify`` scorer) also lets math_verify read the answer from the whole
   response when the boxed comparison fails.

Feedback is given only for a format error or a truncated response (``extra_info["truncated"]``); it
never reveals the answer.

The time limit uses SIGALRM in the main thread and keeps an outer timer (e.g. ``RewardScorer``'s per-item
alarm) running: the remaining outer time is restored afterwards. In other threads math_verify runs without
a time limit (signals only work in the main thread); run verifiers in processes, as ``RewardScorer`` does.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = [
    "compute_score",
    "last_boxed_only_string",
    "remove_boxed",
    "extract_boxed_answer",
    "normalize_answer_string",
    "is_equivalent",
    "MATH_VERIFY_TIMEOUT_S",
    "FORMAT_FEEDBACK",
    "TRUNCATION_FEEDBACK",
]

MATH_VERIFY_TIMEOUT_S = 5.0
FORMAT_FEEDBACK = "Your answer had the wrong format. The solution must be given in the format: \\boxed{your_answer}."
TRUNCATION_FEEDBACK = "Your response was truncated because it exceeded the maximum length."

_BOXED = re.compile(r"\\boxed\s*\{")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textrm|mathrm|textbf|mbox)\s*\{([^{}]*)\}")
_LATEX_SPACES = re.compile(r"\\[,;:! ]|\\quad|\\qquad")


def last_boxed_only_string(string: str) -> str | None:
    """The last ``\\boxed{...}`` of ``string`` with its braces matched; ``""`` if it is never closed, None if absent."""
    matches = list(_BOXED.finditer(string))
    if not matches:
        return None
    start = matches[-1].start()
    depth = 0
    for i in range(matches[-1].end() - 1, len(string)):
        ch = string[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return string[start : i + 1]
    return ""


def remove_boxed(boxed: str) -> str:
    """``\\boxed{X}`` -> ``X`` (``""`` for anything else)."""
    match = _BOXED.match(boxed)
    if match is None or not boxed.endswith("}"):
        return ""
    return boxed[match.end() : -1]


def extract_boxed_answer(solution_str: str) -> str | None:
    """The content of the last closed ``\\boxed{}``, or None when there is none (or it is never closed)."""
    boxed = last_boxed_only_string(solution_str)
    if not boxed:
        return None
    return remove_boxed(boxed)


def normalize_answer_string(text: str) -> str:
    """Formatting-only normalisation before the exact comparison (see the module docstring)."""
    s = str(text).strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("$", "")
    previous = None
    while previous != s:  # \text{\text{x}} and several wrappers
        previous = s
        s = _TEXT_WRAPPER.sub(lambda m: m.group(1), s)
    s = _LATEX_SPACES.sub("", s)
    s = re.sub(r"\s+", "", s)
    return s


# ---------------------------------------------------------------------------------------------------
# math_verify under a time limit


class _MathVerifyTimeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``_MathVerifyTimeout`` after ``seconds`` (main thread only); an outer ITIMER_REAL keeps running.

    When an outer timer would fire first, it is left alone (its handler raises, as its owner expects).
    """
    usable = (
        seconds is not None
        and seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return
    outer_remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    if outer_remaining and outer_remaining <= seconds:
        yield  # the outer alarm fires first anyway
        return

    def _fire(signum, frame):
        raise _MathVerifyTimeout(f"math_verify took longer than {seconds:g} s")

    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, _fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if outer_remaining:
            left = outer_remaining - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3))


_MV = None


def _math_verify():
    """(parse, verify) of math_verify, imported once; its 'timeout disabled' warnings are silenced (we time it)."""
    global _MV
    if _MV is None:
        from math_verify import parse, verify

        logging.getLogger("math_verify").setLevel(logging.ERROR)
        _MV = (parse, verify)
    return _MV


def _parse(expr: str):
    parse, _ = _math_verify()
    return parse(expr, parsing_timeout=None)


def is_equivalent(pred: str, ground_truth: str, timeout_s: float | None = None) -> bool:
    """math_verify's verdict on ``\\boxed{pred}`` vs ``\\boxed{ground_truth}`` (False on error or time-out)."""
    timeout_s = MATH_VERIFY_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        _, verify = _math_verify()
        with _time_limit(timeout_s):
            gold = _parse("\\boxed{" + normalize_answer_string(ground_truth) + "}")
            guess = _parse("\\boxed{" + normalize_answer_string(pred) + "}")
            if not gold or not guess:
                return False
            return bool(verify(gold, guess, timeout_seconds=None))
    except _MathVerifyTimeout:
        return False
    except Exception:  # math_verify/sympy errors on odd input: not equivalent
        return False


def _whole_response_equivalent(solution_str: str, ground_truth: str, timeout_s: float) -> bool:
    """verl's math_verify scorer: math_verify extracts the answer from the whole response."""
    try:
        _, verify = _math_verify()
        with _time_limit(timeout_s):
            gold = _parse("\\boxed{" + normalize_answer_string(ground_truth) + "}")
            guess = _parse(solution_str)
            if not gold or not guess:
                return False
            return bool(verify(gold, guess, timeout_seconds=None))
    except _MathVerifyTimeout:
        return False
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------------


def compute_score(
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    *,
    whole_response_fallback: bool = False,
    timeout_s: float | None = None,
) -> dict:
    """Score one response: 1.0 when the last boxed answer equals the ground truth (see the module docstring)."""
    extra_info = extra_info or {}
    timeout_s = MATH_VERIFY_TIMEOUT_S if timeout_s is None else float(timeout_s)
    truncated = bool(extra_info.get("truncated", False))
    ground_truth = "" if ground_truth is None else str(ground_truth)
    solution_str = "" if solution_str is None else str(solution_str)

    pred = extract_boxed_answer(solution_str)
    incorrect_format = pred is None
    correct = False
    if pred is not None:
        correct = normalize_answer_string(pred) == normalize_answer_string(ground_truth)
        if not correct and normalize_answer_string(pred):
            correct = is_equivalent(pred, ground_truth, timeout_s)
    if not correct and whole_response_fallback and solution_str.strip():
        correct = _whole_response_equivalent(solution_str, ground_truth, timeout_s)

    feedback = ""
    if truncated:
        feedback = TRUNCATION_FEEDBACK
    elif incorrect_format:
        feedback = FORMAT_FEEDBACK

    reward = 1.0 if correct else 0.0
    return {
        "score": reward,
        "acc": reward,
        "pred": pred or "",
        "incorrect_format": 1 if incorrect_format else 0,
        "truncated": 1 if truncated else 0,
        "truncated_and_missing_answer": 1 if (incorrect_format and truncated) else 0,
        "feedback": feedback,
    }
