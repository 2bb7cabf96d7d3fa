"""`onegate user mfa ...` in a subprocess, against a real data dir and (for sessions) real Redis."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pyotp
import pytest

from core.kv import RedisKV
from core.settings import load_settings
from idp.sessions import SessionStore
from mfa.services import MfaServices
from onegate.runtime import open_runtime
from tests.onegate.conftest import Run


@pytest.fixture
def redis_env(redis_url: str, redis_prefix: str) -> dict[str, str]:
    return {"ONEGATE_KV__BACKEND": "redis", "ONEGATE_KV__URL": redis_url, "ONEGATE_KV__PREFIX": redis_prefix}


def _ok(result: Any) -> str:
    assert result.returncode == 0, result.stderr
    return str(result.stdout)


def _status(onegate: Run, data_dir: Path, user: str = "zhangwei") -> dict[str, Any]:
    out = _ok(onegate("user", "mfa", "status", user, "--data-dir", str(data_dir), "--json"))
    return dict(json.loads(out))


def test_require_per_user_and_per_group(onegate: Run, data_dir: Path) -> None:
    d = str(data_dir)
    _ok(onegate("init", "--data-dir", d))
    _ok(onegate("user", "groups", "add", "finance-approvers", "--data-dir", d))
    _ok(onegate("user", "add", "zhangwei", "--name", "张伟", "--group", "finance-approvers", "--data-dir", d))
    status = _status(onegate, data_dir)
    assert status["required"] is False and status["authenticator_apps"] == status["passkeys"] == []
    assert status["recovery_codes_left"] == 0

    assert "next sign-in" in _ok(onegate("user", "mfa", "require", "zhangwei", "--data-dir", d))
    assert _status(onegate, data_dir)["required_by"] == ["administrator (at next sign-in)"]
    _ok(onegate("user", "mfa", "require", "zhangwei", "--off", "--data-dir", d))
    assert _status(onegate, data_dir)["required"] is False

    assert "must sign in with" in _ok(onegate("user", "mfa", "group", "finance-approvers", "--data-dir", d))
    assert _status(onegate, data_dir)["required_by"] == ["group"]
    _ok(onegate("user", "mfa", "group", "finance-approvers", "--off", "--data-dir", d))
    assert _status(onegate, data_dir)["required"] is False


def test_unknown_names_are_one_line_errors(onegate: Run, data_dir: Path) -> None:
    d = str(data_dir)
    _ok(onegate("init", "--data-dir", d))
    for args in (
        ("status", "nobody"),
        ("reset", "nobody"),
        ("require", "nobody"),
        ("group", "no-such-group"),
    ):
        result = onegate("user", "mfa", *args, "--data-dir", d)
        assert result.returncode == 2
        assert result.stderr.startswith("onegate: ") and len(result.stderr.strip().splitlines()) == 1


def test_reset_removes_every_factor_and_ends_the_sessions(
    onegate: Run, data_dir: Path, redis_env: dict[str, str], redis_url: str, redis_prefix: str
) -> None:
    d = str(data_dir)
    _ok(onegate("init", "--data-dir", d, env=redis_env))
    _ok(onegate("user", "add", "zhangwei", "--name", "张伟", "--data-dir", d, env=redis_env))
    settings = load_settings(overrides={"data_dir": data_dir})

    async def enrol_and_sign_in() -> str:
        runtime = await open_runtime(settings)
        try:
            user = await runtime.directory.get_user("zhangwei")
            assert user is not None
            mfa = MfaServices.build(
                settings.mfa,
                issuer="http://idp.localhost:8000",
                db=runtime.sessions,
                kv=runtime.kv,
                envelope=runtime.vault.envelope,
                hasher=runtime.directory.hashing,
            )
            enrolment = await mfa.totp.begin_enrolment(user.id, "zhangwei")
            assert await mfa.totp.confirm_enrolment(
                user.id, pyotp.TOTP(enrolment.secret_base32).now(), name="手机"
            )
            await mfa.recovery.generate(user.id)
        finally:
            await runtime.close()
        kv = RedisKV(redis_url, prefix=redis_prefix)
        try:
            sessions = SessionStore(kv, idle_timeout=1800, absolute_timeout=43200)
            session, _ = await sessions.create(
                user_id=user.id, username="zhangwei", amr=("pwd", "otp", "mfa"), acr="urn:onegate:acr:mfa"
            )
            return session.sid
        finally:
            await kv.close()

    sid = asyncio.run(enrol_and_sign_in())
    status = _status(onegate, data_dir)
    assert [a["name"] for a in status["authenticator_apps"]] == ["手机"] and status[
        "recovery_codes_left"
    ] == 10

    report = json.loads(
        _ok(onegate("user", "mfa", "reset", "zhangwei", "--data-dir", d, "--json", env=redis_env))
    )
    assert report == {
        "username": "zhangwei",
        "authenticator_apps_removed": 1,
        "passkeys_removed": 0,
        "recovery_codes_removed": 10,
        "sessions_ended": 1,
    }
    status = _status(onegate, data_dir)
    assert status["authenticator_apps"] == [] and status["recovery_codes_left"] == 0

    async def session_gone() -> bool:
        kv = RedisKV(redis_url, prefix=redis_prefix)
        try:
            return await SessionStore(kv, idle_timeout=1800, absolute_timeout=43200).get(sid) is None
        finally:
            await kv.close()

    assert asyncio.run(session_gone())


def test_administrators_need_a_second_factor_from_the_start(onegate: Run, data_dir: Path) -> None:
    d = str(data_dir)
    _ok(onegate("init", "--data-dir", d))
    status = _status(onegate, data_dir, "admin")
    assert status["required"] is True and status["required_by"] == ["group"]
    # An operator's decision stands: init again does not put the requirement back.
    _ok(onegate("user", "mfa", "group", "sys-admins", "--off", "--data-dir", d))
    _ok(onegate("init", "--data-dir", d))
    assert _status(onegate, data_dir, "admin")["required"] is False
