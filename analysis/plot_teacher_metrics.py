#!/usr/bin/env python
"""Metrics JSON -> teacher_metrics_main.png and teacher_metrics_by_bucket.png.

    python analysis/plot_teacher_metrics.py --input DATA/teacher_metrics.json --output-dir DATA/plots
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mopd.analysis.metrics import DEFAULT_SAMPLE_SET, SAMPLE_SETS  # noqa: E402
from mopd.analysis.plots import plot_all  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="metrics JSON of compute_teacher_signal_metrics.py")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--sample-set", default=DEFAULT_SAMPLE_SET, choices=list(SAMPLE_SETS))
    args = p.parse_args(argv)
    try:
        result = json.loads(Path(args.input).read_text(encoding="utf-8"))
        paths = plot_all(result, args.output_dir, sample_set=args.sample_set)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
