"""Private-file helpers: owner-only directories and files, atomic replacement, locking.

Everything keyvault writes to disk goes through here so the rules live in one place:

- directories are created ``0700`` and files ``0600`` (set at ``open`` time, never widened
  and narrowed afterwards, so there is no window in which another user can open them);
- new files are created with ``O_CREAT | O_EXCL`` (never follows or clobbers an existing
  path, including a planted symlink);
- replacements are atomic: write a temp file in the same directory, ``fsync`` it, ``rename``
  over the target, ``fsync`` the directory — a reader sees the old or the new content, never
  a torn file, even across a crash;
- reads check the *opened* file's mode (``fstat`` on the descriptor, so there is no race
  between the check and the read) and refuse group/other access with the fix in the message.

POSIX only (``fcntl``), like the deployments OneGate targets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from core.files import fsync_directory, write_all
from keyvault.errors import KeyFileError

__all__ = [
    "FileSignature",
    "create_private_file",
    "ensure_private_dir",
    "file_signature",
    "locked",
    "read_private_file",
    "replace_private_file",
]

FileSignature = tuple[int, int, int, int]
"""(device, inode, mtime_ns, size): changes whenever a file is replaced or rewritten."""

_MAX_KEY_FILE_BYTES = 16 * 1024 * 1024


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) if needed; a directory we create is ``0700``.

    Parents are created with the process umask (they are ordinary data directories); the
    leaf, which holds key files, is owner-only. An existing directory is left as it is: its
    owner may have deliberate ACLs, and the files inside are ``0600`` regardless.
    """
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise KeyFileError(f"{path} exists and is not a directory") from None
        return
    # mkdir's mode is filtered by the umask; make the intent explicit regardless.
    os.chmod(path, 0o700)


def _create_exclusive(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, 0o600)
    try:
        # The umask can only remove bits from 0o600, but an inherited default ACL could add
        # some: pin the mode on the descriptor before any secret is written.
        os.fchmod(fd, 0o600)
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def create_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` (mode ``0600``) holding ``data``; ``FileExistsError`` if it exists."""
    _create_exclusive(path, data)
    fsync_directory(path.parent)


def replace_private_file(path: Path, data: bytes) -> None:
    """Atomically replace (or create) ``path`` with ``data``, mode ``0600``."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    _create_exclusive(tmp, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


def read_private_file(path: Path) -> bytes:
    """Read a key file, refusing one that group or others may access.

    Symlinks are followed on purpose (Kubernetes mounts secrets as symlinks into a
    ``..data`` directory); the mode checked is that of the file actually opened.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except OSError as e:
        raise KeyFileError(f"cannot open key file {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"key file {path} is accessible by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"restrict it to its owner: chmod 600 {path}"
            )
        if st.st_size > _MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"key file {path} is implausibly large ({st.st_size} bytes)")
        chunks: list[bytes] = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def file_signature(path: Path) -> FileSignature | None:
    """A cheap change detector for ``path`` (``None`` if it does not exist)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created ``0600``) for the block.

    Serialises read-modify-write cycles between processes sharing a data directory (the
    server and the ``onegate keys`` CLI). Held only for a re-read and one small write.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
