"""Code verifier: extract the program from a response, run the tests in the sandbox, score and explain.

``compute_score(solution_str, ground_truth, extra_info=None) -> dict`` (data sources ``code``,
``livecodebench``, ``humanevalplus``, ``mbppplus``, ``humaneval``).

``ground_truth`` is the tests JSON (a string or an already decoded dict), LiveCodeBench / verl style::

    {"inputs": [...], "outputs": [...], "testtype": "functional" | "stdin" | "code",
     "fn_name": "...", "time_limit": 6, "context": "..."}

* ``stdin``: the program runs as ``__main__`` with ``inputs[i]`` on stdin; its stdout must equal
  ``outputs[i]`` after ``strip`` and whitespace normalisation (runs of spaces/newlines are one space;
  tokens that are both ASCII decimal numbers also match when numerically equal, "0.50" == "0.5",
  but "1_28" != "128").
* ``functional``: ``fn_name`` (a module-level function, or the method of a LeetCode-style ``Solution``
  class, instantiated per test; without ``fn_name`` the first function the solution defines) is called
  with ``inputs[i]``: a JSON string with one JSON value per line (each an argument), a list (the
  arguments) or a dict (keyword arguments). The return value is compared with ``outputs[i]`` (JSON)
  in this process after a JSON round trip (tuples are lists), floats with tolerance 1e-6, bools strict.
* ``code``: each ``inputs[i]`` is an assert script (e.g. HumanEval's ``test + "\\ncheck(entry_point)"``);
  it passes iff it runs to the end. ``context`` (trusted code from the data set, e.g. the HumanEval
  prompt with its helper functions and imports) is run before the solution and also in the tester,
  where its definitions win over the solution's, so a solution cannot redefine a helper the test uses.

Reward: 1.0 iff every test passes; ``acc`` is the fraction that passed. Result keys: ``score, acc, pred,
incorrect_format, error_in_test_cases, timed_out, truncated, truncated_and_missing_answer, feedback,
num_tests, num_passed`` (+ ``sandbox_error`` when the sandbox itself failed; then score 0, no feedback).

Feedback (LeetCode-like, as the release): the first runtime error (trimmed traceback: only frames of
``solution.py``, at most 3) with its input; else the first time-out with its input; else up to two of
the shortest failing tests with Input / Output / Expected (each clipped to 250 characters); capped at
2000 characters; "" when all pass.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from typing import Any

from mopd.rewards import sandbox

__all__ = [
    "DEFAULT_TIME_LIMIT",
    "FORMAT_FEEDBACK",
    "compute_score",
    "extract_code",
    "parse_tests",
    "score_many",
    "set_default_limits",
]

DEFAULT_TIME_LIMIT = 6.0
FORMAT_FEEDBACK = "Put your code inside a ```python ... ``` block."
TRUNCATION_FEEDBACK = "Your response was cut off before the code block was complete; write a shorter answer."
FEEDBACK_CAP = 2000
CLIP = 250
PRED_CAP = 10_000
FLOAT_TOL = 1e-6

_limits: sandbox.SandboxLimits | None = None
_num_workers = 2


def set_default_limits(limits: sandbox.SandboxLimits | None = None, num_workers: int | None = None, **fields) -> None:
    """Module defaults: sandbox limits (``SandboxLimits`` or its fields) and ``score_many``'s workers."""
    global _limits, _num_workers
    import dataclasses

    if limits is not None or fields:
        _limits = dataclasses.replace(limits or sandbox.DEFAULT_LIMITS, **fields)
    if num_workers is not None:
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        _num_workers = int(num_workers)


# ---------------------------------------------------------------------------------------------------
# Extraction and parsing

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PY_LANGS = {"", "python", "py", "python3", "py3", "python2"}


def extract_code(solution_str: str) -> str | None:
    """The longest fenced ```python / ```py / ``` block, or None."""
    if not isinstance(solution_str, str):
        return None
    blocks = [m.group(2) for m in _FENCE.finditer(solution_str) if m.group(1).lower() in _PY_LANGS]
    blocks = [b for b in blocks if b.strip()]
    return max(blocks, key=len) if blocks else None


