"""ToolUse verifier (ToolAlpaca-style ReAct answers).

The ground truth is a JSON list of calls ``[{"Action": name, "Action_Input": "<JSON object>"}, ...]``.
The response is read as ReAct text::

    Thought: ...
    Action: getUserProfile
    Action Input: {"userId": "g-user123"}

Rules (the release's tool-use verifier in its reward-feedback package):

- the actions are every ``Action:[ \\t]*(\\w+)`` in the response (the release's ``\\s*`` could read the
  ``Action`` of an ``Action Input:`` line on the next line as an action name; we stop at the line end);
- the inputs are every JSON object that follows an ``Action Input:`` (decoded with ``raw_decode``, so
  nested objects are fine), merged into one dict in order (a later key overrides an earlier one);
- reward 1 iff the multiset of action names equals the ground truth's AND the merged inputs equal the
  ground truth's merged inputs.

Ground-truth actions written ``[Optional]name`` (one row of the shipped ToolUse test split has one) are
optional: a response may call them or not; when it does, their inputs join the expected merge. (The
release compares the literal ``[Optional]name``, which no ``\\w+`` action can match, so that row could
never be solved.)

Feedback. By default it says WHAT was wrong without revealing the expected values: "wrong number of
actions", "action X not expected", "action X called the wrong number of times", "an expected action was
not called", "inputs of action X differ in key k", "inputs of action X have unexpected key k", "inputs of
action X are missing key k" (only for an action the response did call), "the Action Input of action X is
not a valid JSON object", or the format hint. The release's feedback instead spells out the expected
actions and inputs, i.e. the label; set ``extra_info["leak_ground_truth"] = True`` for one call, or the
module flag ``LEAK_GROUND_TRUTH = True`` for all, to get that release behaviour back.

Extra result keys: ``actions_correct``, ``inputs_correct`` (the two halves of the rule), ``calls_exact``
(the multiset of (action, input) pairs matches exactly: stricter than the reward, logged only),
``num_actions``, ``truncated``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

__all__ = ["compute_score", "extract_actions", "extract_action_inputs", "parse_calls", "LEAK_GROUND_TRUTH"]

# Module switch: True restores the release's feedback, which reveals the expected actions and inputs.
LEAK_GROUND_TRUTH = False

OPTIONAL_PREFIX = "[Optional]"
MAX_FEEDBACK_ITEMS = 8
MAX_FEEDBACK_CHARS = 1500

FORMAT_FEEDBACK = (
    "No tool call found. Call a tool with the format:\nAction: <tool name>\nAction Input: <the input as a JSON object>"
)
TRUNCATION_FEEDBACK = "Your response was truncated because it exceeded the maximum length."

_ACTION = re.compile(r"Action:[ \t]*(\w+)")
_ACTION_INPUT = re.compile(r"Action Input:\s*")
_DECODER = json.JSONDecoder()


def extract_actions(text: str) -> list[str]:
    """Every action name after ``Action:``, in order."""
    return _ACTION.findall(text)


def _decode_object(text: str, pos: int) -> dict | None:
    try:
        value, _ = _DECODER.raw_decode(text, pos)
    except (json.JSONDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def extract_action_inputs(text: str) -> dict:
    """Every JSON object after ``Action Input:``, merged in order."""
    merged: dict = {}
    for match in _ACTION_INPUT.finditer(text):
        obj = _decode_object(text, match.end())
        if obj is not None:
            merged.update(obj)
    return merged


def parse_calls(text: str) -> list[dict]:
    """The response as calls, in order: ``{"action", "input" (dict or None), "has_input"}``.

    An ``Action Input:`` belongs to the closest ``Action:`` before it; one before any action is ignored here
    (it still counts in ``extract_action_inputs``, as in the release).
    """
    events = [(m.start(), "action", m) for m in _ACTION.finditer(text)]
    events += [(m.start(), "input", m) for m in _ACTION_INPUT.finditer(text)]
    events.sort(key=lambda e: e[0])
    calls: list[dict] = []
    for _, kind, match in events:
        if kind == "action":
            calls.append({"action": match.group(1), "input": None, "has_input": False})
        elif calls and not calls[-1]["has_input"]:
            calls[-1]["has_input"] = True
            calls[-1]["input"] = _decode_object(text, match.end())
    return calls


def _parse_ground_truth(ground_truth: Any) -> list[dict]:
    """[{"action", "input": dict, "optional": bool}] from the JSON list (or an already decoded list)."""
    items = json.loads(ground_truth) if isinstance(ground_truth, (str, bytes)) else ground_truth
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        raise ValueError(f"tooluse ground truth must be a JSON list of calls, got {type(items).__name__}")
    calls = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError(f"tooluse ground truth: each call must be an object, got {item!r:.80}")
        name = str(item.get("Action", "")).strip()
        optional = name.startswith(OPTIONAL_PREFIX)
        if optional:
            name = name[len(OPTIONAL_PREFIX) :].strip()
        raw = item.get("Action_Input", {})
        if isinstance(raw, str):
            try:
                raw = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError:
                raw = {}
        calls.append({"action": name, "input": raw if isinstance(raw, dict) else {}, "optional": optional})
    return calls


def _merge(inputs) -> dict:
    merged: dict = {}
    for d in inputs:
        if d:
            merged.update(d)
    return merged


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _expected_calls(gt_calls: list[dict], pred_names: list[str]) -> list[dict]:
    """The required calls plus those optional ones the response made (by name, beyond the required count)."""
    required = [c for c in gt_calls if not c["optional"]]
    budget = Counter(pred_names) - Counter(c["action"] for c in required)
    chosen = []
    for call in gt_calls:
        if not call["optional"]:
            chosen.append(call)
        elif budget[call["action"]] > 0:
            budget[call["action"]] -= 1
            chosen.append(call)
    return chosen


def _owner(key: str, calls: list[dict], default: str | None) -> str | None:
    """The last call (name) whose input holds ``key``."""
    for call in reversed(calls):
        if isinstance(call.get("input"), dict) and key in call["input"]:
            return call["action"]
    return default


def _hidden_feedback(pred_calls, pred_names, pred_inputs, expected, exp_names, exp_inputs) -> list[str]:
    parts: list[str] = []
    pred_count, exp_count = Counter(pred_names), Counter(exp_names)
    if pred_count != exp_count:
        if len(pred_names) != len(exp_names):
            parts.append(f"wrong number of actions (you made {len(pred_names)})")
        for name in dict.fromkeys(pred_names):
            if name not in exp_count:
                parts.append(f"action {name} not expected")
            elif pred_count[name] != exp_count[name]:
                parts.append(f"action {name} called the wrong number of times")
        if any(name not in pred_count for name in exp_count):
            parts.append("an expected action was not called")
    for call in pred_calls:
        if call["has_input"] and call["input"] is None:
            parts.append(f"the Action Input of action {call['action']} is not a valid JSON object")
        elif not call["has_input"]:
            parts.append(f"action {call['action']} has no Action Input")
    if pred_inputs != exp_inputs:
        called = set(pred_names)
        differing = [k for k in pred_inputs if k in exp_inputs and pred_inputs[k] != exp_inputs[k]]
        unexpected = [k for k in pred_inputs if k not in exp_inputs]
        missing = [k for k in exp_inputs if k not in pred_inputs]
        for key in differing:
            parts.append(f"inputs of action {_owner(key, pred_calls, '?')} differ in key {key}")
        for key in unexpected:
            parts.append(f"inputs of action {_owner(key, pred_calls, '?')} have unexpected key {key}")
        anonymous_missing = False
        for key in missing:
            owner = _owner(key, expected, None)
            if owner is not None and owner in called:
                parts.append(f"inputs of action {owner} are missing key {key}")
            else:
                anonymous_missing = True
        if anonymous_missing:
            parts.append("the inputs miss keys of an action you did not call")
    return list(dict.fromkeys(parts))


def compute_score(solution_str: str, ground_truth: Any, extra_info: dict | None = None) -> dict:
    """Score one ReAct response against the ground-truth calls (see the module docstring)."""
    extra_info = extra_info or {}
    solution_str = "" if solution_str is None else str(solution_str)
    leak = bool(extra_info.get("leak_ground_truth", LEAK_GROUND_TRUTH))
    truncated = bool(extra_info.get("truncated", False))

    gt_calls = _parse_ground_truth(ground_truth)
    pred_calls = parse_calls(solution_str)
    pred_names = extract_actions(solution_str)
    pred_inputs = extract_action_inputs(solution_str)

    expected = _expected_calls(gt_calls, pred_names)
    exp_names = [c["action"] for c in expected]
    exp_inputs = _merge(c["input"] for c in expected)

    actions_correct = Counter(pred_names) == Counter(exp_names)
    inputs_correct = pred_inputs == exp_inputs
    calls_exact = Counter(_canonical([c["action"], c["input"]]) for c in pred_calls) == Counter(
        _canonical([c["action"], c["input"]]) for c in expected
    )
    correct = actions_correct and inputs_correct
    incorrect_format = not pred_calls or any(c["input"] is None for c in pred_calls)

    if correct:
        feedback = ""
    elif leak:  # the release's wording, which reveals the label
        parts = []
        if not actions_correct:
            parts.append(f"Actions mismatch: predicted {pred_names}, expected {exp_names}")
        if not inputs_correct:
            parts.append(f"Action inputs mismatch: predicted {pred_inputs}, expected {exp_inputs}")
        feedback = "; ".join(parts)
    elif not pred_calls:
        feedback = FORMAT_FEEDBACK
    else:
        parts = _hidden_feedback(pred_calls, pred_names, pred_inputs, expected, exp_names, exp_inputs)
        if len(parts) > MAX_FEEDBACK_ITEMS:
            parts = parts[:MAX_FEEDBACK_ITEMS] + [f"and {len(parts) - MAX_FEEDBACK_ITEMS} more problems"]
        feedback = (
            "Your tool calls are incorrect: " + "; ".join(parts) + "." if parts else "Your tool calls are incorrect."
        )
    if truncated:
        feedback = (TRUNCATION_FEEDBACK + " " + feedback).strip() if feedback else feedback
    if len(feedback) > MAX_FEEDBACK_CHARS:
        feedback = feedback[: MAX_FEEDBACK_CHARS - 3] + "..."

    reward = 1.0 if correct else 0.0
    return {
        "score": reward,
        "acc": reward,
        "pred": f"Actions: {pred_names}, Inputs: {pred_inputs}"[:1000],
        "incorrect_format": 1 if incorrect_format else 0,
        "feedback": feedback,
        "actions_correct": 1 if actions_correct else 0,
        "inputs_correct": 1 if inputs_correct else 0,
        "calls_exact": 1 if calls_exact else 0,
        "num_actions": len(pred_names),
        "truncated": 1 if truncated else 0,
    }
