"""Crash-safe checkpoint directories: atomic file writes and a manager for `global_step_N` dirs.

A checkpoint is written into a hidden temp directory under the checkpoint root, marked with a
`COMPLETE` file and only then renamed to `global_step_N`. Readers (`latest()`, `resume_from_path`)
accept only directories that carry the marker, so a run killed in the middle of a save leaves at
worst an orphaned temp directory, never a half-written checkpoint that looks usable, and the
previous checkpoint is untouched until the new one is in place. Before the marker, a `MANIFEST.json`
records every file's size and CRC-32 and is checked (`trainer/checkpoint_verify.py`); resuming checks it
again and falls back past a corrupt checkpoint (`auto`) or stops (`resume_path`).

One process (rank 0 of the driver) drives a `CheckpointManager`; other ranks may write shards into
the directory that `begin()` returned, but must have finished (barrier) before `commit()`.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

from mopd.common.errors import CheckpointError, ConfigError
from mopd.common.io import atomic_write, atomic_write_text, fsync_dir, fsync_path
from trainer.checkpoint_verify import CheckpointCorrupt, verify, write_manifest

__all__ = [
    "COMPLETE_MARKER",
    "TRACKER_FILE",
    "RESUME_MODES",
    "atomic_torch_save",
    "CheckpointManager",
]

COMPLETE_MARKER = "COMPLETE"
# Same name as verl, so tooling that reads verl's tracker file works on our checkpoint roots.
TRACKER_FILE = "latest_checkpointed_iteration.txt"
RESUME_MODES = ("auto", "disable", "resume_path")

_STEP_DIR_RE = re.compile(r"^global_step_(\d+)$")
# Hidden working dirs: .tmp_ (being written), .old_ (a replaced final dir), .del_ (being pruned).
_WORK_DIR_RE = re.compile(r"^\.(tmp|old|del)_global_step_(\d+)_\d+_[0-9a-f]+$")


# ----------------------------------------------------------------------------- atomic file writes


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save(obj, path)` through a temp file, so a crash never leaves a truncated file."""
    import torch  # local: keeps this module importable (and the tracker cheap) without torch

    return atomic_write(path, lambda f: torch.save(obj, f))


# ----------------------------------------------------------------------------- checkpoint manager


def _fsync_tree(root: Path) -> None:
    """Flush every file under `root` to disk before the COMPLETE marker vouches for them.

    Writers such as `save_pretrained` do not fsync; without this, a power loss right after commit
    could leave a marked-complete directory with empty files.
    """
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync_path(os.path.join(dirpath, name))
        fsync_dir(Path(dirpath))


def _check_step(step: int) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative int, got {step!r}")
    return step


