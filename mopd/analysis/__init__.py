"""The teacher-signal analysis (paper §5.3): does a teacher context rank a prompt's rollouts by reward?

Pipeline (each stage is a module here, its command line in :mod:`mopd.analysis.cli`, called by a thin script in
``analysis/`` and a ``mopd-*`` console script; rules in ``docs/analysis.md``):

1. :mod:`mopd.analysis.dataset` — rollout dumps -> candidate responses + evidence items (prompt ids stable
   across steps, difficulty buckets).
2. :mod:`mopd.analysis.variants` — one teacher context per (condition, candidate), rendered with the
   training templates and peer rules (``mopd.core.peers`` / ``mopd.core.reprompt``).
3. :mod:`mopd.analysis.scoring` — teacher score = mean log-prob of the response under each context.
4. :mod:`mopd.analysis.metrics` — per-prompt rank/calibration metrics, prompt-level means with bootstrap CIs.
5. :mod:`mopd.analysis.plots` — bar charts with CI whiskers.
"""
