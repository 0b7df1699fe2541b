"""Atomic file writes: the data caches here, and any caller that must never leave half a file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync, ``os.replace``.

    A reader sees the old file or the whole new one, never a partial write; a crash leaves at most
    a ``.<name>.*.part`` file behind, which nothing reads. The file gets the mode a plain
    ``open(path, "wb")`` would give it (``0o666`` less the umask; ``tempfile.mkstemp`` would
    give ``0o600``), so a team's shards on shared storage can read each other's results.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
