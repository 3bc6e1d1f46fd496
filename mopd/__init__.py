"""MOPD algorithm core: peer selection, teacher inputs and losses (pure Python + torch).

See docs/algorithm_core.md for the exact rules. ``mopd`` never imports ``workers`` or ``trainer``.
"""

from mopd.config import ConfigError, SelfDistillationConfig

__all__ = ["ConfigError", "SelfDistillationConfig"]
__version__ = "0.1.0"
