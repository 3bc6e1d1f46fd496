"""Same problems, split tests: train.json keeps a seeded half (>= 1) of each problem's tests, test.json all.

    python data/split_tests.py --json_path datasets/lcb_v6.json --output_dir datasets/lcb_v6
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mopd.dataprep import ArgumentParser, run_cli, split_tests  # noqa: E402


def main() -> None:
    parser = ArgumentParser(description="Split each problem's unit tests between train and test.")
    parser.add_argument("--json_path", type=str, required=True, help="code records (JSON array or JSONL)")
    parser.add_argument("--output_dir", type=str, required=True, help="where train.json and test.json go")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test sampling (default 0, as the release)")
    args = parser.parse_args()
    full, kept = split_tests(args.json_path, args.output_dir, args.seed)
    print(f"Saved {args.output_dir}/test.json (all tests) and train.json; mean tests per problem {full:.2f} -> {kept:.2f}")


if __name__ == "__main__":
    run_cli(main)
