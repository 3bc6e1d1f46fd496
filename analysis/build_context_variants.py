#!/usr/bin/env python
"""Candidates + evidence -> one teacher context per (condition, candidate), rendered as training renders it.

    python analysis/build_context_variants.py --candidates DATA/candidate_responses.jsonl \
        --evidence DATA/evidence_items.jsonl --output DATA/context_variants.jsonl

Conditions and peer rules: mopd/analysis/variants.py; docs/analysis.md.

Installed, the same command is ``mopd-build-context-variants``.
"""

from mopd.analysis.cli import build_context_variants_main as main

if __name__ == "__main__":
    raise SystemExit(main())
