"""The SOC's response actions carried out by the owning components, on a real runtime (an
initialised data dir: SQLite, keyvault, the in-process KV)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pyotp
import pytest

from core.settings import load_settings
from gateway.blocks import AddressBlocks
from gateway.risk import RiskScores
from idp.directory.models import UserStatus
from onegate.runtime import Runtime, open_runtime
from onegate.sessions import session_stores
from onegate.soc_responders import responders
from soc.response.services import Action, ResponseError, ResponseService
from tests.conftest import _run


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from onegate.bootstrap import initialise

    where = tmp_path_factory.mktemp("soc-responders") / "data"
    _run(initialise(load_settings(None, overrides={"data_dir": where})))
    return where


@pytest.fixture
async def runtime(template: Path, tmp_path: Path) -> AsyncIterator[Runtime]:
    data_dir = tmp_path / "data"
    shutil.copytree(template, data_dir)
    opened = await open_runtime(load_settings(None, overrides={"data_dir": data_dir}))
    await opened.bus.start()
    yield opened
    await opened.close()


class Person:
    """A user with an IdP session and two gateway sessions (HR, City operations)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.user_id = 0
        self.idp_sids: list[str] = []
        self.gateway_sids: list[str] = []

    async def create(self, username: str) -> Person:
        user = await self.runtime.directory.add_user(
            username=username, display_name="王芳", password_hash=None
        )
        self.user_id = user.id
        idp, gateway = session_stores(self.runtime)
        session, _ = await idp.create(
            user_id=user.id, username=user.username, amr=("pwd",), acr="urn:onegate:acr:pwd"
        )
        self.idp_sids.append(session.sid)
        for host in ("hr.localhost", "grid.localhost"):
            made, _ = await gateway.create(
                host=host,
                sub=user.sub,
                username=user.username,
                name="王芳",
                groups=(),
                department=None,
                departments=(),
                acr="urn:onegate:acr:pwd",
                amr=("pwd",),
                auth_time=0,
                idp_sid=None,
                id_token="x",
            )
            self.gateway_sids.append(made.sid)
        return self

    async def live_sessions(self) -> int:
        idp, gateway = session_stores(self.runtime)
        alive = [await idp.get(sid, touch=False) for sid in self.idp_sids]
        alive += [await gateway.get(sid) for sid in self.gateway_sids]
        return sum(session is not None for session in alive)


async def test_each_action_changes_what_its_component_owns(runtime: Runtime) -> None:
    service = ResponseService(runtime.engine, responders(runtime), events=runtime.bus)
    wangfang = await Person(runtime).create("wangfang")
    user_id = wangfang.user_id
    assert await wangfang.live_sessions() == 3

    done = await service.execute(Action.REVOKE_SESSIONS, "wangfang", actor="lina", reason="alert")
    assert done.done and done.detail.en == "3 sessions of wangfang ended"
    assert await wangfang.live_sessions() == 0

    done = await service.execute(
        Action.BLOCK_ADDRESS, "203.0.113.7", actor="lina", reason="spray", params={"seconds": 600}
    )
    assert done.done
    block = await AddressBlocks(runtime.kv).check("203.0.113.7")
    assert block is not None and block.actor == "lina" and block.reason == "spray"

    done = await service.execute(
        Action.RAISE_RISK, "wangfang", actor="lina", reason="r", params={"score": 90}
    )
    assert done.done and await RiskScores(runtime.kv).score("wangfang") == 90

    enrolment = await runtime.mfa.totp.begin_enrolment(user_id, "wangfang")
    assert await runtime.mfa.totp.confirm_enrolment(user_id, pyotp.TOTP(enrolment.secret_base32).now())
    assert (await runtime.mfa.factors(user_id)).totp == 1
    done = await service.execute(Action.FORCE_MFA_REENROLMENT, "wangfang", actor="lina", reason="cloned key")
    assert done.done and "1 second factors" in done.detail.en
    assert (await runtime.mfa.factors(user_id)).totp == 0
    assert (await runtime.directory.get_user("wangfang")).mfa_enrol_required  # type: ignore[union-attr]

    zhaolei = await Person(runtime).create("zhaolei")
    done = await service.execute(Action.LOCK_ACCOUNT, "zhaolei", actor="lina", reason="stolen")
    assert done.done and done.detail.en == "zhaolei locked, 3 sessions ended"
    assert (await runtime.directory.get_user("zhaolei")).status is UserStatus.LOCKED  # type: ignore[union-attr]
    assert await zhaolei.live_sessions() == 0

    await runtime.bus.drain()
    recorded = await service.history(target="wangfang")
    assert [r.action for r in recorded] == [
        Action.REVOKE_SESSIONS,
        Action.RAISE_RISK,
        Action.FORCE_MFA_REENROLMENT,
    ]


async def test_an_unknown_user_fails_the_run_and_is_recorded(runtime: Runtime) -> None:
    service = ResponseService(runtime.engine, responders(runtime))
    failed = await service.execute(Action.REVOKE_SESSIONS, "nobody", actor="lina", reason="r")
    assert not failed.done and "不存在" in failed.detail.zh
    too_wide = await service.execute(Action.BLOCK_ADDRESS, "0.0.0.0/0", actor="lina", reason="r")
    assert not too_wide.done and "too wide" in too_wide.detail.en and "范围过大" in too_wide.detail.zh
    with pytest.raises(ResponseError):
        await service.execute(Action.BLOCK_ADDRESS, "somewhere", actor="lina", reason="r")
