"""The record schema (what ``load_dataset`` writes and ``split_*``/``preprocess`` read): its columns,
reading a JSON array or JSONL file of records, and writing one atomically. See the package docstring.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
from collections.abc import Sequence

from mopd.common.errors import DataError
from mopd.common.io import atomic_write_text, dumps_jsonl

RECORD_COLUMNS = ("idx", "kind", "dataset", "answer", "elo", "prompt", "description", "tests", "embedding", "system")
DESCRIPTION_SUFFIX = " The solution will be evaluated in a {kind} environment."


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
def write_records(path: str, records: Sequence[dict], jsonl: bool = False) -> None:
    """Records as a JSON array (``load_dataset``'s output) or JSONL (the split files), atomically."""
    if jsonl:
        atomic_write_text(path, _jsonl_text(records))
    else:
        atomic_write_text(path, json.dumps(list(records), ensure_ascii=False, indent=1) + "\n")


def _jsonl_text(rows: Sequence[dict]) -> str:
    return dumps_jsonl(rows, default=None)  # records are JSON data: a non-JSON value is an error, not a str
