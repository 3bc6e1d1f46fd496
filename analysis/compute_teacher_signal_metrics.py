#!/usr/bin/env python
"""Teacher scores -> per-prompt ranking metrics, prompt-level means with bootstrap 95% CIs, and a table.

    python analysis/compute_teacher_signal_metrics.py --input DATA/teacher_scores.jsonl \
        --output DATA/teacher_metrics.json --table-output DATA/teacher_metrics_table.md

Metric definitions and sample sets: mopd/analysis/metrics.py; docs/analysis.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mopd.io import atomic_write_text as write_text, read_jsonl, write_json  # noqa: E402
from mopd.analysis.metrics import DEFAULT_SAMPLE_SET, SAMPLE_SETS, compute_all, render_tables  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="teacher_scores.jsonl")
    p.add_argument("--output", required=True, help="metrics JSON")
    p.add_argument("--num-bootstrap", type=int, default=2000, help="prompt-level bootstrap resamples (0: no CIs)")
    p.add_argument("--seed", type=int, default=12345, help="bootstrap seed")
    p.add_argument("--table-output", default=None, help="markdown table (default <output stem>_table.md); a .csv beside it")
    p.add_argument("--sample-set", "--table-sample-set", dest="sample_set", default=DEFAULT_SAMPLE_SET,
                   choices=list(SAMPLE_SETS), help="the sample set shown in the table")
    p.add_argument("--degenerate", choices=["zero", "skip"], default="zero",
                   help="undefined per-prompt statistics: 0 (the release) or left out of the means")
    p.add_argument("--per-prompt", action="store_true", help="also store every prompt's metrics in the JSON")
    args = p.parse_args(argv)
    try:
        rows = read_jsonl(args.input)
        if not rows:
            raise ValueError(f"{args.input} has no scored rows")
        result = compute_all(rows, num_bootstrap=args.num_bootstrap, seed=args.seed, degenerate=args.degenerate,
                             per_prompt=args.per_prompt)
        result["input"] = args.input
        md, csv = render_tables(result, args.sample_set)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.output)
    write_json(out, result)
    md_path = Path(args.table_output) if args.table_output else out.with_name(f"{out.stem}_table.md")
    write_text(md_path, md)
    write_text(md_path.with_suffix(".csv"), csv)
    print(md)
    print(f"metrics -> {out}; table -> {md_path} and {md_path.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
