"""MOPD: Multi-Rollout On-Policy Distillation. The library the trainer and the tools are built on.

Sub-packages, each holding one kind of thing:

- ``mopd.core``: the algorithm (peer selection, teacher inputs, losses, advantages, KL), pure Python + torch;
  docs/algorithm_core.md gives the exact rules.
- ``mopd.common``: what every part shares (error types, atomic file I/O, model loading, the RL parquet schema).
- ``mopd.rewards``: the verifiers, with the sandbox that runs untrusted code in subprocesses.
- ``mopd.dataprep``, ``mopd.analysis``, ``mopd.diversity``: the pipeline tools behind ``data/``,
  ``analysis/`` and ``diversity/`` (and the ``mopd-*`` console scripts).
- ``mopd.embedded``: the embedded default task, the tiny tokenizer, the demo and the recipe of the base model.

``mopd`` never imports ``workers`` or ``trainer``.
"""

__version__ = "0.1.0"
