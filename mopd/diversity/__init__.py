"""Solution-diversity study (paper's diversity table): metrics, input readers, pipeline and plots.

``diversity/compute_metrics.py`` and ``diversity/plot_metrics.py`` call the command lines of ``mopd.diversity.cli``; see
docs/diversity.md. ``mopd.diversity.metrics`` holds the per-group metric definitions.
"""
