"""Atomic file writes: the data caches here, and any caller that must never leave half a file."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's file-creation mask (e.g. ``0o022``), read without changing it for good.

    Linux reports it in ``/proc/self/status``; elsewhere it is set and restored under a lock.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync, ``os.replace``.

    A reader sees the old file or the whole new one, never a partial write; a crash leaves at most
    a ``.<name>.*.part`` file behind, which nothing reads. The file gets the mode a plain
    ``open(path, "wb")`` would give it (``0o666`` less the umask), not the temp file's ``0o600``,
    so a team's shards on shared storage can read each other's results.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