def parse_tests(ground_truth: Any) -> dict:
    """The tests JSON (string or dict) as a validated dict with inputs/outputs/testtype/fn_name/time_limit."""
    gt = ground_truth
    if isinstance(gt, (bytes, bytearray)):
        gt = gt.decode("utf-8")
    if isinstance(gt, str):
        try:
            gt = json.loads(gt)
        except json.JSONDecodeError as exc:
            raise ValueError(f"code ground truth is not valid JSON: {exc}") from None
    if not isinstance(gt, dict):
        raise ValueError(f"code ground truth must be a JSON object, got {type(gt).__name__}")
    inputs = gt.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ValueError("code ground truth: 'inputs' must be a non-empty list")
    testtype = gt.get("testtype") or ("functional" if gt.get("fn_name") else "stdin")
    if testtype not in ("functional", "stdin", "code"):
        raise ValueError(f"code ground truth: unknown testtype {testtype!r} (functional, stdin or code)")
    outputs = gt.get("outputs")
    if testtype == "code":
        outputs = list(outputs) if isinstance(outputs, list) else [None] * len(inputs)
        outputs += [None] * (len(inputs) - len(outputs))
    elif not isinstance(outputs, list) or len(outputs) != len(inputs):
        raise ValueError("code ground truth: 'outputs' must be a list as long as 'inputs'")
    time_limit = gt.get("time_limit")
    try:
        time_limit = float(time_limit) if time_limit not in (None, "", "-") else DEFAULT_TIME_LIMIT
    except (TypeError, ValueError):
        raise ValueError(f"code ground truth: bad time_limit {gt.get('time_limit')!r}") from None
    if not time_limit > 0:
        raise ValueError("code ground truth: time_limit must be > 0")
    return {
        "inputs": inputs,
        "outputs": outputs,
        "testtype": testtype,
        "fn_name": gt.get("fn_name") or None,
        "time_limit": time_limit,
        "context": gt.get("context") or "",
    }


def _functional_args(inp: Any) -> dict:
    """A functional test input as {"args": [...], "kwargs": {...}}."""
    if isinstance(inp, dict):
        return {"args": [], "kwargs": inp}
    if isinstance(inp, list):
        return {"args": inp, "kwargs": {}}
    if isinstance(inp, str):
        lines = [line for line in inp.split("\n") if line.strip()]
        try:
            return {"args": [json.loads(line) for line in lines], "kwargs": {}}
        except json.JSONDecodeError:
            try:
                return {"args": [json.loads(inp)], "kwargs": {}}
            except json.JSONDecodeError:
                raise ValueError(f"functional test input is not JSON: {inp[:100]!r}") from None
    return {"args": [inp], "kwargs": {}}


def _decode_expected(out: Any) -> Any:
    if isinstance(out, str):
        try:
            return json.loads(out)
        except json.JSONDecodeError:
            return out
    return out


# ---------------------------------------------------------------------------------------------------
# Comparison (in this process: the sandboxed program never sees the expected outputs)


def _values_equal(a: Any, b: Any, depth: int = 0) -> bool:
    if depth > 100:
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is bool and type(b) is bool and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, int) and isinstance(b, int):
            return a == b
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=FLOAT_TOL, abs_tol=FLOAT_TOL)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_values_equal(x, y, depth + 1) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_values_equal(a[k], b[k], depth + 1) for k in a)
    return type(a) is type(b) and a == b


def _canonical(value: Any) -> Any:
    """JSON round trip: tuples -> lists, dict keys -> strings."""
    return json.loads(json.dumps(value))


def _normalize_text(text: str) -> str:
    return " ".join(str(text).split())


# A printed decimal number (ASCII only): Decimal() alone would also take "1_28" or "١٢٨" as 128.
_DECIMAL_TOKEN = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _tokens_equal(out: str, expected: str) -> bool:
    if out == expected:
        return True
    a, b = out.split(" "), expected.split(" ")
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        if not (_DECIMAL_TOKEN.fullmatch(x) and _DECIMAL_TOKEN.fullmatch(y)):
            return False
        try:
            if Decimal(x) != Decimal(y):
                return False
        except (InvalidOperation, ValueError):
            return False
    return True


# ---------------------------------------------------------------------------------------------------
# Feedback


