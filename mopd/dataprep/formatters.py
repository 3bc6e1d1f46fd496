"""Per-benchmark record formatters: the release's prompts, and pure functions from rows shaped like the
hub's to record fields (tested without network).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import pickle
import random
import re
import zlib
from typing import Any

from mopd.common.errors import DataError

# ---------------------------------------------------------------------------------------------------
# Prompts (the release's wording)

SCIKNOWEVAL_SYSTEM_PROMPT = """
Given a question and four options, please select the right answer. Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>

For the answer, only output the letter corresponding to the correct option (A, B, C, or D), and nothing else. Do not restate the answer text. For example, if the answer is "A", just output:
<answer>
A
</answer>
"""

MATH_PROMPT = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
HMMT_PROMPT = "{problem} Let's think step by step and output the final answer within \\boxed{{}}."
CODE_PROMPT = (
    "You are a coding expert. You will be given a coding problem, and you need to write a correct Python program "
    "that matches the specification and passes all tests. The time limit is 1 second. You may start by outlining "
    "your thought process. In the end, please provide the complete code in a code block enclosed with ``` ```."
    "\n\n{problem}"
)
HUMANEVAL_TASK = (
    "Your task is to complete the following function. You are not allowed to modify the given code and should do "
    "the completion only. Here is the given code to complete: ```python\n{prefix}\n```"
)
GPQA_PROMPT = (
    "Return your final response within \\boxed{{}} and only include the letter choice (A, B, C, or D) as your "
    "final response.\nProblem: {problem}\nOptions: {options}\nAnswer:"
)
MMLU_PRO_PROMPT = (
    "The following are multiple choice questions (with answers) about {subject}. Think step by step and then "
    'finish your answer with "the answer is (X)" where X is the correct letter choice.\n'
)

LCB_TIME_LIMIT = 6
EVALPLUS_TIME_LIMIT = 5
LCB_WINDOW = (_dt.datetime(2025, 2, 1), _dt.datetime(2025, 5, 1))  # [start, end)
SCIKNOWEVAL_DOMAINS = ("Biology", "Chemistry", "Material", "Physics")
MATH_SETS = ("math-ai/aime24", "math-ai/aime25", "math-ai/math500", "math-ai/amc23", "openai/gsm8k")
_MATH_KEYS = {  # hub dataset -> (problem field, answer field)
    "math-ai/aime24": ("problem", "solution"),
    "math-ai/aime25": ("problem", "answer"),
    "math-ai/math500": ("problem", "answer"),
    "math-ai/amc23": ("question", "answer"),
    "openai/gsm8k": ("question", "answer"),
}
LCB_NAME = "livecodebench/code_generation_lite-v6"
REASONING_GYM_PREFIX = "reasoning_gym:"
DATASET_NAMES = (
    *SCIKNOWEVAL_DOMAINS,
    LCB_NAME,
    *MATH_SETS,
    "evalplus/humanevalplus",
    "evalplus/mbppplus",
    "Idavidrein/gpqa-D",
    "TIGER-Lab/MMLU-Pro",
    "tooluse",
    "humaneval",
    REASONING_GYM_PREFIX + "<task>",
)


# ---------------------------------------------------------------------------------------------------
# Record formatting (pure functions on rows shaped like the hub's; tested without network)


def _require(row: dict, field: str, source: str) -> Any:
    if field not in row or row[field] is None:
        raise DataError(f"{source}: row has no field {field!r} (fields: {sorted(row)})")
    return row[field]


def format_sciknoweval_row(row: dict) -> dict:
    """A ``hicai-zju/SciKnowEval`` row: question, choices{text, label}, answerKey."""
    src = "hicai-zju/SciKnowEval"
    question = _require(row, "question", src)
    choices = _require(row, "choices", src)
    lines = "\n".join(f"{label}: {text}" for label, text in zip(choices["label"], choices["text"]))
    return {
        "dataset": "sciknoweval",
        "system": SCIKNOWEVAL_SYSTEM_PROMPT,
        "prompt": question + "\n\n" + lines + "\nPlease reason step by step.",
        "answer": _require(row, "answerKey", src),
        "tests": None,
        "description": question,
        "kind": "mcq",
        "elo": 1500,
    }


def keep_sciknoweval_row(row: dict, domain: str, levels=("L3",), types=("mcq-4-choices", "mcq-2-choices")) -> bool:
    details = row.get("details") or {}
    return row.get("domain") == domain and details.get("level") in levels and row.get("type") in types


def _last_boxed(text: str) -> str | None:
    from mopd.rewards.math import extract_boxed_answer

    return extract_boxed_answer(text)


def gsm8k_answer(solution: str) -> str:
    """The number after ``####`` in a GSM8K solution (thousands separators removed)."""
    match = re.search(r"####\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)", solution)
    return match.group(1).replace(",", "") if match else ""


