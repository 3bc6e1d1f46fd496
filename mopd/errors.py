"""The project's user-facing error types.

Each one is a mistake or a fault the user can act on, and its message is one line that names the
file, field, flag or worker involved. ``trainer/main.py`` prints such an error as that one line and
exits; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Base: print ``str(err)`` and exit with ``exit_code`` (no traceback)."""

    exit_code = 2

    def __init__(self, message: str = "", exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(UserError, ValueError):
    """A bad configuration value; the message names the full key and what is allowed."""


class DataError(UserError, ValueError):
    """A data file or row that cannot be used; the message names the file/field."""


class RewardError(UserError):
    """Every reward of a step errored: the verifier, not the policy, is broken."""

    exit_code = 1


class WorkerDiedError(UserError):
    """A worker process died mid-run; the message names its rank and exit cause."""

    exit_code = 1

    def __init__(self, message: str = "", rank: int | None = None):
        super().__init__(message)
        self.rank = rank


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder named by a config key does not exist; the message names the key and the path."""