class CheckpointManager:
    """Owns `root/global_step_N` checkpoint dirs and `root/latest_checkpointed_iteration.txt`.

    Usage::

        tmp = manager.begin(step)          # hidden dir under root
        ... write model / optimizer / HF export into tmp ...
        manager.commit(step, tmp)          # -> root/global_step_{step}; prunes old ones

    `max_to_keep`: number of complete checkpoints kept after each commit; None or <= 0 keeps all.
    """

    def __init__(self, root: str | os.PathLike, max_to_keep: int | None = None):
        self.root = Path(root)
        self.max_to_keep = max_to_keep if (max_to_keep is not None and max_to_keep > 0) else None

    # -- paths

    def step_dir(self, step: int) -> Path:
        return self.root / f"global_step_{_check_step(step)}"

    @property
    def tracker_path(self) -> Path:
        return self.root / TRACKER_FILE

    @staticmethod
    def step_from_path(path: str | os.PathLike) -> int:
        """The step number of a `.../global_step_N` directory (e.g. one given as resume_from_path)."""
        match = _STEP_DIR_RE.match(Path(path).name)
        if match is None:
            raise ValueError(f"{str(path)!r} is not a checkpoint directory named global_step_<N>")
        return int(match.group(1))

    @staticmethod
    def is_complete(path: str | os.PathLike) -> bool:
        path = Path(path)
        return path.is_dir() and (path / COMPLETE_MARKER).is_file()

    def _work_dir_name(self, kind: str, step: int) -> str:
        return f".{kind}_global_step_{step}_{os.getpid()}_{secrets.token_hex(4)}"

    def _work_dirs(self, step: int | None = None, kinds: tuple[str, ...] = ("tmp", "old", "del")):
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            match = _WORK_DIR_RE.match(entry.name)
            if match and match.group(1) in kinds and (step is None or int(match.group(2)) == step):
                found.append(entry)
        return found

    # -- writing

    def begin(self, step: int) -> Path:
        """Create a fresh hidden temp dir for `step`, removing leftovers of earlier tries at it."""
        _check_step(step)
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self._work_dirs(step):
            shutil.rmtree(stale, ignore_errors=True)
        for trash in self._work_dirs(kinds=("del",)):  # interrupted prunes of any step
            shutil.rmtree(trash, ignore_errors=True)
        tmp = self.root / self._work_dir_name("tmp", step)
        tmp.mkdir()
        return tmp

    def commit(self, step: int, tmp_dir: str | os.PathLike) -> Path:
        """Mark `tmp_dir` complete, move it to `step_dir(step)`, update the tracker, prune.

        Pruning keeps the `max_to_keep` newest complete checkpoints, except that the one just
        committed is never deleted (it is kept even when newer steps exist, e.g. after resuming
        from an older checkpoint with resume_path).
        """
        _check_step(step)
        tmp_dir = self._own_work_dir(tmp_dir, "tmp")
        if not tmp_dir.is_dir():
            raise FileNotFoundError(f"checkpoint temp dir {str(tmp_dir)!r} does not exist (aborted twice?)")
        _fsync_tree(tmp_dir)
        # Sizes and CRC-32s first, then checked (a write the filesystem lost shows here, before the
        # checkpoint is published or an older one pruned); the marker vouches for a verified directory.
        write_manifest(tmp_dir)
        verify(tmp_dir)
        atomic_write_text(tmp_dir / COMPLETE_MARKER, f"{step}\n")

        final = self.step_dir(step)
        aside = None
        if final.exists():
            aside = self.root / self._work_dir_name("old", step)
            os.replace(final, aside)
        os.replace(tmp_dir, final)
        fsync_dir(self.root)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)

        atomic_write_text(self.tracker_path, f"{step}\n")
        self._prune(keep=step)
        return final

    def abort(self, tmp_dir: str | os.PathLike) -> None:
        """Discard an uncommitted temp dir (no-op if it is already gone)."""
        shutil.rmtree(self._own_work_dir(tmp_dir, "tmp"), ignore_errors=True)

    def _own_work_dir(self, path: str | os.PathLike, kind: str) -> Path:
        # Guard: commit()/abort() must only ever move or delete a temp dir this manager made.
        path = Path(path)
        match = _WORK_DIR_RE.match(path.name)
        if match is None or match.group(1) != kind or path.parent.resolve() != self.root.resolve():
            raise ValueError(f"{str(path)!r} is not a checkpoint temp dir returned by begin() under {str(self.root)!r}")
        return path

    def _prune(self, keep: int) -> None:
        if self.max_to_keep is None:
            return
        others = [s for s in self.complete_steps() if s != keep]
        doomed = others[: max(0, len(others) - (self.max_to_keep - 1))]
        for step in doomed:
            # Rename first so a crash mid-delete never leaves a marked-complete, half-deleted dir.
            trash = self.root / self._work_dir_name("del", step)
            os.replace(self.step_dir(step), trash)
            shutil.rmtree(trash, ignore_errors=True)

    # -- reading

    def complete_steps(self) -> list[int]:
        """Steps of `global_step_N` dirs that carry the COMPLETE marker, ascending."""
        if not self.root.is_dir():
            return []
        steps = []
        for entry in self.root.iterdir():
            match = _STEP_DIR_RE.match(entry.name)
            if match and self.is_complete(entry):
                steps.append(int(match.group(1)))
        return sorted(steps)

    def latest(self) -> tuple[int, Path] | None:
        """(step, path) of the checkpoint to resume from, or None when there is none.

        The tracker file wins when it names a complete checkpoint (it records the last commit,
        which may be older than other dirs after a resume_path restart); otherwise the highest
        complete step.
        """
        try:
            tracked = int(self.tracker_path.read_text().strip())
        except (OSError, ValueError):
            tracked = None
        if tracked is not None and tracked >= 0 and self.is_complete(self.step_dir(tracked)):
            return tracked, self.step_dir(tracked)
        steps = self.complete_steps()
        if not steps:
            return None
        return steps[-1], self.step_dir(steps[-1])

    def resolve_resume(
        self,
        mode: str,
        resume_path: str | os.PathLike | None,
        warn=lambda line: print(line, file=sys.stderr, flush=True),
    ) -> Path | None:
        """The checkpoint dir to resume from for `trainer.resume_mode`, or None to start fresh.

        Every candidate is verified against its manifest first. `auto`: the newest that verifies; each
        newer one that does not is reported through `warn` (one line naming the bad file) and skipped, and
        when none verifies the run stops rather than silently starting over. `resume_path`: a corrupt
        checkpoint stops with that line.
        """
        if mode == "disable":
            return None
        if mode == "auto":
            return self._newest_verified(warn)
        if mode == "resume_path":
            if resume_path is None or str(resume_path) == "":
                raise ConfigError(
                    "trainer.resume_from_path must be set when trainer.resume_mode=resume_path "
                    "(a global_step_<N> directory)"
                )
            path = Path(resume_path)
            if not path.is_dir():
                raise ConfigError(f"trainer.resume_from_path: {str(path)!r} does not exist or is not a directory")
            if not (path / COMPLETE_MARKER).is_file():
                raise ConfigError(
                    f"trainer.resume_from_path: {str(path)!r} has no {COMPLETE_MARKER} marker; "
                    "the save was interrupted or the directory is not a checkpoint of this trainer"
                )
            try:
                verify(path)
            except CheckpointCorrupt as err:
                raise CheckpointError(
                    f"trainer.resume_from_path: checkpoint {path} is corrupt: {err}; point "
                    "trainer.resume_from_path at another global_step_<N> directory"
                ) from None
            return path
        raise ConfigError(f"trainer.resume_mode: unknown mode {mode!r}; allowed: {list(RESUME_MODES)}")

    def _newest_verified(self, warn) -> Path | None:
        found = self.latest()
        if found is None:
            return None
        candidates = [found[0]] + [s for s in reversed(self.complete_steps()) if s < found[0]]
        bad: list[str] = []  # one line per corrupt checkpoint, the last one also says where the run resumes
        first_error = None
        for step in candidates:
            path = self.step_dir(step)
            try:
                verify(path)
            except CheckpointCorrupt as err:
                bad.append(f"[mopd] checkpoint {path} is corrupt: {err}")
                first_error = first_error or err
                continue
            for line in bad[:-1]:
                warn(line)
            if bad:
                warn(
                    f"{bad[-1]}; resuming from {path}, the newest checkpoint that verifies (the corrupt one stays "
                    "on disk for inspection)"
                )
            return path
        for line in bad[1:]:
            warn(line)
        raise CheckpointError(
            f"no checkpoint under {self.root} verifies (the newest: {first_error}; older ones "
            "above); move the directory aside to start over, or set trainer.resume_mode=disable"
        )
