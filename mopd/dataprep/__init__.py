"""Data preparation: benchmark loading, task/test splits, and the record -> RL parquet conversion.

The command-line tools in ``data/`` are thin wrappers around the functions here (docs: ``docs/data.md``).
Modules: ``schema`` (record columns, reading/writing record files), ``formatters`` (per-benchmark prompts
and row formatters), ``loaders`` (the ``BENCHMARKS`` table of loaders, ``load_benchmark``), ``splits``,
``to_rl_parquet`` (records -> RL parquet: ``preprocess``), ``evalplus`` (test-only sets), ``cli``
(the tools' command lines, also the ``mopd-<tool>`` console scripts).

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

from mopd.common.errors import DataError
from mopd.dataprep.cli import ArgumentParser, run_cli
from mopd.dataprep.evalplus import EVALPLUS_DATASETS, convert_evalplus
from mopd.dataprep.formatters import (
    CODE_PROMPT,
    DATASET_NAMES,
    EVALPLUS_TIME_LIMIT,
    GPQA_PROMPT,
    HMMT_PROMPT,
    HUMANEVAL_TASK,
    LCB_NAME,
    LCB_TIME_LIMIT,
    LCB_WINDOW,
    MATH_PROMPT,
    MATH_SETS,
    MMLU_PRO_PROMPT,
    REASONING_GYM_PREFIX,
    SCIKNOWEVAL_DOMAINS,
    SCIKNOWEVAL_SYSTEM_PROMPT,
    decode_lcb_private_tests,
    encode_lcb_private_tests,
    format_gpqa_row,
    format_hmmt_row,
    format_humaneval_row,
    format_lcb_row,
    format_math_row,
    format_mbppplus_row,
    format_mmlu_pro_row,
    format_reasoning_gym_entry,
    format_sciknoweval_row,
    gsm8k_answer,
    humaneval_description,
    in_lcb_window,
    keep_sciknoweval_row,
    parse_description,
)
from mopd.dataprep.loaders import (
    BENCHMARKS,
    download_hf_dataset,
    finalize_records,
    load_benchmark,
    load_gpqa,
    load_humaneval_offline,
    load_humanevalplus,
    load_livecodebench,
    load_math,
    load_mbppplus,
    load_mmlu_pro,
    load_reasoning_gym,
    load_sciknoweval,
)
from mopd.dataprep.schema import DESCRIPTION_SUFFIX, RECORD_COLUMNS, read_records, write_records
from mopd.dataprep.splits import KEEP_SHARE, split_tasks, split_tests
from mopd.dataprep.to_rl_parquet import preprocess, records_to_rl_rows, write_rl_parquet

__all__ = [
    "DataError",
    "DESCRIPTION_SUFFIX",
    "RECORD_COLUMNS",
    "read_records",
    "write_records",
    "CODE_PROMPT",
    "DATASET_NAMES",
    "EVALPLUS_TIME_LIMIT",
    "GPQA_PROMPT",
    "HMMT_PROMPT",
    "HUMANEVAL_TASK",
    "LCB_NAME",
    "LCB_TIME_LIMIT",
    "LCB_WINDOW",
    "MATH_PROMPT",
    "MATH_SETS",
    "MMLU_PRO_PROMPT",
    "REASONING_GYM_PREFIX",
    "SCIKNOWEVAL_DOMAINS",
    "SCIKNOWEVAL_SYSTEM_PROMPT",
    "decode_lcb_private_tests",
    "encode_lcb_private_tests",
    "format_gpqa_row",
    "format_hmmt_row",
    "format_humaneval_row",
    "format_lcb_row",
    "format_math_row",
    "format_mbppplus_row",
    "format_mmlu_pro_row",
    "format_reasoning_gym_entry",
    "format_sciknoweval_row",
    "gsm8k_answer",
    "humaneval_description",
    "in_lcb_window",
    "keep_sciknoweval_row",
    "parse_description",
    "BENCHMARKS",
    "download_hf_dataset",
    "finalize_records",
    "load_benchmark",
    "load_gpqa",
    "load_humaneval_offline",
    "load_humanevalplus",
    "load_livecodebench",
    "load_math",
    "load_mbppplus",
    "load_mmlu_pro",
    "load_reasoning_gym",
    "load_sciknoweval",
    "KEEP_SHARE",
    "split_tasks",
    "split_tests",
    "preprocess",
    "records_to_rl_rows",
    "write_rl_parquet",
    "EVALPLUS_DATASETS",
    "convert_evalplus",
    "ArgumentParser",
    "run_cli",
]
