"""The project's user-facing error types.

Each one is a mistake or a fault the user can act on, and its message is one line that names the
file, field, flag or worker involved. ``trainer/main.py`` prints such an error as that one line and
exits; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Base: print ``str(err)`` and exit with ``exit_code`` (no traceback)."""

    exit_code = 2
    label = "error"  # the one line reads ``[mopd] <label>: <message>``

    def __init__(self, message: str = "", exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(UserError, ValueError):
    """A bad configuration value; the message names the full key and what is allowed."""

    label = "config error"


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


class PreemptedError(UserError):
    """SIGTERM / SIGUSR1 (a scheduler's preemption or time limit) or Ctrl-C stopped the run.

    ``exit_code`` says what the caller (a Slurm script) should do: ``EXIT_PREEMPTED`` (75, EX_TEMPFAIL:
    a checkpoint of the last step was written, rerun the same command to resume), or 128 + the signal's
    number (143 SIGTERM, 138 SIGUSR1, 130 SIGINT) when the run stopped at once, keeping the last complete
    checkpoint. ``immediate`` is True for the latter.
    """

    label = ""  # the message itself starts with "stopped by ..." / "interrupted ..."
    exit_code = 75

    def __init__(self, message: str = "", exit_code: int | None = None, immediate: bool = False):
        super().__init__(message, exit_code)
        self.immediate = immediate


EXIT_PREEMPTED = PreemptedError.exit_code


class CheckpointError(UserError):
    """A checkpoint could not be written (full disk) or does not verify (a truncated or altered file)."""

    exit_code = 1


class TrainingDivergedError(UserError):
    """The model can no longer learn: its updates keep being skipped, or its weights are non-finite."""

    exit_code = 1


def exception_chain(err: BaseException):
    """``err`` and every error it wraps (``__cause__``, ``__context__``, a worker error's ``cause``, the per-rank
    failures of torch.distributed.checkpoint's ``CheckpointException``), each once."""
    seen, stack = set(), [err]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
        failures = getattr(e, "failures", None)  # {rank: (exception, traceback frames)}
        if isinstance(failures, dict):
            stack += [f[0] if isinstance(f, tuple) and f else f for f in failures.values()]
