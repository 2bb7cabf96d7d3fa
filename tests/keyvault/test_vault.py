"""Wiring: init creates what is missing once; open assembles; settings errors name the setting."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from keyvault import (
    ENV_MASTER_KEY,
    KeyFileError,
    Keyvault,
    generate_master_key,
    init_keyvault,
    open_keyvault,
)
from keyvault.masterkey import master_key_id, master_key_path
from keyvault.suites import GM_SM4_GCM
from keyvault.vault import signing_dir

T0 = 1_700_000_000.0
TIMES: dict[str, Any] = {"prepublish_seconds": 3600, "retire_after_seconds": 7200, "clock": lambda: T0}


def test_init_creates_master_key_file_and_first_signing_key(tmp_path: Path) -> None:
    vault = init_keyvault(tmp_path, environ={}, **TIMES)
    assert isinstance(vault, Keyvault)
    key_file = master_key_path(tmp_path)
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert vault.keyring.source == str(key_file)
    [info] = vault.signing.list_keys()
    assert (info.state, info.alg) == ("active", "ES256")
    assert (signing_dir(tmp_path) / "keys.json").exists()
    blob = vault.envelope.encrypt(b"secret", b"aad")
    assert vault.envelope.decrypt(blob, b"aad") == b"secret"


def test_init_is_idempotent(tmp_path: Path) -> None:
    first = init_keyvault(tmp_path, environ={}, **TIMES)
    blob = first.envelope.encrypt(b"secret", b"aad")
    second = init_keyvault(tmp_path, environ={}, **TIMES)
    assert second.keyring.ids == first.keyring.ids
    assert second.signing.list_keys() == first.signing.list_keys()
    assert second.envelope.decrypt(blob, b"aad") == b"secret"


def test_init_with_env_key_writes_no_key_file(tmp_path: Path) -> None:
    key = generate_master_key()
    vault = init_keyvault(tmp_path, environ={ENV_MASTER_KEY: key}, **TIMES)
    assert not master_key_path(tmp_path).exists()
    assert ENV_MASTER_KEY in vault.keyring.source
    assert len(vault.signing.list_keys()) == 1
    reopened = open_keyvault(tmp_path, environ={ENV_MASTER_KEY: key}, **TIMES)
    assert reopened.signing.list_keys() == vault.signing.list_keys()


def test_open_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=ENV_MASTER_KEY):
        open_keyvault(tmp_path, environ={}, **TIMES)
    assert list(tmp_path.iterdir()) == []
    key = generate_master_key()
    vault = open_keyvault(tmp_path, environ={ENV_MASTER_KEY: key}, **TIMES)
    assert vault.signing.list_keys() == []
    assert list(tmp_path.iterdir()) == []


def test_open_with_gm_suite_and_rs256(tmp_path: Path) -> None:
    init_keyvault(tmp_path, environ={}, **TIMES)
    vault = open_keyvault(tmp_path, suite="gm", signing_alg="RS256", environ={}, **TIMES)
    assert vault.envelope.suite is GM_SM4_GCM
    blob = vault.envelope.encrypt(b"x", b"aad")
    assert blob[1] == GM_SM4_GCM.suite_id
    # Keys created earlier (ES256, under the aes suite) still load and sign.
    [info] = vault.signing.list_keys()
    assert info.alg == "ES256"
    assert vault.signing.verify(vault.signing.sign({"exp": T0 + 60}))["exp"] == T0 + 60


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"suite": "sm4"}, "setting keyvault.suite: unknown cipher suite 'sm4'"),
        ({"signing_alg": "HS256"}, "setting keyvault.signing_alg: unknown signing algorithm 'HS256'"),
        ({"prepublish_seconds": -5}, "setting keyvault.prepublish_seconds"),
        ({"retire_after_seconds": -1}, "setting keyvault.retire_after_seconds"),
    ],
)
@pytest.mark.parametrize("function", [open_keyvault, init_keyvault])
def test_settings_errors_name_the_setting(
    tmp_path: Path, function: Any, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        function(tmp_path, environ={}, **{**TIMES, **kwargs})
    assert list(tmp_path.iterdir()) == []  # validated before anything is created


def test_env_key_id_matches_file_format(tmp_path: Path) -> None:
    key = generate_master_key()
    vault = open_keyvault(tmp_path, environ={ENV_MASTER_KEY: key}, **TIMES)
    assert vault.keyring.active_id == master_key_id(vault.keyring.active.material)
