#!/usr/bin/env python
"""Regenerate the shipped SciKnowEval parquet: datasets/sciknoweval/{biology,chemistry,material}/{train,test}.parquet.

    python scripts/make_sciknoweval_parquet.py                      # records from ../shared/datasets/sciknoweval
    python scripts/make_sciknoweval_parquet.py --source DIR --out datasets/sciknoweval

The records (DIR/<domain>/{train,test}.json, the release's record schema) are copied into a temporary
folder and converted by the project's own ``data/preprocess.py`` -- the same command a user runs -- so
the shipped files are exactly what ``python data/preprocess.py --data_source ...`` writes. Only the
parquet is kept in the repository (the JSON records stay in shared/). Deterministic: same records,
same bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOMAINS = ("biology", "chemistry", "material")
SPLITS = ("train", "test")


def convert(source: Path, out: Path, domains=DOMAINS) -> dict[str, dict[str, int]]:
    """Run data/preprocess.py on a temp copy of each domain's records; move the parquet into ``out``."""
    counts = {}
    for domain in domains:
        src = source / domain
        missing = [str(src / f"{s}.json") for s in SPLITS if not (src / f"{s}.json").is_file()]
        if missing:
            raise SystemExit(f"make_sciknoweval_parquet: missing records {', '.join(missing)} (--source)")
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp) / domain
            work.mkdir()
            for split in SPLITS:
                shutil.copy(src / f"{split}.json", work / f"{split}.json")
            proc = subprocess.run(
                [sys.executable, str(REPO / "data" / "preprocess.py"), "--data_source", str(work)],
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise SystemExit(f"make_sciknoweval_parquet: data/preprocess.py failed on {src}:\n{proc.stderr}")
            dest = out / domain
            dest.mkdir(parents=True, exist_ok=True)
            counts[domain] = {}
            for split in SPLITS:
                os.replace(work / f"{split}.parquet", dest / f"{split}.parquet")
                n_records = sum(1 for line in (src / f"{split}.json").read_text().splitlines() if line.strip())
                counts[domain][split] = n_records
        print(f"{dest}: train {counts[domain]['train']} rows, test {counts[domain]['test']} rows")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        default=str(REPO.parent / "shared" / "datasets" / "sciknoweval"),
        help="folder with <domain>/train.json and <domain>/test.json",
    )
    parser.add_argument("--out", default=str(REPO / "datasets" / "sciknoweval"))
    args = parser.parse_args()
    convert(Path(args.source), Path(args.out))


if __name__ == "__main__":
    main()
