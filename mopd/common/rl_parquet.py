"""The RL parquet schema (verl's) and its validation.

One row per prompt:
- ``data_source`` (str): picks the verifier in ``mopd.rewards``;
- ``prompt``: the chat, a non-empty list of ``{"role": str, "content": str}`` messages;
- ``reward_model``: a struct with ``ground_truth`` (and usually ``style``);
- optional ``extra_info``: a struct (``index`` is the prompt's stable id; ``split``, ``problem``, ...);
- any other columns (``ability``, ...) are kept as they are.

Errors name the config key the file came from, the file, and the row/field at fault, so a user can fix
the data without reading a traceback.
"""

from __future__ import annotations

import os
from typing import Any

from mopd.common.errors import DataError, MissingFileError

REQUIRED_COLUMNS = ("data_source", "prompt", "reward_model")


def read_rl_parquet(path: str | os.PathLike, key: str = "data.train_files") -> list[dict]:
    """Read and validate one RL parquet file; rows as plain Python dicts, in file order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"{key}: no such file: {path}")
    if os.path.isdir(path):
        raise DataError(f"{key}: {path} is a directory; expected a parquet file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{key}: cannot read {path} as a parquet file ({type(exc).__name__}: {exc})") from exc

    present = table.column_names
    for column in REQUIRED_COLUMNS:
        if column not in present:
            raise DataError(
                f"{key}: {path} has no column {column!r} (required: {', '.join(REQUIRED_COLUMNS)}); "
                f"columns present: {present}"
            )
    if table.num_rows == 0:
        raise DataError(f"{key}: {path} has no rows")

    rows = table.to_pylist()
    for i, row in enumerate(rows):
        problem = _row_problem(row)
        if problem is not None:
            field, message = problem
            raise DataError(f"{key}: {path} row {i} (0-based), field {field!r}: {message}")
    return rows


def _row_problem(row: dict) -> tuple[str, str] | None:
    """(field, what is wrong) for the first problem in a row, or None."""
    data_source = row.get("data_source")
    if not isinstance(data_source, str) or not data_source:
        return "data_source", f"must be a non-empty string, got {_show(data_source)}"

    prompt = row.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        return "prompt", f"must be a non-empty list of {{role, content}} messages, got {_show(prompt)}"
    for j, message in enumerate(prompt):
        if not isinstance(message, dict):
            return "prompt", f"message {j} must be a {{role, content}} dict, got {_show(message)}"
        for part in ("role", "content"):
            if not isinstance(message.get(part), str):
                return "prompt", f"message {j} needs a string {part!r}, got {_show(message.get(part))}"

    reward_model = row.get("reward_model")
    if not isinstance(reward_model, dict):
        return "reward_model", f"must be a struct with 'ground_truth', got {_show(reward_model)}"
    if reward_model.get("ground_truth") is None:
        return "reward_model", "has no 'ground_truth' (missing or null)"

    extra_info = row.get("extra_info")
    if extra_info is not None and not isinstance(extra_info, dict):
        return "extra_info", f"must be a struct (dict) or null, got {_show(extra_info)}"
    return None


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"
