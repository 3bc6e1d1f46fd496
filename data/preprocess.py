"""Records -> RL parquet: DIR/train.json, DIR/test.json -> DIR/train.parquet, DIR/test.parquet.

    python data/preprocess.py --data_source datasets/sciknoweval/chemistry

Installed, the same command is ``mopd-preprocess``.
"""

from mopd.dataprep.cli import preprocess_main as main

if __name__ == "__main__":
    main()
