"""Plots of a diversity/compute_metrics.py output directory (PNG; see docs/diversity.md).

    python diversity/plot_metrics.py --input diversity_outputs --output-dir diversity_outputs/plots

Writes passk_curve.png, method_diversity_bars.png, diversity_vs_passk.png, success_diversity_vs_passk.png.

Installed, the same command is ``mopd-diversity-plots``.
"""

from mopd.diversity.cli import plot_metrics_main as main

if __name__ == "__main__":
    main()
