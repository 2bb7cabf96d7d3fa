"""Small file-system steps that durable writers share (keyvault's key files, soc's spool)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_directory", "write_all"]


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_directory(path: Path) -> None:
    """Make the names created, renamed or removed in directory ``path`` survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
