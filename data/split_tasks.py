"""Split records into disjoint train/test problems (train.json / test.json, JSONL); see docs/data.md.

    python data/split_tasks.py --json_path datasets/sciknoweval/chemistry.json \
        --output_dir datasets/sciknoweval/chemistry --test_ratio 0.1 --seed 42
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mopd.dataprep import ArgumentParser, run_cli, split_tasks  # noqa: E402


def main() -> None:
    parser = ArgumentParser(description="Disjoint train/test split of the problems.")
    parser.add_argument("--json_path", type=str, required=True, help="records (JSON array or JSONL)")
    parser.add_argument("--output_dir", type=str, required=True, help="where train.json and test.json go")
    parser.add_argument("--test_ratio", type=float, required=True, help="share of problems in test (0 < r < 1)")
    parser.add_argument("--seed", type=int, required=True, help="seed of the split")
    args = parser.parse_args()
    n_train, n_test = split_tasks(args.json_path, args.output_dir, args.test_ratio, args.seed)
    print(f"Saved {n_train} train and {n_test} test records to {args.output_dir}/train.json, test.json")


if __name__ == "__main__":
    run_cli(main)
