#!/usr/bin/env python
"""Metrics JSON -> teacher_metrics_main.png and teacher_metrics_by_bucket.png.

    python analysis/plot_teacher_metrics.py --input DATA/teacher_metrics.json --output-dir DATA/plots

Installed, the same command is ``mopd-plot-teacher-metrics``.
"""

from mopd.analysis.cli import plot_teacher_metrics_main as main

if __name__ == "__main__":
    raise SystemExit(main())
