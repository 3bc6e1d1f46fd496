"""Writing one checkpoint with its faults handled: free space checked before, a full disk as one line after.

``CheckpointWriter.save(step, write)`` runs ``write(tmp_dir)`` (the workers' shards, the HF export, the
driver's state) into the manager's hidden temp dir and commits it. Before writing it compares the free
space with the checkpoint's expected size (the previous checkpoint's, else an estimate from the model): a
measured size that does not fit stops the run before anything is written; an estimate that does not fit
only warns (it may be off). After each save it warns, once, when the next one will not fit. A write that
fails on a full disk removes the partial directory and raises ``CheckpointError`` naming the path, the free
space and the size needed; the previous checkpoint is untouched (the manager never replaces it before the
new one is complete).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from mopd.common.errors import CheckpointError, UserError
from trainer.checkpoint import CheckpointManager
from trainer.checkpoint_verify import CheckpointCorrupt, manifest_total_bytes
from trainer.disk_space import disk_full_error, free_bytes, is_disk_full, mb
from trainer.preemption import stop_in

__all__ = ["CheckpointWriter"]


class CheckpointWriter:
    def __init__(self, manager: CheckpointManager, estimated_bytes: int | None, critical=None):
        self.manager = manager
        self.estimated_bytes = estimated_bytes
        self._critical = critical  # a context manager factory: the preemption handler's critical()
        self._warned_next = False

    def expected(self) -> tuple[int | None, str]:
        """(bytes, how it is known) of the next checkpoint: the newest written one's size, else the estimate."""
        latest = self.manager.latest()
        if latest is not None:
            size = manifest_total_bytes(latest[1])
            if size:
                return size, f"measured from step {latest[0]}"
        return self.estimated_bytes, "estimated from the model's parameters"

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        needed, basis = self.expected()
        free = free_bytes(self.manager.root)
        what = f"checkpoint step {step}"
        if needed is not None and free is not None and free < needed:
            if basis.startswith("measured"):
                raise disk_full_error(what, self.manager.root, needed, basis)
            _warn(
                f"[mopd] {what}: {mb(free)} free under {self.manager.root}, the checkpoint needs about "
                f"{mb(needed)} ({basis}); trying anyway"
            )
        tmp = self.manager.begin(step)
        try:
            write(tmp)
            if self._critical is None:
                final = self.manager.commit(step, tmp)
            else:
                with self._critical():
                    final = self.manager.commit(step, tmp)
        except CheckpointCorrupt as err:  # the verification after writing: the filesystem lost a write
            self.manager.abort(tmp)
            if is_disk_full(err, free_bytes(tmp.parent), None):
                raise disk_full_error(what, self.manager.root, needed, basis) from None
            raise CheckpointError(
                f"{what} did not verify after writing ({err}); the previous checkpoint is "
                f"kept; check the filesystem under {self.manager.root}"
            ) from None
        except BaseException as err:
            # Not a stop (Ctrl-C, a second signal: maybe wrapped by DCP, whose CheckpointException is a BaseException).
            stop = isinstance(err, (SystemExit, GeneratorExit, UserError)) or stop_in(err) is not None
            full = not stop and is_disk_full(err, free_bytes(tmp.parent), needed)
            self.manager.abort(tmp)  # free the partial directory first: the line reports what is left
            if full:
                raise disk_full_error(what, self.manager.root, needed, basis) from None
            raise
        self._warn_if_next_will_not_fit(final, step)
        return final

    def _warn_if_next_will_not_fit(self, final: Path, step: int) -> None:
        size, free = manifest_total_bytes(final), free_bytes(self.manager.root)
        if self._warned_next or size is None or free is None or free >= size:
            return
        self._warned_next = True
        keep = self.manager.max_to_keep
        hint = (
            ""
            if keep != 1
            else " (the previous one is removed only after the next is complete, so two must fit at once)"
        )
        _warn(
            f"[mopd] warning: the next checkpoint will not fit under {self.manager.root}: {mb(free)} free, "
            f"a checkpoint is {mb(size)} (step {step}){hint}; free some space or the run will stop at the next "
            "save"
        )


def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
