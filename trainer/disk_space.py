"""A full disk: know a checkpoint's size before writing it, and turn a failed write into one line.

A checkpoint's expected size is the previous one's (its manifest's total), or before the first save an
estimate from the model: ``params * 4 bytes * (1 master copy + 2 Adam moments + 1 HF export + 1 if a
teacher copy is saved)``, float32 throughout (the embedded default: 1.02 M parameters -> 16.3 MB
estimated, 16.8 MB written). A failed write is a full disk when its error (or one it wraps: DCP and
torch.save's zip writer hide the OSError) is ENOSPC/EDQUOT, or when the filesystem has less room left than
the checkpoint needs: ``torch.save`` reports ENOSPC as ``unexpected pos 704 vs 598``.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from mopd.common.errors import CheckpointError, exception_chain

__all__ = ["disk_full_error", "estimate_checkpoint_bytes", "free_bytes", "is_disk_full", "mb", "raise_if_disk_full"]

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def mb(num_bytes: int | None) -> str:
    return "an unknown size" if num_bytes is None else f"{num_bytes / 1e6:.1f} MB"


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes available to this user on the filesystem holding ``path`` (its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def estimate_checkpoint_bytes(params: int, saves_teacher_copy: bool) -> int:
    return int(params) * 4 * (4 + int(saves_teacher_copy))


def is_disk_full(err: BaseException, free: int | None, needed: int | None) -> bool:
    for e in exception_chain(err):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
    return free is not None and needed is not None and free < needed


def disk_full_error(what: str, path: str | os.PathLike, needed: int | None, basis: str = "") -> CheckpointError:
    free = free_bytes(path)
    basis = f" ({basis})" if basis else ""
    need = "" if needed is None else f", it needs {mb(needed)}{basis}"
    return CheckpointError(
        f"{what} could not be written to {path}: no space left on the device ({mb(free)} free{need}); free some "
        "space or point the run at a larger disk, then rerun the same command (it resumes from the last "
        "complete checkpoint)"
    )


def raise_if_disk_full(
    err: BaseException, what: str, path: str | os.PathLike, needed: int | None = None, basis: str = ""
) -> None:
    """Raise the one-line ``CheckpointError`` when ``err`` is a full disk; return otherwise (re-raise it)."""
    if is_disk_full(err, free_bytes(path), needed):
        raise disk_full_error(what, path, needed, basis) from None
