"""Splits of a record file: by task (``split_tasks``) or by each task's tests (``split_tests``)."""

from __future__ import annotations

import json
import math
import os
import random

from mopd.common.errors import DataError
from mopd.common.io import atomic_write_many
from mopd.dataprep.schema import _jsonl_text, read_records

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
    atomic_write_many(
        [
            (os.path.join(output_dir, "train.json"), _jsonl_text(train)),
            (os.path.join(output_dir, "test.json"), _jsonl_text(test)),
        ]
    )
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
    atomic_write_many(
        [
            (os.path.join(output_dir, "train.json"), _jsonl_text(train)),
            (os.path.join(output_dir, "test.json"), _jsonl_text(rows)),
        ]
    )
    return sum(full_counts) / len(rows), sum(kept_counts) / len(rows)
