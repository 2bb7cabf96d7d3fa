"""Gateway sessions: cookies, host binding, timeouts, revocation seen by other processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from core.kv import KV, MemoryKV, RedisKV
from gateway.sessions import CACHE_SECONDS, GatewaySessions


@pytest.fixture(params=["memory", "redis"])
async def kv(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> AsyncIterator[KV]:
    store: KV = MemoryKV() if request.param == "memory" else RedisKV(redis_url, prefix=redis_prefix)
    yield store
    await store.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def _create(
    sessions: GatewaySessions,
    *,
    host: str = "hr.example.gov",
    idp_sid: str | None = "idp-1",
    sub: str = "s-1",
) -> tuple[str, str]:
    session, cookie = await sessions.create(
        host=host,
        sub=sub,
        username="zhangwei",
        name="张伟",
        groups=["hr-staff"],
        department="hrss",
        departments=["hrss", "city"],
        acr="urn:onegate:acr:mfa",
        amr=["pwd", "otp"],
        auth_time=1_800_000_000.0,
        idp_sid=idp_sid,
        id_token="header.payload.signature",
    )
    return session.sid, cookie


async def test_a_cookie_names_its_session_on_its_host_only(kv: KV) -> None:
    sessions = GatewaySessions(kv, idle_timeout=600, absolute_timeout=3600)
    sid, cookie = await _create(sessions)
    found = await sessions.from_cookie(cookie, "hr.example.gov")
    assert found is not None and found.sid == sid and found.username == "zhangwei"
    assert found.departments == ("hrss", "city") and found.amr == ("pwd", "otp")
    # Carried to another application's host, the cookie is worth nothing.
    assert await sessions.from_cookie(cookie, "permits.example.gov") is None
    # A wrong secret, a malformed or an oversized value: no session.
    assert await sessions.from_cookie(f"{sid}.not-the-secret", "hr.example.gov") is None
    for bad in ("", "no-dot", ".", f"{sid}.", "x" * 300, None):
        assert await sessions.from_cookie(bad, "hr.example.gov") is None
    # The store keeps only a digest of the secret.
    raw = await kv.get(f"gw:s:{sid}")
    assert raw is not None and cookie.split(".", 1)[1].encode() not in raw


async def test_idle_and_absolute_timeouts(kv: KV) -> None:
    clock = Clock()
    sessions = GatewaySessions(kv, idle_timeout=120, absolute_timeout=300, clock=clock)
    _, cookie = await _create(sessions)
    clock.now += 100
    assert await sessions.from_cookie(cookie, "hr.example.gov") is not None  # renewed (over a minute)
    clock.now += 100
    assert await sessions.from_cookie(cookie, "hr.example.gov") is not None
    clock.now += 121  # idle too long
    assert await sessions.from_cookie(cookie, "hr.example.gov") is None

    _, cookie = await _create(sessions)
    for _ in range(5):
        clock.now += 59
        assert await sessions.from_cookie(cookie, "hr.example.gov") is not None
    clock.now += 59  # 295 + 59 s after sign-in: past the absolute limit although never idle
    assert await sessions.from_cookie(cookie, "hr.example.gov") is None


async def test_revocation_by_session_idp_session_and_user(kv: KV) -> None:
    sessions = GatewaySessions(kv, idle_timeout=600, absolute_timeout=3600)
    a, cookie_a = await _create(sessions, host="hr.example.gov", idp_sid="idp-1")
    b, cookie_b = await _create(sessions, host="grid.example.gov", idp_sid="idp-1")
    c, cookie_c = await _create(sessions, host="hr.example.gov", idp_sid="idp-2")
    d, cookie_d = await _create(sessions, host="hr.example.gov", idp_sid=None, sub="s-2")

    ended = await sessions.revoke_idp_session("idp-1")
    assert sorted(s.sid for s in ended) == sorted([a, b])
    assert await sessions.from_cookie(cookie_a, "hr.example.gov") is None
    assert await sessions.from_cookie(cookie_b, "grid.example.gov") is None
    assert await sessions.from_cookie(cookie_c, "hr.example.gov") is not None

    assert [s.sid for s in await sessions.revoke_user("s-1")] == [c]
    assert await sessions.from_cookie(cookie_c, "hr.example.gov") is None
    assert await sessions.from_cookie(cookie_d, "hr.example.gov") is not None
    assert (await sessions.revoke(d)) is not None
    assert await sessions.from_cookie(cookie_d, "hr.example.gov") is None
    assert await sessions.revoke(d) is None


async def test_another_process_sees_a_revocation_within_a_second(redis_url: str, redis_prefix: str) -> None:
    """Two stores on one Redis, as two gateway processes: the second caches the session, the
    first revokes it; the announcement reaches the second at once."""
    kv_a, kv_b = RedisKV(redis_url, prefix=redis_prefix), RedisKV(redis_url, prefix=redis_prefix)
    one = GatewaySessions(kv_a, idle_timeout=600, absolute_timeout=3600)
    two = GatewaySessions(kv_b, idle_timeout=600, absolute_timeout=3600)
    two.start()
    try:
        await asyncio.sleep(0.2)  # subscribed
        sid, cookie = await _create(one)
        assert await two.from_cookie(cookie, "hr.example.gov") is not None  # now cached in two
        await one.revoke(sid)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while await two.from_cookie(cookie, "hr.example.gov") is not None:
            assert loop.time() - started < CACHE_SECONDS, "the revocation was not seen within a second"
            await asyncio.sleep(0.01)
        assert loop.time() - started < 0.5  # the message, not the cache expiry, did it
    finally:
        await two.stop()
        await kv_a.close()
        await kv_b.close()


async def test_without_the_announcement_the_cache_still_expires_within_a_second() -> None:
    kv = MemoryKV()
    clock = Clock()
    one = GatewaySessions(kv, idle_timeout=600, absolute_timeout=3600, clock=clock)
    two = GatewaySessions(kv, idle_timeout=600, absolute_timeout=3600, clock=clock)  # not following
    sid, cookie = await _create(one)
    assert await two.from_cookie(cookie, "hr.example.gov") is not None
    await one.revoke(sid)
    assert await two.from_cookie(cookie, "hr.example.gov") is not None  # cached
    clock.now += CACHE_SECONDS
    assert await two.from_cookie(cookie, "hr.example.gov") is None


async def test_the_cache_only_answer_agrees_with_the_store(kv: KV) -> None:
    """``peek`` (the proxy's first look) answers from the cache or says "ask the store"."""
    clock = Clock()
    writer = GatewaySessions(kv, idle_timeout=600, absolute_timeout=3600, clock=clock)
    sid, cookie = await _create(writer)
    reader = GatewaySessions(kv, idle_timeout=600, absolute_timeout=3600, clock=clock)
    assert reader.peek(cookie, "hr.example.gov") is False  # never read here
    found = await reader.from_cookie(cookie, "hr.example.gov")
    assert found is not None and reader.peek(cookie, "hr.example.gov") is found
    assert reader.peek(cookie, "permits.example.gov") is None
    assert reader.peek(f"{sid}.not-the-secret", "hr.example.gov") is None
    for bad in ("", "no-dot", ".", f"{sid}.", "x" * 300, None):
        assert reader.peek(bad, "hr.example.gov") is None
    clock.now += CACHE_SECONDS  # a second later the store is asked again
    assert reader.peek(cookie, "hr.example.gov") is False
    assert await reader.from_cookie(cookie, "hr.example.gov") is not None
    await reader.revoke(sid)
    assert reader.peek(cookie, "hr.example.gov") is False
    assert await reader.from_cookie(cookie, "hr.example.gov") is None


async def test_risk_scores_are_cached_for_a_second_and_fail_closed(kv: KV) -> None:
    from core.kv import RedisKV
    from gateway.risk import RiskScores

    clock = Clock()
    scores = RiskScores(kv, clock=clock)
    assert scores.cached("zhangwei") is None
    assert await scores.score("zhangwei") == 0 and scores.cached("zhangwei") == 0
    await RiskScores(kv).set("zhangwei", 85, ttl=60)  # another process raises it
    assert scores.cached("zhangwei") == 0  # this one still holds last second's reading
    clock.now += 1.0
    assert scores.cached("zhangwei") is None and await scores.score("zhangwei") == 85
    await kv.set("risk:user:lisi", b"not a number")
    assert await scores.score("lisi") == 100
    dead = RedisKV("redis://127.0.0.1:1/0", prefix="x:", connect_timeout=0.3)
    try:
        assert await RiskScores(dead).score("zhangwei") == 100  # the store is down: fail closed
    finally:
        await dead.close()


class CountingKV(MemoryKV):
    """The in-memory store, counting reads; ``gate`` (when set) holds every answer, already
    read, until it is opened (a reply in transit)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def get(self, key: str) -> bytes | None:
        value = await super().get(key)
        self.reads += 1
        await asyncio.sleep(0)  # a reply takes at least one turn of the loop
        if self.gate is not None:
            await self.gate.wait()
        return value


async def test_requests_at_one_moment_read_a_session_once() -> None:
    kv = CountingKV()
    clock = Clock()
    sessions = GatewaySessions(kv, idle_timeout=600, absolute_timeout=3600, clock=clock)
    _, cookie = await _create(GatewaySessions(kv, idle_timeout=600, absolute_timeout=3600, clock=clock))
    for _ in range(3):  # the cache expires every second: one read each time, however many wait
        kv.reads = 0
        found = await asyncio.gather(*(sessions.from_cookie(cookie, "hr.example.gov") for _ in range(50)))
        assert kv.reads == 1 and all(s is not None and s.sid == found[0].sid for s in found)  # type: ignore[union-attr]
        clock.now += CACHE_SECONDS


async def test_a_revocation_during_a_read_is_not_undone_by_it() -> None:
    kv = CountingKV()
    clock = Clock()
    sessions = GatewaySessions(kv, idle_timeout=600, absolute_timeout=3600, clock=clock)
    sid, cookie = await _create(GatewaySessions(kv, idle_timeout=600, absolute_timeout=3600, clock=clock))
    kv.gate, kv.reads = asyncio.Event(), 0
    early = asyncio.create_task(sessions.from_cookie(cookie, "hr.example.gov"))
    leaving = asyncio.create_task(sessions.from_cookie(cookie, "hr.example.gov"))
    for _ in range(5):  # turns of the loop: the read starts and gets its answer
        await asyncio.sleep(0)
    assert kv.reads == 1
    leaving.cancel()  # a client that went away does not cancel the read for the others
    gate, kv.gate = kv.gate, None
    await sessions.revoke(sid)  # revoked while the read's answer is on its way
    gate.set()
    assert await early is not None  # it was asked before the revocation
    assert await sessions.from_cookie(cookie, "hr.example.gov") is None  # after it: refused
    assert sessions.peek(cookie, "hr.example.gov") is False


async def test_risk_scores_at_one_moment_are_read_once() -> None:
    from gateway.risk import RiskScores

    kv = CountingKV()
    scores = RiskScores(kv)
    await RiskScores(kv).set("zhangwei", 40, ttl=60)
    kv.reads = 0
    assert await asyncio.gather(*(scores.score("zhangwei") for _ in range(20))) == [40] * 20
    assert kv.reads == 1
