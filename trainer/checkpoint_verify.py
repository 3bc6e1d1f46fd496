"""A checkpoint's manifest: every file's size and a CRC-32, written before the COMPLETE marker and checked
before the checkpoint is trusted (resume, pruning).

Cost: a file up to ``FULL_CRC_MAX_BYTES`` is read whole (CRC-32 runs at about 1 GB/s per core, and right
after the save the bytes are usually still in the page cache); a larger one is checked by its size and the
CRC-32 of ``SAMPLED_BLOCKS`` blocks of ``BLOCK_BYTES`` spread over it (first and last included, where DCP
and safetensors keep their headers). So writing or verifying the manifest reads at most
``files * FULL_CRC_MAX_BYTES`` bytes plus ``SAMPLED_BLOCKS * BLOCK_BYTES`` per large file: it grows with the
number of files (ranks x shards), not with the model's size. A truncated file is always caught (its size);
an altered byte of a large file only when it falls in a sampled block.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

from mopd.common.io import atomic_write_text

__all__ = ["MANIFEST_FILE", "CheckpointCorrupt", "manifest_total_bytes", "verify", "write_manifest"]

MANIFEST_FILE = "MANIFEST.json"
FULL_CRC_MAX_BYTES = 64 << 20
SAMPLED_BLOCKS = 16
BLOCK_BYTES = 1 << 20
_FORMAT = 1


class CheckpointCorrupt(Exception):
    """What is wrong with one file of a checkpoint (``path``: that file)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _crc(path: Path, size: int) -> tuple[int, bool]:
    """(CRC-32, sampled) of ``path``: whole file when small, evenly spaced blocks when large."""
    crc = 0
    with open(path, "rb") as f:
        if size <= FULL_CRC_MAX_BYTES:
            while chunk := f.read(BLOCK_BYTES * 4):
                crc = zlib.crc32(chunk, crc)
            return crc, False
        last = size - BLOCK_BYTES
        for i in range(SAMPLED_BLOCKS):
            f.seek(last * i // (SAMPLED_BLOCKS - 1))
            crc = zlib.crc32(f.read(BLOCK_BYTES), crc)
    return crc, True


def _files(root: Path) -> list[Path]:
    out = []
    for dirpath, _, names in os.walk(root):
        out += [Path(dirpath) / name for name in names]
    return sorted(p for p in out if p.name != MANIFEST_FILE)


def write_manifest(directory: str | os.PathLike) -> int:
    """Record every file under ``directory`` (sizes, CRC-32s) in ``MANIFEST.json``; returns the total bytes."""
    directory = Path(directory)
    files, total = {}, 0
    for path in _files(directory):
        size = path.stat().st_size
        crc, sampled = _crc(path, size)
        files[path.relative_to(directory).as_posix()] = {"size": size, "crc32": crc, "sampled": sampled}
        total += size
    atomic_write_text(
        directory / MANIFEST_FILE,
        json.dumps({"format": _FORMAT, "total_bytes": total, "files": files}, indent=1) + "\n",
    )
    return total


def _read_manifest(directory: Path) -> dict | None:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest.get("files"), dict):
            raise ValueError("no 'files' table")
    except (OSError, ValueError) as err:
        raise CheckpointCorrupt(path, f"unreadable manifest ({err})") from None
    return manifest


def verify(directory: str | os.PathLike) -> bool:
    """Check every file the manifest lists; raises ``CheckpointCorrupt`` naming the first bad file.

    Returns False (not verified, nothing known to be wrong) for a checkpoint written before manifests.
    """
    directory = Path(directory)
    manifest = _read_manifest(directory)
    if manifest is None:
        return False
    for name, entry in manifest["files"].items():
        path = directory / name
        try:
            size = path.stat().st_size
        except OSError:
            raise CheckpointCorrupt(path, "missing (listed in the manifest)") from None
        if size != entry["size"]:
            raise CheckpointCorrupt(path, f"{size} bytes, the manifest says {entry['size']} (truncated or rewritten)")
        if _crc(path, size)[0] != entry["crc32"]:
            raise CheckpointCorrupt(path, "its contents changed since it was written (CRC-32 mismatch)")
    return True


def manifest_total_bytes(directory: str | os.PathLike) -> int | None:
    """The size of a written checkpoint (its manifest's total, else the files' sizes); None if unreadable."""
    directory = Path(directory)
    try:
        manifest = _read_manifest(directory)
        if manifest is not None and isinstance(manifest.get("total_bytes"), int):
            return manifest["total_bytes"]
        return sum(p.stat().st_size for p in _files(directory))
    except (OSError, CheckpointCorrupt):
        return None