def format_math_row(row: dict, dataset_name: str) -> dict:
    """A row of one of ``MATH_SETS`` as a math record (answer from the set's answer field)."""
    problem_key, answer_key = _MATH_KEYS[dataset_name]
    problem = str(_require(row, problem_key, dataset_name))
    answer = _require(row, answer_key, dataset_name)
    if dataset_name == "openai/gsm8k":
        answer = gsm8k_answer(str(answer))
    elif dataset_name == "math-ai/aime24":  # the solution field is "\boxed{N}"
        boxed = _last_boxed(str(answer))
        answer = boxed if boxed is not None else str(answer)
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    return {
        "kind": "math",
        "dataset": dataset_name.split("/")[1],
        "description": problem,
        "prompt": MATH_PROMPT.format(problem=problem),
        "answer": str(answer),
    }


def decode_lcb_private_tests(encoded: str) -> list[dict]:
    """LiveCodeBench private tests: base64 -> zlib -> pickle -> JSON list of {input, output, testtype}.

    The pickle comes from the LiveCodeBench dataset itself (the release decodes it the same way); only
    load datasets you trust.
    """
    data = pickle.loads(zlib.decompress(base64.b64decode(encoded)))
    return json.loads(data) if isinstance(data, (str, bytes)) else data


def encode_lcb_private_tests(tests: list[dict]) -> str:
    """The inverse of ``decode_lcb_private_tests`` (for fixtures)."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


_SEPARATOR = re.compile(
    r"^[ \t#]*[-=_*()\[\]<>|~]*[ \t]*(?:input(?:[ \t]*(?:format|specification))?|examples?(?:[ \t]*\d+)?|"
    r"constraints|sample[ \t]*input(?:[ \t]*\d+)?)[ \t]*:?[ \t]*[-=_*()\[\]<>|~]*[ \t]*\r?$|^.*```.*$|^.*-----.*$",
    re.IGNORECASE | re.MULTILINE,
)


def parse_description(problem: str, min_length: int = 10) -> str:
    """The statement part of a coding problem: everything before the first Input/Example/Constraints header."""
    match = _SEPARATOR.search(problem)
    prefix = problem[: match.start()] if match else problem
    prefix = prefix.strip()
    return prefix if len(prefix) >= min_length else problem.strip()


def _signature(starter_code: str) -> str:
    for line in starter_code.splitlines():
        if "def " in line:
            return line.strip()
    return starter_code.strip()


def _as_datetime(value: Any) -> _dt.datetime | None:
    if isinstance(value, _dt.datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, _dt.date):
        return _dt.datetime(value.year, value.month, value.day)
    if isinstance(value, str) and value.strip():
        try:
            return _dt.datetime.fromisoformat(value.strip().replace("Z", "")[:19]).replace(tzinfo=None)
        except ValueError:
            return None
    return None


def in_lcb_window(row: dict, window=LCB_WINDOW) -> bool:
    date = _as_datetime(row.get("contest_date"))
    return date is not None and window[0] <= date < window[1]


def format_lcb_row(row: dict) -> dict:
    """A ``livecodebench/code_generation_lite`` row: question_content, starter_code, metadata, private_test_cases."""
    src = LCB_NAME
    problem = str(_require(row, "question_content", src))
    starter = str(row.get("starter_code") or "")
    if starter.strip():
        problem += f"\n\nYour solution should have the following signature: ```python\n{_signature(starter)}\n```"
    metadata = row.get("metadata") or ""
    if isinstance(metadata, str):
        metadata = json.loads(metadata) if metadata.strip() else {}
    fn_name = metadata.get("func_name", "") or ""
    encoded = row.get("private_test_cases")
    tests = decode_lcb_private_tests(encoded) if encoded else []
    if not tests:  # fall back to the public tests
        public = row.get("public_test_cases") or "[]"
        tests = json.loads(public) if isinstance(public, str) else list(public)
    if not tests:
        raise DataError(f"{src}: problem {row.get('question_id', '?')!r} has no tests")
    return {
        "kind": "code",
        "dataset": "livecodebench",
        "description": parse_description(problem),
        "prompt": CODE_PROMPT.format(problem=problem),
        "tests": json.dumps(
            {
                "inputs": [t["input"] for t in tests],
                "outputs": [t["output"] for t in tests],
                "testtype": tests[0].get("testtype", "stdin"),
                "fn_name": fn_name,
                "time_limit": LCB_TIME_LIMIT,
            },
            ensure_ascii=False,
        ),
    }


def humaneval_description(prompt: str, fn_name: str) -> str:
    """The docstring text of ``fn_name`` up to its first ``>>>`` example (the whole prompt if there is none)."""
    parts = prompt.split(f"def {fn_name}", 1)
    text = parts[1] if len(parts) == 2 else prompt
    for quote in ('"""', "'''"):
        if quote in text:
            return text.split(quote)[1].split(">>>")[0].strip()
    return prompt.strip()


