"""The MOPD algorithm: peer selection, teacher inputs, losses, advantages and the KL penalty (pure Python + torch).

Imports nothing of the project but ``mopd.common.errors`` and ``mopd.common.typed_config``. See docs/algorithm_core.md for the exact rules.
"""
