#!/usr/bin/env python
"""Teacher scores -> per-prompt ranking metrics, prompt-level means with bootstrap 95% CIs, and a table.

    python analysis/compute_teacher_signal_metrics.py --input DATA/teacher_scores.jsonl \
        --output DATA/teacher_metrics.json --table-output DATA/teacher_metrics_table.md

Metric definitions and sample sets: mopd/analysis/metrics.py; docs/analysis.md.

Installed, the same command is ``mopd-teacher-signal-metrics``.
"""

from mopd.analysis.cli import teacher_signal_metrics_main as main

if __name__ == "__main__":
    raise SystemExit(main())
