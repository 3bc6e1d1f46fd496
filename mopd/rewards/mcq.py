"""Multiple-choice verifiers: SciKnowEval (``<answer>`` tags), GPQA and MMLU-Pro (a final letter).

SciKnowEval (``compute_score``; data source ``sciknoweval``): the prediction is what stands between the
LAST ``<answer>`` and the ``</answer>`` after it. It must be one option letter (surrounding whitespace, a
pair of parentheses or a trailing ``.``/``:``/``)`` are allowed, case is ignored); the score is 1 when it
equals the ground-truth letter. ``incorrect_format`` is 1 when the format is wrong: no closed
``<answer>...</answer>`` block, or a block that holds anything but one letter. (The release computes this
flag inverted, i.e. 1 for a well-formed answer; fixed here.) The release gives no feedback at all; here a
format error or a truncated response gets a one-line hint, which never names the right option.

GPQA (``compute_score_gpqa``) and MMLU-Pro (``compute_score_mmlu_pro``): the prompt asks for a
``\\boxed{X}`` (GPQA) or "the answer is (X)" (MMLU-Pro); the prediction is, in this order, the last such
explicit answer, else the last standalone capital letter in range (A-D for GPQA, A-J for MMLU-Pro).
A final explicit answer that names two options ("\\boxed{A, B}", "the answer is (A) or (B)") is no choice
(score 0, format error), rather than falling through to the standalone letter inside it.
The release upper-cased the response before looking for a standalone letter, so the English word "a"
counted as answer A; we match capitals only.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "compute_score",
    "compute_score_gpqa",
    "compute_score_mmlu_pro",
    "extract_xml_answer",
    "extract_choice_letter",
    "FORMAT_FEEDBACK",
    "TRUNCATION_FEEDBACK",
]

FORMAT_FEEDBACK = (
    "Your answer had the wrong format. End your response with <answer>\nX\n</answer>, where X is only the "
    "letter of the option you choose."
)
CHOICE_FORMAT_FEEDBACK = "Your answer had the wrong format. Finish with the letter of the option you choose ({form})."
TRUNCATION_FEEDBACK = "Your response was truncated because it exceeded the maximum length."

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_LETTER = re.compile(r"\(?\s*([A-Za-z])\s*\)?\s*[.:)]?")


def extract_xml_answer(text: str) -> str | None:
    """The text between the last ``<answer>`` and the next ``</answer>``, stripped; None if there is no such block."""
    start = text.lower().rfind("<answer>")
    if start < 0:
        return None
    match = _ANSWER_BLOCK.match(text, start)
    if match is None:
        return None
    return match.group(1).strip()


def _as_letter(content: str) -> str | None:
    match = _LETTER.fullmatch(content.strip())
    return match.group(1).upper() if match else None


def _truncated(extra_info: dict | None) -> bool:
    return bool((extra_info or {}).get("truncated", False))


def compute_score(solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> dict:
    """SciKnowEval: the letter inside the last ``<answer>...</answer>`` against the ground-truth letter."""
    solution_str = "" if solution_str is None else str(solution_str)
    gt = str(ground_truth).strip().upper()
    content = extract_xml_answer(solution_str)
    letter = _as_letter(content) if content is not None else None
    incorrect_format = letter is None
    pred = letter if letter is not None else (content or "")
    reward = 1.0 if (letter is not None and letter == gt) else 0.0
    truncated = _truncated(extra_info)
    feedback = TRUNCATION_FEEDBACK if truncated else (FORMAT_FEEDBACK if incorrect_format else "")
    return {
        "score": reward,
        "acc": reward,
        "pred": pred[:200],
        "incorrect_format": 1 if incorrect_format else 0,
        "truncated": 1 if truncated else 0,
        "feedback": feedback,
    }


# ---------------------------------------------------------------------------------------------------
# GPQA / MMLU-Pro


def extract_choice_letter(text: str, letters: str) -> str | None:
    """The chosen option: last ``\\boxed{X}`` / "answer is (X)" / "Answer: X", else the last standalone capital."""
    cls = f"[{letters[0]}-{letters[-1]}]"
    explicit = [
        rf"\\boxed\s*\{{\s*(?:\\text\s*\{{\s*)?\(?({cls})\)?\s*\}}",
        rf"[Aa]nswer\s+is\s*:?\s*\(?\**({cls})\b",
        rf"[Aa]nswer\s*:\s*\**\(?({cls})\b",
    ]
    best: tuple[int, str] | None = None
    for pattern in explicit:
        for match in re.finditer(pattern, text):
            if best is None or match.start() >= best[0]:
                best = (match.start(), match.group(1))
    # A final explicit answer naming two options ("\\boxed{A, B}", "the answer is (A) or (B)") chooses none:
    # without this, the box fails the patterns above and the standalone scan below reads its last letter.
    two = rf"\(?{cls}\)?\s*(?:,|/|&|\bor\b|\band\b)\s*\(?{cls}(?![A-Za-z0-9_])"
    hedges = [
        rf"\\boxed\s*\{{\s*(?:\\text\s*\{{\s*)?{two}",
        rf"[Aa]nswer\s+is\s*:?\s*\**{two}",
        rf"[Aa]nswer\s*:\s*\**{two}",
    ]
    last_hedge = max((m.start() for h in hedges for m in re.finditer(h, text)), default=-1)
    if last_hedge >= 0 and (best is None or last_hedge >= best[0]):
        return None
    if best is not None:
        return best[1]
    standalone = re.findall(rf"(?<![A-Za-z0-9_]){cls}(?![A-Za-z0-9_])", text)
    return standalone[-1] if standalone else None


def _choice_score(solution_str: str, ground_truth: Any, extra_info: dict | None, letters: str, form: str) -> dict:
    solution_str = "" if solution_str is None else str(solution_str)
    pred = extract_choice_letter(solution_str, letters)
    gt = str(ground_truth).strip().upper()
    reward = 1.0 if (pred is not None and pred == gt) else 0.0
    truncated = _truncated(extra_info)
    incorrect_format = pred is None
    feedback = ""
    if truncated:
        feedback = TRUNCATION_FEEDBACK
    elif incorrect_format:
        feedback = CHOICE_FORMAT_FEEDBACK.format(form=form)
    return {
        "score": reward,
        "acc": reward,
        "pred": pred or "",
        "incorrect_format": 1 if incorrect_format else 0,
        "truncated": 1 if truncated else 0,
        "feedback": feedback,
    }


def compute_score_gpqa(solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> dict:
    """GPQA: option letter A-D."""
    return _choice_score(solution_str, ground_truth, extra_info, "ABCD", "\\boxed{X} with X one of A, B, C, D")


def compute_score_mmlu_pro(solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> dict:
    """MMLU-Pro: option letter A-J."""
    return _choice_score(solution_str, ground_truth, extra_info, "ABCDEFGHIJ", '"the answer is (X)" with X one of A-J')
