"""Same problems, split tests: train.json keeps a seeded half (>= 1) of each problem's tests, test.json all.

    python data/split_tests.py --json_path datasets/lcb_v6.json --output_dir datasets/lcb_v6

Installed, the same command is ``mopd-split-tests``.
"""

from mopd.dataprep.cli import split_tests_main as main

if __name__ == "__main__":
    main()
