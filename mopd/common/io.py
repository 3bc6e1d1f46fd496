"""Files written atomically, and JSON / JSONL in UTF-8: the one home for both.

Every writer goes through a temporary file beside the target, flushed to disk, then ``os.replace``: a
reader (or a crash) sees the old file or the new one, never half of one. Used by checkpoints, tracking,
rollout dumps, the data tools, the analysis stages and the embedded-default builder.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "atomic_output_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_many",
    "atomic_write_text",
    "dumps_jsonl",
    "fsync_dir",
    "fsync_path",
    "read_jsonl",
    "write_json",
    "write_jsonl",
]


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file or directory to disk; a no-op where it cannot be opened (directories on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable."""
    fsync_path(path)


@functools.lru_cache(maxsize=1)
def _default_file_mode() -> int:
    # mkstemp creates 0600 files; give the result the mode a plain open() would have given it.
    # Read the umask from /proc where possible: os.umask(0) briefly changes it for all threads.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _temp_beside(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def _remove_quietly(name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name)


@contextlib.contextmanager
def atomic_output_path(path: str | os.PathLike) -> Iterator[str]:
    """A temp path beside ``path`` for writers that want a file name (parquet); replaces ``path`` on success."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write via ``write(binary_file)`` into a temp file next to ``path``, fsync, then ``os.replace``."""
    with atomic_output_path(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically: readers see the old content or the new, never a mix."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_many(outputs: Sequence[tuple[str | os.PathLike, str]]) -> None:
    """Write several text files so that either all are replaced or none: every temp first, then the renames."""
    temps: list[str] = []
    try:
        for path, text in outputs:
            fd, tmp = _temp_beside(Path(path))
            temps.append(tmp)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, _default_file_mode())
        for (path, _), tmp in zip(outputs, temps):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps:
            _remove_quietly(tmp)
        raise


# ---------------------------------------------------------------------------------------------------
# JSON / JSONL


def dumps_jsonl(rows: Iterable[dict], default: Callable[[Any], Any] | None = str) -> str:
    """One JSON object per line (UTF-8 kept as is); ``default=str`` writes what JSON cannot as its str."""
    return "".join(json.dumps(row, ensure_ascii=False, default=default) + "\n" for row in rows)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict], default: Callable[[Any], Any] | None = str) -> Path:
    def write(f):
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False, default=default) + "\n").encode("utf-8"))

    return atomic_write(path, write)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, sort_keys: bool = False) -> Path:
    text = json.dumps(obj, ensure_ascii=False, indent=indent, sort_keys=sort_keys, default=str) + "\n"
    return atomic_write_text(path, text)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The objects of a JSONL file (blank lines skipped); a bad line raises naming ``path:line``."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not a JSON object ({err.msg})") from None
    return rows
