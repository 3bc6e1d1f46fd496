"""EvalPlus / HMMT release files (JSONL) -> a test-only RL parquet.

    python data/convert_evalplus_to_parquet.py --dataset humaneval --input_path HumanEvalPlus.jsonl \
        --output_path datasets/humanevalplus/test.parquet
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mopd.dataprep import EVALPLUS_DATASETS, ArgumentParser, convert_evalplus, run_cli  # noqa: E402


def main() -> None:
    parser = ArgumentParser(description="Convert EvalPlus-style JSONL benchmark files to parquet.")
    parser.add_argument("--dataset", type=str, required=True, choices=EVALPLUS_DATASETS)
    parser.add_argument("--input_path", type=str, required=True, help="HumanEvalPlus.jsonl, MbppPlus.jsonl or HMMT jsonl")
    parser.add_argument("--output_path", type=str, required=True, help="e.g. datasets/humanevalplus/test.parquet")
    args = parser.parse_args()
    n = convert_evalplus(args.dataset, args.input_path, args.output_path)
    print(f"Converted {n} rows to {args.output_path}")


if __name__ == "__main__":
    run_cli(main)