def _clip(text: Any, n: int = CLIP) -> str:
    text = "" if text is None else str(text)
    text = text.strip("\n")
    return text if len(text) <= n else text[: n - 3] + "..."


def _input_text(testtype: str, inp: Any) -> str:
    if isinstance(inp, str):
        return inp
    return json.dumps(inp)


def _output_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _build_feedback(testtype: str, tests: dict, outcome: list) -> str:
    inputs, outputs = tests["inputs"], tests["outputs"]
    runtime = [o for o in outcome if o["kind"] == "error"]
    if runtime:
        o = runtime[0]
        parts = ["Runtime Error", o["error"].strip()]
        inp = o.get("input_desc") or (_input_text(testtype, inputs[o["i"]]) if testtype != "code" else "")
        if inp:
            parts.append(f"Last input:\n{_clip(inp)}")
        return "\n".join(parts)
    timeouts = [o for o in outcome if o["kind"] == "timeout"]
    if timeouts:
        o = timeouts[0]
        inp = o.get("input_desc") or (_input_text(testtype, inputs[o["i"]]) if testtype != "code" else "")
        limit = f"{tests['time_limit']:g} s"
        return f"Time limit exceeded on input:\n{_clip(inp)}" if inp else f"Time limit exceeded (the limit is {limit})."
    wrong = [o for o in outcome if o["kind"] == "wrong"]
    if not wrong:
        skipped = [o for o in outcome if o["kind"] == "skipped"]
        return "Some tests were not run." if skipped else ""
    if testtype == "code":
        o = wrong[0]
        lines = ["Wrong Answer"]
        if o.get("assertion"):
            lines.append(f"Failed assertion:\n{_clip(o['assertion'])}")
        if o.get("input_desc"):
            lines.append(f"Last call:\n{_clip(o['input_desc'])}")
            lines.append(f"Returned:\n{_clip(o.get('output_desc'))}")
        return "\n".join(lines)
    wrong.sort(key=lambda o: len(_input_text(testtype, inputs[o["i"]])))
    blocks = []
    for o in wrong[:2]:
        blocks.append(
            "Wrong Answer\n"
            f"Input:\n{_clip(_input_text(testtype, inputs[o['i']]))}\n"
            f"Output:\n{_clip(o.get('output_desc'))}\n"
            f"Expected:\n{_clip(_output_text(outputs[o['i']]))}"
        )
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------------------------------
# Scoring


def _result(
    score: float,
    acc: float,
    pred: str,
    *,
    incorrect_format=0,
    error=0,
    timed_out=0,
    truncated=0,
    truncated_missing=0,
    feedback="",
    num_tests=0,
    num_passed=0,
) -> dict:
    if len(feedback) > FEEDBACK_CAP:
        feedback = feedback[: FEEDBACK_CAP - 4] + " ..."
    return {
        "score": float(score),
        "acc": float(acc),
        "pred": pred if len(pred) <= PRED_CAP else pred[:PRED_CAP] + "\n# ... (truncated)",
        "incorrect_format": int(incorrect_format),
        "error_in_test_cases": int(error),
        "timed_out": int(timed_out),
        "truncated": int(truncated),
        "truncated_and_missing_answer": int(truncated_missing),
        "feedback": feedback,
        "num_tests": int(num_tests),
        "num_passed": int(num_passed),
    }


