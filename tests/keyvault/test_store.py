"""Private-file helpers: owner-only modes, exclusive creation, atomic replace, mode checks."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyvault.errors import KeyFileError
from keyvault.store import (
    create_private_file,
    ensure_private_dir,
    file_signature,
    locked,
    read_private_file,
    replace_private_file,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_create_is_0600_even_with_umask_0(tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "f"
    create_private_file(path, b"data")
    assert mode(path) == 0o600
    assert path.read_bytes() == b"data"


def test_create_refuses_existing_path_and_symlink(tmp_path: Path) -> None:
    path = tmp_path / "f"
    create_private_file(path, b"one")
    with pytest.raises(FileExistsError):
        create_private_file(path, b"two")
    assert path.read_bytes() == b"one"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        create_private_file(link, b"x")
    assert not (tmp_path / "elsewhere").exists()


def test_replace_is_atomic_and_private(tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "f"
    replace_private_file(path, b"one")
    before = file_signature(path)
    replace_private_file(path, b"two!")
    assert path.read_bytes() == b"two!"
    assert mode(path) == 0o600
    assert file_signature(path) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # no temp files left behind


def test_replace_tightens_a_loose_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    path.chmod(0o644)
    replace_private_file(path, b"new")
    assert mode(path) == 0o600


def test_ensure_private_dir(tmp_path: Path, permissive_umask: None) -> None:
    target = tmp_path / "a" / "keys"
    ensure_private_dir(target)
    assert mode(target) == 0o700
    ensure_private_dir(target)  # idempotent
    (tmp_path / "file").write_text("x")
    with pytest.raises(KeyFileError, match="not a directory"):
        ensure_private_dir(tmp_path / "file")


@pytest.mark.parametrize("loose", [0o640, 0o604, 0o644, 0o660, 0o666, 0o610])
def test_read_refuses_group_or_other_access(tmp_path: Path, loose: int) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(b"x")
    path.chmod(loose)
    with pytest.raises(KeyFileError) as info:
        read_private_file(path)
    assert str(path) in str(info.value)
    assert f"chmod 600 {path}" in str(info.value)


@pytest.mark.parametrize("tight", [0o600, 0o400])
def test_read_accepts_owner_only(tmp_path: Path, tight: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"secret")
    path.chmod(tight)
    assert read_private_file(path) == b"secret"


def test_read_follows_symlinks_and_checks_the_target(tmp_path: Path) -> None:
    # Kubernetes mounts secrets as symlinks into ..data/.
    target = tmp_path / "target"
    target.write_bytes(b"secret")
    target.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(target)
    assert read_private_file(link) == b"secret"
    target.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_private_file(link)


def test_read_missing_or_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        read_private_file(tmp_path / "missing")
    sub = tmp_path / "d"
    sub.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        read_private_file(sub)


def test_file_signature_missing(tmp_path: Path) -> None:
    assert file_signature(tmp_path / "nope") is None


def test_locked_creates_private_lock_file(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    with locked(lock):
        assert mode(lock) == 0o600
    with locked(lock):  # re-acquirable once released
        pass
