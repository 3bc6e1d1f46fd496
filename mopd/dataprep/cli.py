"""The ``data/`` tools' command lines: one-line argparse errors, ``DataError`` -> exit status, and one
``<tool>_main`` per tool (the target of ``data/<tool>.py`` and of its ``mopd-<tool>`` console script).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from mopd.common.errors import DataError

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


# ---------------------------------------------------------------------------------------------------
# The tools (``data/<tool>.py`` and the ``mopd-<tool>`` console scripts call these). Each console-script
# target wraps its tool in ``run_cli``; the tool functions themselves raise ``DataError``.


def _load_dataset() -> None:
    from mopd.dataprep.formatters import DATASET_NAMES
    from mopd.dataprep.loaders import download_hf_dataset, load_benchmark
    from mopd.dataprep.schema import write_records

    parser = ArgumentParser(description="Load a benchmark into the record schema (JSON array).")
    parser.add_argument("--dataset_name", type=str, help="one of: " + ", ".join(DATASET_NAMES))
    parser.add_argument("--output_path", type=str, help="the JSON file to write")
    parser.add_argument("--start_idx", type=int, default=0, help="first record kept")
    parser.add_argument(
        "--num_el", type=int, default=None, help="number of records kept (reasoning_gym: generated; default 100)"
    )
    parser.add_argument("--category", type=str, default=None, help="GPQA high-level domain / MMLU-Pro category")
    parser.add_argument("--embeddings_file", type=str, default=None, help=".npy array, one row per record")
    parser.add_argument("--test_ratio", type=float, default=0.0, help="unused (kept for the release's scripts)")
    parser.add_argument(
        "--seed", type=int, default=42, help="seed for reasoning_gym generation and the GPQA option order"
    )
    parser.add_argument("--download_hf_dataset_name", type=str, default=None, help="hub dataset to save as parquet")
    parser.add_argument("--download_output_dir", type=str, default=None, help="where <split>.parquet files go")
    args = parser.parse_args()

    if args.download_hf_dataset_name is not None or args.download_output_dir is not None:
        if args.download_hf_dataset_name is None or args.download_output_dir is None:
            raise DataError("--download_hf_dataset_name and --download_output_dir must be given together")
        for path in download_hf_dataset(args.download_hf_dataset_name, args.download_output_dir):
            print(f"Saved {path}")
        return
    if not args.dataset_name:
        raise DataError("--dataset_name is required (or --download_hf_dataset_name with --download_output_dir)")
    if args.dataset_name != "tooluse" and not args.output_path:
        raise DataError("--output_path is required")
    records = load_benchmark(
        args.dataset_name,
        start_idx=args.start_idx,
        num_el=args.num_el,
        category=args.category,
        embeddings_file=args.embeddings_file,
        seed=args.seed,
    )
    if records is None:
        print("Tooluse dataset is already loaded (datasets/tooluse). You can proceed to preprocess it.")
        return
    write_records(args.output_path, records)
    print(f"Wrote {len(records)} records to {args.output_path}")


def _preprocess() -> None:
    from mopd.dataprep.to_rl_parquet import preprocess

    parser = ArgumentParser(description="Convert train.json/test.json records to verl-style parquet.")
    parser.add_argument("--data_source", type=str, required=True, help="directory holding train.json and/or test.json")
    args = parser.parse_args()
    counts = preprocess(args.data_source)
    for split in ("train", "test"):
        if split in counts:
            print(f"Wrote {counts[split]} rows to {os.path.join(args.data_source, split + '.parquet')}")
        else:
            print(f"No {split}.json in {args.data_source}: no {split}.parquet written")


def _split_tasks() -> None:
    from mopd.dataprep.splits import split_tasks

    parser = ArgumentParser(description="Disjoint train/test split of the problems.")
    parser.add_argument("--json_path", type=str, required=True, help="records (JSON array or JSONL)")
    parser.add_argument("--output_dir", type=str, required=True, help="where train.json and test.json go")
    parser.add_argument("--test_ratio", type=float, required=True, help="share of problems in test (0 < r < 1)")
    parser.add_argument("--seed", type=int, required=True, help="seed of the split")
    args = parser.parse_args()
    n_train, n_test = split_tasks(args.json_path, args.output_dir, args.test_ratio, args.seed)
    print(f"Saved {n_train} train and {n_test} test records to {args.output_dir}/train.json, test.json")


def _split_tests() -> None:
    from mopd.dataprep.splits import split_tests

    parser = ArgumentParser(description="Split each problem's unit tests between train and test.")
    parser.add_argument("--json_path", type=str, required=True, help="code records (JSON array or JSONL)")
    parser.add_argument("--output_dir", type=str, required=True, help="where train.json and test.json go")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test sampling (default 0, as the release)")
    args = parser.parse_args()
    full, kept = split_tests(args.json_path, args.output_dir, args.seed)
    print(
        f"Saved {args.output_dir}/test.json (all tests) and train.json; mean tests per problem {full:.2f} -> {kept:.2f}"
    )


def _convert_evalplus() -> None:
    from mopd.dataprep.evalplus import EVALPLUS_DATASETS, convert_evalplus

    parser = ArgumentParser(description="Convert EvalPlus-style JSONL benchmark files to parquet.")
    parser.add_argument("--dataset", type=str, required=True, choices=EVALPLUS_DATASETS)
    parser.add_argument(
        "--input_path", type=str, required=True, help="HumanEvalPlus.jsonl, MbppPlus.jsonl or HMMT jsonl"
    )
    parser.add_argument("--output_path", type=str, required=True, help="e.g. datasets/humanevalplus/test.parquet")
    args = parser.parse_args()
    n = convert_evalplus(args.dataset, args.input_path, args.output_path)
    print(f"Converted {n} rows to {args.output_path}")


def load_dataset_main() -> None:
    """``data/load_dataset.py`` / ``mopd-load-dataset``: a benchmark -> records (JSON array)."""
    run_cli(_load_dataset)


def preprocess_main() -> None:
    """``data/preprocess.py`` / ``mopd-preprocess``: DIR/{train,test}.json -> DIR/{train,test}.parquet."""
    run_cli(_preprocess)


def split_tasks_main() -> None:
    """``data/split_tasks.py`` / ``mopd-split-tasks``: disjoint train/test problems."""
    run_cli(_split_tasks)


def split_tests_main() -> None:
    """``data/split_tests.py`` / ``mopd-split-tests``: same problems, each problem's tests split."""
    run_cli(_split_tests)


def convert_evalplus_main() -> None:
    """``data/convert_evalplus_to_parquet.py`` / ``mopd-convert-evalplus``: EvalPlus/HMMT JSONL -> parquet."""
    run_cli(_convert_evalplus)
