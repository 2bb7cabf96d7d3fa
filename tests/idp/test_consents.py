"""idp.consents.ConsentStore on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.db import create_engine, migrate, session_factory
from idp.clients.models import AuthMethod, Client, ClientType, Consent
from idp.consents import ConsentStore
from idp.directory.services import Directory
from onegate.runtime import MIGRATIONS

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[async_sessionmaker[Any]]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'idp.db'}"
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    engine = create_engine(url)
    await migrate(engine, MIGRATIONS)
    yield session_factory(engine)
    await engine.dispose()


async def _client(db: async_sessionmaker[Any], client_id: str, name: str, name_en: str | None) -> int:
    async with db() as s, s.begin():
        client = Client(
            client_id=client_id,
            name=name,
            name_en=name_en,
            client_type=ClientType.PUBLIC,
            token_endpoint_auth_method=AuthMethod.NONE,
        )
        s.add(client)
        await s.flush()
        return client.id


@pytest.fixture
async def ids(db: async_sessionmaker[Any]) -> dict[str, int]:
    directory = Directory(db)
    zhang = await directory.add_user(username="zhangwei", display_name="张伟", password_hash=None)
    wang = await directory.add_user(username="wangfang", display_name="王芳", password_hash=None)
    return {
        "zhang": zhang.id,
        "wang": wang.id,
        "oa": await _client(db, "oa", "协同办公系统", "Office Automation"),
        "hr": await _client(db, "hr", "人事系统", None),
    }


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db: async_sessionmaker[Any], clock: Clock) -> ConsentStore:
    return ConsentStore(db, clock=clock)


async def test_nothing_is_granted_before_a_grant(store: ConsentStore, ids: dict[str, int]) -> None:
    assert await store.granted(ids["zhang"], ids["oa"]) == frozenset()
    assert await store.list_for_user(ids["zhang"]) == []


async def test_grant_widens_and_never_narrows(store: ConsentStore, ids: dict[str, int]) -> None:
    assert await store.grant(ids["zhang"], ids["oa"], ["openid", "profile"]) == {"openid", "profile"}
    # A later request for fewer but also other scopes adds to what was allowed.
    assert await store.grant(ids["zhang"], ids["oa"], ("openid", "email")) == {"openid", "profile", "email"}
    assert await store.granted(ids["zhang"], ids["oa"]) == {"openid", "profile", "email"}
    # Per user and per client: nobody else gained anything.
    assert await store.granted(ids["wang"], ids["oa"]) == frozenset()
    assert await store.granted(ids["zhang"], ids["hr"]) == frozenset()


async def test_revoke_withdraws_only_that_consent(store: ConsentStore, ids: dict[str, int]) -> None:
    await store.grant(ids["zhang"], ids["oa"], ["openid"])
    await store.grant(ids["zhang"], ids["hr"], ["openid"])
    await store.grant(ids["wang"], ids["oa"], ["openid"])
    assert await store.revoke(ids["zhang"], ids["oa"]) is True
    assert await store.revoke(ids["zhang"], ids["oa"]) is False  # nothing left to withdraw
    assert await store.granted(ids["zhang"], ids["oa"]) == frozenset()
    assert await store.granted(ids["zhang"], ids["hr"]) == {"openid"}
    assert await store.granted(ids["wang"], ids["oa"]) == {"openid"}


async def test_list_for_user_names_the_clients_newest_first(
    store: ConsentStore, ids: dict[str, int], clock: Clock
) -> None:
    await store.grant(ids["zhang"], ids["oa"], ["openid", "profile"])
    clock.now += 60
    await store.grant(ids["zhang"], ids["hr"], ["openid"])
    await store.grant(ids["wang"], ids["oa"], ["openid"])
    listed = await store.list_for_user(ids["zhang"])
    assert [(c.client_id, c.client_name, c.client_name_en) for c in listed] == [
        ("hr", "人事系统", None),
        ("oa", "协同办公系统", "Office Automation"),
    ]
    assert listed[1].scopes == {"openid", "profile"}
    assert listed[1].client_pk == ids["oa"]
    assert listed[0].granted_at.timestamp() == T0 + 60
    assert listed[0].granted_at.tzinfo is not None


async def test_concurrent_first_grants_end_in_one_row_with_the_union(
    store: ConsentStore, ids: dict[str, int], db: async_sessionmaker[Any]
) -> None:
    await asyncio.gather(
        store.grant(ids["zhang"], ids["oa"], ["openid", "profile"]),
        store.grant(ids["zhang"], ids["oa"], ["openid", "email"]),
    )
    async with db() as s:
        rows = (await s.execute(select(Consent).where(Consent.user_id == ids["zhang"]))).scalars().all()
    assert len(rows) == 1
    assert set(rows[0].scopes) == {"openid", "profile", "email"}


async def test_concurrent_widenings_lose_nothing(store: ConsentStore, ids: dict[str, int]) -> None:
    await store.grant(ids["zhang"], ids["oa"], ["openid"])
    await asyncio.gather(
        store.grant(ids["zhang"], ids["oa"], ["profile"]),
        store.grant(ids["zhang"], ids["oa"], ["email"]),
        store.grant(ids["zhang"], ids["oa"], ["groups"]),
    )
    assert await store.granted(ids["zhang"], ids["oa"]) == {"openid", "profile", "email", "groups"}
