"""Size-based rotation of an append-only NDJSON file, and the list of files it left.

Layout: ``usage.ndjson`` is written; when a write would take it past ``max_bytes`` it is renamed
to ``usage.ndjson.1`` (``.1`` → ``.2`` … up to ``keep``; the oldest is deleted) and a fresh file
is started. ``keep = 0`` deletes the full file instead; ``max_bytes = 0`` never rotates.

Why this is safe:

* In one process there is a single writer task, and rotation runs in it (in the same worker
  thread call as the append), so no write of ours can race a rotation of ours.
* Every append opens the file by path with ``O_APPEND`` and writes whole lines in one
  ``write``. Several replicas appending to one file therefore never interleave half lines.
* Rotation takes an exclusive ``flock`` on ``<file>.lock`` and re-checks the size under it, so
  two replicas that both see a full file rotate it once, not twice. A replica whose append
  opened the file just before another one renamed it writes that batch into ``.1``: nothing is
  lost, the readers read the rotated files too. (``flock`` is per host; replicas on different
  hosts sharing a network file system may rotate twice in a race, which shifts the files one
  extra step and so can delete the oldest kept file early. Give such replicas separate files.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path


def rotated_path(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


def lock_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.lock")


def numbered_files(path: Path) -> list[tuple[int, Path]]:
    """``(n, <file>.n)`` for every rotated file present, newest (lowest n) first."""
    pattern = re.compile(re.escape(path.name) + r"\.([0-9]+)$")
    numbered: list[tuple[int, Path]] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match is not None and entry.is_file():
            numbered.append((int(match.group(1)), entry))
    return sorted(numbered)


def log_files(path: Path) -> list[Path]:
    """The live file and its rotated predecessors, oldest first (missing ones left out)."""
    files = [entry for _, entry in reversed(numbered_files(path))]
    if path.is_file():
        files.append(path)
    return files


def needs_rotation(size: int, incoming: int, max_bytes: int) -> bool:
    """A non-empty file rotates before a write would take it past ``max_bytes``."""
    return max_bytes > 0 and size > 0 and size + incoming > max_bytes


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def rotate_if_needed(path: Path, *, incoming: int, max_bytes: int, keep: int) -> bool:
    """Rotate ``path`` if appending ``incoming`` bytes would pass ``max_bytes``; True if it did.

    Blocking (file system calls): run it from a worker thread.
    """
    if not needs_rotation(_size(path), incoming, max_bytes):
        return False
    fd = os.open(lock_path(path), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Another replica may have rotated while we waited for the lock.
        if not needs_rotation(_size(path), incoming, max_bytes):
            return False
        # The oldest kept file goes, and so does any left from a larger PROXY_USAGE_LOG_KEEP.
        for index, old in numbered_files(path):
            if index >= keep:
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()
        for index in range(keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                rotated_path(path, index).rename(rotated_path(path, index + 1))
        with contextlib.suppress(FileNotFoundError):
            if keep > 0:
                path.rename(rotated_path(path, 1))
            else:
                path.unlink()
        return True
    finally:
        os.close(fd)  # releases the lock
