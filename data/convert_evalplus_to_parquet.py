"""EvalPlus / HMMT release files (JSONL) -> a test-only RL parquet.

    python data/convert_evalplus_to_parquet.py --dataset humaneval --input_path HumanEvalPlus.jsonl \
        --output_path datasets/humanevalplus/test.parquet

Installed, the same command is ``mopd-convert-evalplus``.
"""

from mopd.dataprep.cli import convert_evalplus_main as main

if __name__ == "__main__":
    main()