def compute_score(
    solution_str: str, ground_truth: Any, extra_info: dict | None = None, *, limits: sandbox.SandboxLimits | None = None
) -> dict:
    """Score one response (see the module docstring)."""
    truncated = int(bool((extra_info or {}).get("truncated", False)))
    tests = parse_tests(ground_truth)
    n = len(tests["inputs"])
    code = extract_code(solution_str)
    if code is None:
        feedback = (TRUNCATION_FEEDBACK + " " + FORMAT_FEEDBACK) if truncated else FORMAT_FEEDBACK
        return _result(
            0.0,
            0.0,
            "",
            incorrect_format=1,
            truncated=truncated,
            truncated_missing=truncated,
            feedback=feedback,
            num_tests=n,
        )

    testtype = tests["testtype"]
    if testtype == "functional":
        run_inputs = [_functional_args(inp) for inp in tests["inputs"]]
    elif testtype == "stdin":
        run_inputs = ["" if inp is None else str(inp) for inp in tests["inputs"]]
    else:
        run_inputs = [str(inp) for inp in tests["inputs"]]
    run = sandbox.run_tests(
        code,
        testtype,
        run_inputs,
        fn_name=tests["fn_name"],
        context=tests["context"],
        time_limit=tests["time_limit"],
        limits=limits or _limits,
    )
    if run.error is not None:
        out = _result(0.0, 0.0, code, truncated=truncated, num_tests=n)
        out["sandbox_error"] = run.error
        return out

    outcome = []
    for i, res in enumerate(run.tests):
        outcome.append(_judge(testtype, tests, i, res))
    passed = sum(o["kind"] == "pass" for o in outcome)
    feedback = "" if passed == n else _build_feedback(testtype, tests, outcome)
    return _result(
        1.0 if passed == n else 0.0,
        passed / n,
        code,
        error=any(o["kind"] == "error" for o in outcome),
        timed_out=any(o["kind"] == "timeout" for o in outcome),
        truncated=truncated,
        feedback=feedback,
        num_tests=n,
        num_passed=passed,
    )


def _judge(testtype: str, tests: dict, i: int, res: dict) -> dict:
    status = res.get("status")
    o = {"i": i}
    if status == "timeout":
        return dict(o, kind="timeout", input_desc=res.get("input", ""))
    if status == "output_limit":
        return dict(o, kind="error", error="Output limit exceeded: the program printed too much.")
    if status == "skipped":
        return dict(o, kind="skipped")
    if status == "error":
        return dict(o, kind="error", error=str(res.get("error") or "error"), input_desc=res.get("input", ""))
    if status == "wrong":  # code tests: the assert script failed
        return dict(
            o,
            kind="wrong",
            assertion=res.get("assertion", ""),
            input_desc=res.get("input", ""),
            output_desc=res.get("output", ""),
        )
    if status != "ok":
        return dict(o, kind="error", error=f"unexpected sandbox status {status!r}")
    if testtype == "code":
        return dict(o, kind="pass" if res.get("passed") is True else "wrong")
    if testtype == "stdin":
        expected = _normalize_text(tests["outputs"][i])
        if "output" in res:
            ok = _tokens_equal(str(res["output"]), expected)
        else:
            import hashlib

            ok = hashlib.sha256(expected.encode()).hexdigest() == res.get("output_sha256")
        return dict(o, kind="pass" if ok else "wrong", output_desc=res.get("output_head", ""))
    # functional
    raw = res.get("result")
    try:
        value = json.loads(raw)
    except (TypeError, ValueError, RecursionError):
        return dict(o, kind="error", error="the return value could not be decoded")
    try:
        expected = _canonical(_decode_expected(tests["outputs"][i]))
    except (TypeError, ValueError):
        expected = tests["outputs"][i]
    ok = _values_equal(value, expected)
    try:
        shown = json.dumps(value)
    except (TypeError, ValueError):
        shown = raw if isinstance(raw, str) else ""
    return dict(o, kind="pass" if ok else "wrong", output_desc=shown)


def score_many(
    items: Iterable[Sequence], num_workers: int | None = None, *, limits: sandbox.SandboxLimits | None = None
) -> list[dict]:
    """Score many rollouts in parallel: items are (solution_str, ground_truth[, extra_info]).

    ``num_workers`` rollouts are sandboxed at once (each sandbox also runs its tests ``test_workers``
    at a time); results come back in input order. A rollout whose ground truth is malformed gets score
    0 and a ``verifier_error`` entry instead of failing the batch.
    """
    items = [tuple(item) for item in items]
    workers = max(1, int(num_workers or _num_workers))

    def one(item):
        solution, gt = item[0], item[1]
        extra = item[2] if len(item) > 2 else None
        try:
            return compute_score(solution, gt, extra, limits=limits)
        except Exception as exc:  # noqa: BLE001 - one bad row must not take the batch down
            out = _result(0.0, 0.0, "")
            out["verifier_error"] = f"{type(exc).__name__}: {exc}"
            return out

    if workers == 1 or len(items) <= 1:
        return [one(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="code-verifier") as pool:
        return list(pool.map(one, items))
