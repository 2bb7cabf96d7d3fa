"""keyvault.secrets: named secrets, generated once, encrypted at rest, bound to their name."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from keyvault import DecryptionError, Envelope, MasterKey, MasterKeyring, SecretStore


@pytest.fixture
def envelope() -> Envelope:
    key = MasterKey(os.urandom(32))
    return Envelope(MasterKeyring([key], key.key_id))


def test_same_name_same_secret_across_instances(tmp_path: Path, envelope: Envelope) -> None:
    first = SecretStore(tmp_path / "secrets", envelope).get_or_create("csrf")
    again = SecretStore(tmp_path / "secrets", envelope).get_or_create("csrf")
    other = SecretStore(tmp_path / "secrets", envelope).get_or_create("cookie", size=64)
    assert first == again
    assert len(first) == 32 and len(other) == 64
    assert first != other[:32]


def test_secret_is_encrypted_and_private(tmp_path: Path, envelope: Envelope) -> None:
    value = SecretStore(tmp_path, envelope).get_or_create("csrf")
    path = tmp_path / "csrf.bin"
    assert value not in path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_swapped_files_do_not_decrypt(tmp_path: Path, envelope: Envelope) -> None:
    store = SecretStore(tmp_path, envelope)
    store.get_or_create("csrf")
    store.get_or_create("cookie")
    (tmp_path / "csrf.bin").write_bytes((tmp_path / "cookie.bin").read_bytes())
    with pytest.raises(DecryptionError):
        SecretStore(tmp_path, envelope).get_or_create("csrf")


def test_bad_names_refused(tmp_path: Path, envelope: Envelope) -> None:
    with pytest.raises(ValueError, match="secret name"):
        SecretStore(tmp_path, envelope).get_or_create("../master")
