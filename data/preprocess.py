"""Records -> RL parquet: DIR/train.json, DIR/test.json -> DIR/train.parquet, DIR/test.parquet.

    python data/preprocess.py --data_source datasets/sciknoweval/chemistry
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mopd.dataprep import ArgumentParser, preprocess, run_cli  # noqa: E402


def main() -> None:
    parser = ArgumentParser(description="Convert train.json/test.json records to verl-style parquet.")
    parser.add_argument("--data_source", type=str, required=True, help="directory holding train.json and/or test.json")
    args = parser.parse_args()
    counts = preprocess(args.data_source)
    for split in ("train", "test"):
        if split in counts:
            print(f"Wrote {counts[split]} rows to {os.path.join(args.data_source, split + '.parquet')}")
        else:
            print(f"No {split}.json in {args.data_source}: no {split}.parquet written")


if __name__ == "__main__":
    run_cli(main)
