"""Load a benchmark into the record schema (a JSON array); see docs/data.md.

    python data/load_dataset.py --dataset_name Chemistry --output_path datasets/sciknoweval/chemistry.json
    python data/load_dataset.py --dataset_name humaneval --output_path datasets/humaneval.json          # offline
    python data/load_dataset.py --dataset_name reasoning_gym:basic_arithmetic --num_el 200 --output_path rg.json
    python data/load_dataset.py --download_hf_dataset_name ORG/NAME --download_output_dir DIR
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mopd.dataprep import (  # noqa: E402
    DATASET_NAMES, ArgumentParser, DataError, download_hf_dataset, load_benchmark, run_cli, write_records,
)


def main() -> None:
    parser = ArgumentParser(description="Load a benchmark into the record schema (JSON array).")
    parser.add_argument("--dataset_name", type=str, help="one of: " + ", ".join(DATASET_NAMES))
    parser.add_argument("--output_path", type=str, help="the JSON file to write")
    parser.add_argument("--start_idx", type=int, default=0, help="first record kept")
    parser.add_argument("--num_el", type=int, default=None, help="number of records kept (reasoning_gym: generated; default 100)")
    parser.add_argument("--category", type=str, default=None, help="GPQA high-level domain / MMLU-Pro category")
    parser.add_argument("--embeddings_file", type=str, default=None, help=".npy array, one row per record")
    parser.add_argument("--test_ratio", type=float, default=0.0, help="unused (kept for the release's scripts)")
    parser.add_argument("--seed", type=int, default=42, help="seed for reasoning_gym generation and the GPQA option order")
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
        args.dataset_name, start_idx=args.start_idx, num_el=args.num_el, category=args.category,
        embeddings_file=args.embeddings_file, seed=args.seed,
    )
    if records is None:
        print("Tooluse dataset is already loaded (datasets/tooluse). You can proceed to preprocess it.")
        return
    write_records(args.output_path, records)
    print(f"Wrote {len(records)} records to {args.output_path}")


if __name__ == "__main__":
    run_cli(main)
