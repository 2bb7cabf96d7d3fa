"""The `onegate` command line: init, keys, version, and one-line errors."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from core.db import create_engine, session_factory
from idp.directory.passwords import PasswordHashing
from idp.directory.services import Directory
from onegate import __version__
from tests.onegate.conftest import Run


def test_version(onegate: Run) -> None:
    result = onegate("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"onegate {__version__}"


async def _admin_check(db: Path, password: str) -> tuple[bool, bool, list[str]]:
    engine = create_engine(f"sqlite+aiosqlite:///{db}")
    try:
        directory = Directory(session_factory(engine))
        admin = await directory.get_user("admin")
        assert admin is not None
        verified = PasswordHashing().verify(admin.password_hash, password)
        return verified, admin.must_change_password, await directory.groups_of("admin")
    finally:
        await engine.dispose()


def test_init_creates_everything_once(onegate: Run, data_dir: Path) -> None:
    first = onegate("init", "--data-dir", str(data_dir), "--json")
    assert first.returncode == 0, first.stderr
    created = json.loads(first.stdout)
    assert created["created_admin"] is True
    password = created["admin_password"]
    assert len(password) >= 16
    # Private files: data dir 0700, master key 0600, database not readable by others.
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "keys" / "master.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((data_dir / "onegate.db").stat().st_mode) & 0o077 == 0
    # The password is stored only as an argon2id hash, and works.
    assert password.encode() not in (data_dir / "onegate.db").read_bytes()
    verified, must_change, groups = asyncio.run(_admin_check(data_dir / "onegate.db", password))
    assert verified and must_change
    assert groups == ["sys-admins"]

    master_key = (data_dir / "keys" / "master.key").read_bytes()
    again = onegate("init", "--data-dir", str(data_dir), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["created_admin"] is False
    assert json.loads(again.stdout)["admin_password"] is None
    assert (data_dir / "keys" / "master.key").read_bytes() == master_key
    assert asyncio.run(_admin_check(data_dir / "onegate.db", password))[0]


def test_init_prints_the_password_once_for_humans(onegate: Run, data_dir: Path) -> None:
    first = onegate("init", "--data-dir", str(data_dir))
    assert "one-time password" in first.stdout
    again = onegate("init", "--data-dir", str(data_dir))
    assert "one-time password" not in again.stdout
    assert "already initialised" in again.stdout


def test_data_dir_from_environment(onegate: Run, data_dir: Path) -> None:
    result = onegate("init", env={"ONEGATE_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    assert (data_dir / "onegate.db").exists()


def test_keys_rotate_prepublishes(onegate: Run, data_dir: Path) -> None:
    assert onegate("init", "--data-dir", str(data_dir)).returncode == 0
    before = json.loads(onegate("keys", "list", "--data-dir", str(data_dir), "--json").stdout)
    assert [k["state"] for k in before] == ["active"]
    assert before[0]["alg"] == "ES256"
    rotated = onegate("keys", "rotate", "--data-dir", str(data_dir), "--json")
    assert rotated.returncode == 0, rotated.stderr
    new = json.loads(rotated.stdout)
    after = {
        k["kid"]: k for k in json.loads(onegate("keys", "list", "--data-dir", str(data_dir), "--json").stdout)
    }
    assert after[new["kid"]]["state"] == "pending"
    assert after[before[0]["kid"]]["state"] == "active"
    table = onegate("keys", "list", "--data-dir", str(data_dir))
    assert new["kid"] in table.stdout and "pending" in table.stdout


def test_rs256_from_configuration(onegate: Run, data_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "onegate.yaml"
    config.write_text("keyvault:\n  signing_alg: RS256\n")
    assert onegate("init", "--data-dir", str(data_dir), "--config", str(config)).returncode == 0
    keys = json.loads(onegate("keys", "list", "--data-dir", str(data_dir), "--json").stdout)
    assert keys[0]["alg"] == "RS256"


def _one_line_error(result: object) -> str:
    assert result.returncode == 2  # type: ignore[attr-defined]
    stderr = result.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("onegate: ")
    return lines[0]


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("server:\n  prot: 80\n", "unknown option 'server.prot'"),
        ("server: [\n", "line 2, column 1"),
        ("kv:\n  backend: memcached\n", "option 'kv.backend'"),
    ],
)
def test_bad_configuration_is_one_line(
    onegate: Run, data_dir: Path, tmp_path: Path, yaml_text: str, expected: str
) -> None:
    config = tmp_path / "onegate.yaml"
    config.write_text(yaml_text)
    line = _one_line_error(onegate("init", "--data-dir", str(data_dir), "--config", str(config)))
    assert expected in line and str(config) in line


def test_unknown_environment_option_is_one_line(onegate: Run, data_dir: Path) -> None:
    line = _one_line_error(onegate("init", "--data-dir", str(data_dir), env={"ONEGATE_KV__BAKEND": "redis"}))
    assert "ONEGATE_KV__BAKEND" in line


def test_unreachable_postgres_is_one_line(onegate: Run, data_dir: Path) -> None:
    env = {
        "ONEGATE_DATABASE__URL": "postgresql+asyncpg://onegate:pw-secret@127.0.0.1:1/onegate",
        "ONEGATE_DATABASE__CONNECT_TIMEOUT": "2",
    }
    line = _one_line_error(onegate("init", "--data-dir", str(data_dir), env=env))
    assert "127.0.0.1:1" in line and "unreachable" in line
    assert "pw-secret" not in line


def test_unreachable_redis_is_one_line(onegate: Run, data_dir: Path) -> None:
    assert onegate("init", "--data-dir", str(data_dir)).returncode == 0
    env = {
        "ONEGATE_KV__BACKEND": "redis",
        "ONEGATE_KV__URL": "redis://:pw-secret@127.0.0.1:1/0",
        "ONEGATE_KV__CONNECT_TIMEOUT": "2",
    }
    line = _one_line_error(onegate("serve", "--data-dir", str(data_dir), "--port", "0", env=env))
    assert "redis" in line and "127.0.0.1:1" in line
    assert "pw-secret" not in line


def test_serve_refuses_an_uninitialised_database(onegate: Run, data_dir: Path) -> None:
    line = _one_line_error(onegate("serve", "--data-dir", str(data_dir), "--port", "0"))
    assert "onegate init" in line


def test_unknown_role_is_one_line(onegate: Run, data_dir: Path) -> None:
    assert "unknown role 'proxy'" in _one_line_error(onegate("serve", "--role", "proxy"))


def test_keys_without_a_master_key_is_one_line(onegate: Run, data_dir: Path) -> None:
    line = _one_line_error(onegate("keys", "list", "--data-dir", str(data_dir)))
    assert "master" in line.lower()


def _master_key_ids(data_dir: Path) -> tuple[str, list[str]]:
    doc = json.loads((data_dir / "keys" / "master.key").read_text())
    return doc["active"], [k["id"] for k in doc["keys"]]


def _wrapped_under(data_dir: Path) -> set[str]:
    """Master key ids named in the headers of every blob the vault stores (bytes 2..6)."""
    import base64

    store = json.loads((data_dir / "keys" / "signing" / "keys.json").read_text())
    blobs = [base64.urlsafe_b64decode(k["private_key"] + "==") for k in store["keys"]]
    blobs += [p.read_bytes() for p in (data_dir / "keys" / "secrets").glob("*.bin")]
    return {blob[2:6].hex() for blob in blobs}


def test_rotate_master_rewraps_and_everything_still_opens(onegate: Run, data_dir: Path) -> None:
    assert onegate("init", "--data-dir", str(data_dir)).returncode == 0
    old_active, _ = _master_key_ids(data_dir)
    assert onegate("keys", "rotate", "--data-dir", str(data_dir)).returncode == 0
    before = json.loads(onegate("keys", "list", "--data-dir", str(data_dir), "--json").stdout)
    assert _wrapped_under(data_dir) == {old_active}

    result = onegate("keys", "rotate-master", "--data-dir", str(data_dir), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    new_active, ids = _master_key_ids(data_dir)
    assert report["active_master_key"] == new_active != old_active
    assert ids == [old_active, new_active]  # the old key stays for records not yet re-wrapped
    # The CSRF key is a named secret; no user has an authenticator app yet.
    assert report["rewrapped"] == {"signing_keys": 2, "secrets": 1, "totp_seeds": 0}
    assert _wrapped_under(data_dir) == {new_active}
    # Every private key still decrypts: listing and signing work with the new master key.
    after = json.loads(onegate("keys", "list", "--data-dir", str(data_dir), "--json").stdout)
    assert after == before
    again = json.loads(onegate("keys", "rewrap", "--data-dir", str(data_dir), "--json").stdout)
    assert again["rewrapped"] == {"signing_keys": 0, "secrets": 0, "totp_seeds": 0}


def test_rotate_master_rewraps_totp_seeds_in_the_database(onegate: Run, data_dir: Path) -> None:
    import asyncio
    from time import time

    import pyotp

    from core.settings import load_settings
    from mfa.totp import TotpService
    from onegate.runtime import open_runtime

    assert onegate("init", "--data-dir", str(data_dir)).returncode == 0
    assert onegate("user", "add", "zhangwei", "--name", "张伟", "--data-dir", str(data_dir)).returncode == 0
    settings = load_settings(overrides={"data_dir": data_dir})
    old_active, _ = _master_key_ids(data_dir)

    async def enrol() -> tuple[int, str]:
        runtime = await open_runtime(settings)
        try:
            user = await runtime.directory.get_user("zhangwei")
            assert user is not None
            totp = TotpService(runtime.sessions, runtime.vault.envelope, runtime.kv)
            enrolment = await totp.begin_enrolment(user.id, "zhangwei")
            assert await totp.confirm_enrolment(user.id, pyotp.TOTP(enrolment.secret_base32).now())
            return user.id, enrolment.secret_base32
        finally:
            await runtime.close()

    user_id, secret = asyncio.run(enrol())
    result = onegate("keys", "rotate-master", "--data-dir", str(data_dir), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rewrapped"]["totp_seeds"] == 1

    async def seed_blobs_and_a_verification() -> tuple[set[str], bool]:
        from sqlalchemy import select

        from mfa.models import TotpCredential

        runtime = await open_runtime(settings)
        try:
            async with runtime.sessions() as s:
                blobs = (await s.execute(select(TotpCredential.secret_enc))).scalars().all()
            # The seed still decrypts under the new master key: a code for the next step verifies.
            later = time() + 30
            totp = TotpService(runtime.sessions, runtime.vault.envelope, runtime.kv, clock=lambda: later)
            ok = (await totp.verify(user_id, pyotp.TOTP(secret).at(later))).ok
            return {bytes(b)[2:6].hex() for b in blobs}, ok
        finally:
            await runtime.close()

    under, verified = asyncio.run(seed_blobs_and_a_verification())
    new_active, _ = _master_key_ids(data_dir)
    assert under == {new_active} != {old_active} and verified


def test_rotate_master_refuses_an_environment_key(onegate: Run, data_dir: Path) -> None:
    from keyvault import generate_master_key

    env = {"ONEGATE_MASTER_KEY": generate_master_key()}
    assert onegate("init", "--data-dir", str(data_dir), env=env).returncode == 0
    assert not (data_dir / "keys" / "master.key").exists()
    line = _one_line_error(onegate("keys", "rotate-master", "--data-dir", str(data_dir), env=env))
    assert "ONEGATE_MASTER_KEY_PREVIOUS" in line
    assert env["ONEGATE_MASTER_KEY"] not in line


def test_compromised_key_replaced_and_revoked(onegate: Run, data_dir: Path) -> None:
    assert onegate("init", "--data-dir", str(data_dir)).returncode == 0
    old = json.loads(onegate("keys", "list", "--data-dir", str(data_dir), "--json").stdout)[0]["kid"]
    line = _one_line_error(onegate("keys", "revoke", old, "--data-dir", str(data_dir)))
    assert "active" in line
    new = json.loads(onegate("keys", "rotate", "--immediate", "--data-dir", str(data_dir), "--json").stdout)
    states = {
        k["kid"]: k["state"]
        for k in json.loads(onegate("keys", "list", "--data-dir", str(data_dir), "--json").stdout)
    }
    assert states == {old: "retired", new["kid"]: "active"}
    assert onegate("keys", "revoke", old, "--data-dir", str(data_dir)).returncode == 0
    remaining = json.loads(onegate("keys", "list", "--data-dir", str(data_dir), "--json").stdout)
    assert [k["kid"] for k in remaining] == [new["kid"]]
    purge = json.loads(onegate("keys", "purge", "--data-dir", str(data_dir), "--json").stdout)
    assert purge == {"purged": []}
