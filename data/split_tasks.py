"""Split records into disjoint train/test problems (train.json / test.json, JSONL); see docs/data.md.

    python data/split_tasks.py --json_path datasets/sciknoweval/chemistry.json \
        --output_dir datasets/sciknoweval/chemistry --test_ratio 0.1 --seed 42

Installed, the same command is ``mopd-split-tasks``.
"""

from mopd.dataprep.cli import split_tasks_main as main

if __name__ == "__main__":
    main()
