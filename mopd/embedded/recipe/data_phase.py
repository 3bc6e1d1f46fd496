"""Step 1 of the recipe: the embedded task's parquet splits (``train.parquet`` 2000 / ``test.parquet`` 256
problems from ``mopd.embedded.embedded_task``, seeded), each written atomically.
"""

from __future__ import annotations

from pathlib import Path

from mopd.common.io import atomic_output_path
from mopd.embedded.embedded_task import DATA_SOURCE, make_problems, to_verl_row

N_TRAIN, N_TEST = 2000, 256
DATA_SEED_TRAIN, DATA_SEED_TEST = 1, 2


def write_parquet(rows: list[dict], path: Path) -> None:
    import pandas as pd

    with atomic_output_path(path) as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)


def write_task_splits(out_dir: Path) -> tuple[list[dict], list[dict]]:
    """Write ``out_dir/{train,test}.parquet``; return the train and test problems."""
    train = make_problems("train", N_TRAIN, DATA_SEED_TRAIN)
    test = make_problems("test", N_TEST, DATA_SEED_TEST)
    write_parquet([to_verl_row(p, "train", i) for i, p in enumerate(train)], out_dir / "train.parquet")
    write_parquet([to_verl_row(p, "test", i) for i, p in enumerate(test)], out_dir / "test.parquet")
    print(f"wrote {out_dir}/train.parquet ({len(train)}) and test.parquet ({len(test)}), data_source={DATA_SOURCE}")
    return train, test