def _code_tests(code: str) -> str:
    return json.dumps(
        {"inputs": [code], "outputs": [""], "testtype": "code", "fn_name": "", "time_limit": EVALPLUS_TIME_LIMIT},
        ensure_ascii=False,
    )


def format_humaneval_row(row: dict, dataset: str = "humanevalplus") -> dict:
    """A HumanEval(+) row: prompt, entry_point, test -> one ``code`` test ``test + "\\ncheck(entry_point)"``."""
    src = dataset
    prefix = str(_require(row, "prompt", src))
    entry_point = str(_require(row, "entry_point", src))
    test = str(_require(row, "test", src))
    return {
        "kind": "code",
        "dataset": dataset,
        "description": humaneval_description(prefix, entry_point),
        "problem": prefix,
        "prompt": CODE_PROMPT.format(problem=HUMANEVAL_TASK.format(prefix=prefix)),
        "tests": _code_tests(test + "\n" + f"check({entry_point})"),
    }


def _mbpp_fn_name(row: dict) -> str:
    if row.get("entry_point"):
        return str(row["entry_point"])
    code = row.get("code") or row.get("canonical_solution") or ""
    match = re.search(r"def\s+(\w+)\s*\(", code)
    if not match:
        raise DataError("mbppplus: row has no 'entry_point' and no 'def name(' in its 'code'")
    return match.group(1)


def format_mbppplus_row(row: dict) -> dict:
    """An MBPP+ row: prompt, code (or entry_point), test_imports, test (or the release file's assertion)."""
    src = "evalplus/mbppplus"
    prompt = str(_require(row, "prompt", src))
    fn_name = _mbpp_fn_name(row)
    if row.get("assertion"):
        test = str(row["assertion"])
    else:
        test = "".join(f"{imp}\n" for imp in (row.get("test_imports") or [])) + str(_require(row, "test", src))
    return {
        "kind": "code",
        "dataset": "mbppplus",
        "description": prompt,
        "problem": prompt,
        "prompt": CODE_PROMPT.format(problem=f"{prompt} The function should be called `{fn_name}`."),
        "tests": _code_tests(test),
    }


def format_gpqa_row(row: dict, seed: int = 0) -> dict:
    """A GPQA row; the four answers are shuffled by a seed derived from (seed, question), so it is reproducible.

    (The release shuffled with the unseeded global RNG: every run gave other answer letters.)
    """
    src = "Idavidrein/gpqa"
    question = str(_require(row, "Question", src))
    correct = _require(row, "Correct Answer", src)
    answers = [correct] + [_require(row, f"Incorrect Answer {i}", src) for i in (1, 2, 3)]
    random.Random(f"{seed}:{question}").shuffle(answers)
    letters = "ABCD"
    options = ", ".join(f"{letter}) {str(text).strip()}" for letter, text in zip(letters, answers))
    return {
        "kind": "gpqa",
        "dataset": "gpqa",
        "description": question,
        "prompt": GPQA_PROMPT.format(problem=question, options=options),
        "answer": letters[answers.index(correct)],
    }


def format_mmlu_pro_row(row: dict) -> dict:
    """An MMLU-Pro row (the evalchemy prompt: subject header, "Question:", lettered options, "Answer: ...")."""
    src = "TIGER-Lab/MMLU-Pro"
    question = str(_require(row, "question", src))
    options = _require(row, "options", src)
    prompt = MMLU_PRO_PROMPT.format(subject=row.get("category", "")) + "Question:\n" + question + "\nOptions:\n"
    prompt += "".join(f"{chr(ord('A') + i)}. {opt}\n" for i, opt in enumerate(options))
    prompt += "Answer: Let's think step by step."
    return {
        "kind": "mmlu_pro",
        "dataset": "mmlu_pro",
        "description": question,
        "prompt": prompt,
        "answer": str(_require(row, "answer", src)),
    }


def format_hmmt_row(row: dict, data_source: str) -> dict:
    problem = str(_require(row, "problem", data_source))
    return {
        "kind": "math",
        "dataset": data_source,
        "description": problem,
        "prompt": HMMT_PROMPT.format(problem=problem),
        "answer": str(_require(row, "answer", data_source)),
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_json_safe(v) for v in value), key=repr)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "tolist"):
        return _json_safe(value.tolist())
    return str(value)


def format_reasoning_gym_entry(entry: dict, task: str, system_prompt: str) -> dict:
    """A reasoning-gym entry (question, answer, metadata) as a record scored by the task's own scorer."""
    answer = entry.get("answer")
    return {
        "kind": "reasoning_gym",
        "dataset": "reasoning_gym",
        "description": str(entry["question"]),
        "prompt": str(entry["question"]),
        "answer": "-" if answer is None else str(answer),
        "system": system_prompt,
        "extra_info": {
            "reasoning_gym_dataset": task,
            "reasoning_gym_entry": json.dumps(_json_safe(entry), ensure_ascii=False),
        },
    }
