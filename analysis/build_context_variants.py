#!/usr/bin/env python
"""Candidates + evidence -> one teacher context per (condition, candidate), rendered as training renders it.

    python analysis/build_context_variants.py --candidates DATA/candidate_responses.jsonl \
        --evidence DATA/evidence_items.jsonl --output DATA/context_variants.jsonl

Conditions and peer rules: mopd/analysis/variants.py; docs/analysis.md.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mopd.io import read_jsonl, write_jsonl  # noqa: E402
from mopd.analysis.variants import build_variant_rows, load_variant_config  # noqa: E402
from mopd.config import ConfigError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", required=True)
    p.add_argument("--evidence", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--variant-config", default=None,
                   help="JSON/YAML with 'variants' (the release's format), 'global' and 'teacher_config' "
                        "(self_distillation fields: templates, remove_thinking_from_demonstration, ...)")
    args = p.parse_args(argv)
    try:
        config = load_variant_config(args.variant_config)
        rows = build_variant_rows(read_jsonl(args.candidates), config, read_jsonl(args.evidence))
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_jsonl(args.output, rows)
    effective = Counter(r["condition"] for r in rows if r["effective"])
    total = Counter(r["condition"] for r in rows)
    print(f"{len(rows)} context variants ({len(total)} conditions) -> {args.output}")
    for condition in total:
        print(f"  {condition:45s} {total[condition]:6d} rows, {effective[condition]:6d} effective")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
