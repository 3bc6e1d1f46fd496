#!/usr/bin/env python
"""Rollout dumps -> candidate_responses.jsonl, evidence_items.jsonl, dataset_summary.json.

    python analysis/prepare_rollout_dataset.py --input outputs/run/rollouts --output-dir outputs/ana/data

Logic and field list: mopd/analysis/dataset.py; docs/analysis.md.

Installed, the same command is ``mopd-prepare-rollouts``.
"""

from mopd.analysis.cli import prepare_rollout_dataset_main as main

if __name__ == "__main__":
    raise SystemExit(main())
