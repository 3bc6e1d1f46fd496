"""Preemption: SIGTERM / SIGUSR1 finish the current step, checkpoint it and exit; a second signal, or the
grace deadline, stops at once.

Slurm sends SIGTERM at preemption and at the time limit (then SIGKILL after ``KillWait``, 30 s by default),
and ``--signal=B:USR1@120`` sends SIGUSR1 120 s before the limit. The handler only records the signal (a
flag read between steps), so nothing is interrupted mid-write; the fit loop asks ``requested`` after each
step, writes a checkpoint and raises ``PreemptedError`` (exit ``EXIT_PREEMPTED`` = 75: rerun to resume).

A second signal, or ``trainer.preemption_grace_s`` seconds after the first (a SIGALRM timer), raises
``StopNow`` from the handler, wherever the driver is; the fit loop turns it into ``PreemptedError(immediate=
True)`` (exit 128 + signal). Like KeyboardInterrupt it is a BaseException, so no ``except Exception`` on the
way swallows it; a library that wraps it (DCP's CheckpointException) is looked through (``stop_in``). A save
in progress is aborted by the checkpoint writer's cleanup, and the last complete checkpoint is kept. The
rename that publishes a checkpoint runs inside ``critical()``, where the stop waits until it is done.

Signal handlers live in the main thread of the driver only; workers (Ray actors) keep their own.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator

from mopd.common.errors import EXIT_PREEMPTED, exception_chain

__all__ = ["EXIT_PREEMPTED", "PREEMPTION_SIGNALS", "PreemptionHandler", "StopNow", "stop_in"]

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopNow(BaseException):
    """Raised from a signal handler: stop at once (``exit_code`` = 128 + the signal's number)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def stop_in(err: BaseException) -> BaseException | None:
    """The ``StopNow`` or ``KeyboardInterrupt`` that ``err`` is or wraps, if any."""
    for e in exception_chain(err):
        if isinstance(e, (StopNow, KeyboardInterrupt)):
            return e
    return None


class PreemptionHandler:
    """Installs the handlers on ``install()`` (main thread), restores the previous ones on ``uninstall()``."""

    def __init__(self, grace_s: float | None):
        self.grace_s = grace_s if grace_s and grace_s > 0 else None
        self.signal_name: str | None = None  # the first signal received
        self.received_at: float | None = None
        self._previous: dict[int, object] = {}
        self._in_critical = 0
        self._pending_stop: StopNow | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self) -> PreemptionHandler:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python runs handlers in the main thread only: a fit() driven from elsewhere keeps defaults
        for sig in PREEMPTION_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
            # Restart interrupted system calls: a signal must not make a read/write in C++ code (gloo,
            # tokenizers, the checkpoint writer) fail with EINTR; the handler only sets a flag.
            signal.siginterrupt(sig, False)
        self._previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_deadline)
        return self

    def uninstall(self) -> None:
        if not self._previous:
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    # ------------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is None:
            self.signal_name, self.received_at = name, time.monotonic()
            grace = (
                f"; a second signal or {self.grace_s:g} s stops at once"
                if self.grace_s
                else "; a second signal stops at once"
            )
            print(f"[mopd] {name} received: finishing this step, then a checkpoint and exit{grace}", flush=True)
            if self.grace_s:
                signal.setitimer(signal.ITIMER_REAL, self.grace_s)
            return
        self._stop_now(
            StopNow(f"stopped at once by a second signal ({name} after {self.signal_name})", exit_code=128 + signum)
        )

    def _on_deadline(self, _signum: int, _frame) -> None:
        if self.signal_name is None:  # not ours: a stray SIGALRM
            return
        signum = signal.Signals[self.signal_name].value
        self._stop_now(
            StopNow(
                f"stopped at once: trainer.preemption_grace_s={self.grace_s:g} s passed since {self.signal_name} before "
                "the step and its checkpoint were done",
                exit_code=128 + signum,
            )
        )

    def _stop_now(self, err: StopNow) -> None:
        if self._in_critical:
            self._pending_stop = err  # raised when the critical section ends
            return
        raise err

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A section an immediate stop must not cut in two (publishing a checkpoint: renames, tracker)."""
        self._in_critical += 1
        try:
            yield
        finally:
            self._in_critical -= 1
        if not self._in_critical and self._pending_stop is not None:
            err, self._pending_stop = self._pending_stop, None
            raise err

    def stopped_message(self, step: int, checkpoint: str, resumes: bool) -> str:
        """The one line of a clean stop after a checkpoint."""
        how = "the same command resumes" if resumes else "resume: rerun the same command with trainer.resume_mode=auto"
        return f"stopped by {self.signal_name} after step {step}; checkpoint written: {checkpoint}; {how}"
