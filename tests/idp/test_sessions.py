"""idp.sessions on the memory and Redis stores, with an injected clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from core.kv import KV, MemoryKV, RedisKV
from idp.sessions import REVOKED_CHANNEL, SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def kv(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> AsyncIterator[KV]:
    store: KV = MemoryKV() if request.param == "memory" else RedisKV(redis_url, prefix=redis_prefix)
    yield store
    await store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(kv: KV, clock: Clock) -> SessionStore:
    return SessionStore(kv, idle_timeout=1800, absolute_timeout=43200, clock=clock)


async def new(store: SessionStore, user_id: int = 7) -> tuple[str, str]:
    session, cookie = await store.create(
        user_id=user_id,
        username="zhangwei",
        amr=("pwd", "otp"),
        acr="urn:onegate:acr:mfa",
        ip="10.1.2.3",
        user_agent="Firefox",
    )
    return session.sid, cookie


async def test_cookie_finds_the_session_and_nothing_else_does(store: SessionStore) -> None:
    sid, cookie = await new(store)
    session = await store.from_cookie(cookie)
    assert session is not None and session.sid == sid and session.username == "zhangwei"
    assert session.amr == ("pwd", "otp")
    assert await store.from_cookie(sid) is None  # the public id alone is not a credential
    assert await store.from_cookie(f"{sid}.wrong-secret") is None
    assert await store.from_cookie(f"{sid}.{cookie.split('.')[1]}x") is None
    assert await store.from_cookie(None) is None
    assert await store.from_cookie("a.b.c") is None


async def test_every_session_gets_fresh_ids(store: SessionStore) -> None:
    first = await new(store)
    second = await new(store)
    assert first[0] != second[0] and first[1] != second[1]


async def test_secret_is_not_stored(store: SessionStore, kv: KV) -> None:
    sid, cookie = await new(store)
    raw = await kv.get(f"sso:{sid}")
    assert raw is not None and cookie.split(".")[1].encode() not in raw


async def test_idle_timeout_and_renewal(store: SessionStore, clock: Clock) -> None:
    _sid, cookie = await new(store)
    clock.now += 1700
    assert await store.from_cookie(cookie) is not None  # activity restarts the idle timer
    clock.now += 1700
    assert await store.from_cookie(cookie) is not None
    clock.now += 1801
    assert await store.from_cookie(cookie) is None


async def test_absolute_timeout_despite_activity(store: SessionStore, clock: Clock) -> None:
    _sid, cookie = await new(store)
    for _ in range(40):
        clock.now += 1200
        if clock.now - 1_800_000_000.0 >= 43200:
            break
        assert await store.from_cookie(cookie) is not None
    clock.now = 1_800_000_000.0 + 43200
    assert await store.from_cookie(cookie) is None


async def test_revoke_one_takes_effect_at_once_and_is_published(store: SessionStore, kv: KV) -> None:
    sid, cookie = await new(store)
    _other_sid, other_cookie = await new(store)
    async with kv.subscribe(REVOKED_CHANNEL) as sub:
        ended = await store.revoke(sid)
        assert ended is not None and ended.sid == sid
        assert await sub.get(timeout=2) == (REVOKED_CHANNEL, sid.encode())
    assert await store.from_cookie(cookie) is None
    assert await store.from_cookie(other_cookie) is not None
    assert await store.revoke(sid) is None


async def test_revoke_user_ends_every_session_of_that_user_only(store: SessionStore) -> None:
    a = [await new(store, user_id=1) for _ in range(3)]
    b = await new(store, user_id=2)
    assert len(await store.list_for_user(1)) == 3
    ended = await store.revoke_user(1)
    assert sorted(s.sid for s in ended) == sorted(sid for sid, _ in a)
    assert all([await store.from_cookie(cookie) is None for _, cookie in a])
    assert await store.from_cookie(b[1]) is not None
    assert await store.list_for_user(1) == []


async def test_clients_are_recorded_for_back_channel_logout(store: SessionStore) -> None:
    sid, cookie = await new(store)
    await store.add_client(sid, "oa")
    await store.add_client(sid, "hr")
    await store.add_client(sid, "oa")
    session = await store.from_cookie(cookie)
    assert session is not None and session.clients == ("oa", "hr")


async def test_list_is_newest_first(store: SessionStore, clock: Clock) -> None:
    first, _ = await new(store)
    clock.now += 10
    second, _ = await new(store)
    assert [s.sid for s in await store.list_for_user(7)] == [second, first]


async def test_step_up_upgrades_in_place_with_a_new_cookie(store: SessionStore, clock: Clock) -> None:
    session, cookie = await store.create(
        user_id=7, username="zhangwei", amr=("pwd", "otp", "mfa"), acr="urn:onegate:acr:mfa"
    )
    await store.add_client(session.sid, "oa-portal")
    clock.now += 600
    upgraded = await store.upgrade(session.sid, ("hwk", "user"))
    assert upgraded is not None
    after, new_cookie = upgraded
    # Same session (tokens and back-channel logout refer to its sid), stronger and fresh.
    assert after.sid == session.sid and new_cookie.startswith(f"{session.sid}.")
    assert after.amr == ("pwd", "otp", "hwk", "user", "mfa")
    assert after.acr == "urn:onegate:acr:phr"
    assert after.auth_time == clock.now and after.clients == ("oa-portal",)
    assert after.expires_at == session.expires_at  # a step-up does not extend the absolute lifetime
    # The cookie from before the step-up is worth nothing now; the new one works.
    assert await store.from_cookie(cookie) is None
    found = await store.from_cookie(new_cookie)
    assert found is not None and found.acr == "urn:onegate:acr:phr"


async def test_step_up_of_an_ended_session_is_refused(store: SessionStore, clock: Clock) -> None:
    sid, _ = await new(store)
    await store.revoke(sid)
    assert await store.upgrade(sid, ("hwk",)) is None
    sid, _ = await new(store)
    clock.now += 1800  # idle timeout reached
    assert await store.upgrade(sid, ("hwk",)) is None
