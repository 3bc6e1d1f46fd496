"""Records -> RL parquet (verl's schema, read back by ``mopd.common.rl_parquet``): ``preprocess`` turns a folder's
``train.json``/``test.json`` into ``train.parquet``/``test.parquet``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from mopd.common.errors import DataError
from mopd.common.io import atomic_output_path
from mopd.dataprep.schema import read_records

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
            raise DataError(
                f"{where}: field 'idx' {index!r} repeats record {seen[index]} (idx must be unique per file)"
            )
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
        return pa.array(
            [None if v is None else [float(x) for x in v] for v in values], type=pa.large_list(pa.float64())
        )
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
    with atomic_output_path(path) as tmp:
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
