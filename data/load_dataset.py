"""Load a benchmark into the record schema (a JSON array); see docs/data.md.

    python data/load_dataset.py --dataset_name Chemistry --output_path datasets/sciknoweval/chemistry.json
    python data/load_dataset.py --dataset_name humaneval --output_path datasets/humaneval.json          # offline
    python data/load_dataset.py --dataset_name reasoning_gym:basic_arithmetic --num_el 200 --output_path rg.json
    python data/load_dataset.py --download_hf_dataset_name ORG/NAME --download_output_dir DIR

Installed, the same command is ``mopd-load-dataset``.
"""

from mopd.dataprep.cli import load_dataset_main as main

if __name__ == "__main__":
    main()
