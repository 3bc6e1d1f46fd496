"""EvalPlus-style test-only sets (HumanEval+, MBPP+, HMMT) -> RL parquet."""

from __future__ import annotations

from mopd.common.errors import DataError
from mopd.dataprep.formatters import format_hmmt_row, format_humaneval_row, format_mbppplus_row
from mopd.dataprep.schema import DESCRIPTION_SUFFIX, read_records
from mopd.dataprep.to_rl_parquet import records_to_rl_rows, write_rl_parquet

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
        records.append(
            {
                "idx": i,
                "kind": kind,
                "dataset": rec["dataset"],
                "answer": rec.get("answer", "-"),
                "elo": "-",
                "prompt": rec["prompt"],
                "description": rec["description"] + DESCRIPTION_SUFFIX.format(kind=kind),
                "tests": rec.get("tests", "-"),
                "id": str(row.get("task_id", row.get("id", i))),
            }
        )
    rows = records_to_rl_rows(records, "test", input_path)
    write_rl_parquet(rows, output_path)
    return len(rows)
