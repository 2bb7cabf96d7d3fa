"""idp.guard.LoginGuard: progressive lockout in the database, address throttling in KV.

Time-dependent tests run on MemoryKV with the fake clock; the counting itself also runs on
Redis (its windows then pass in real time, so those tests never wait for them).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.db import create_engine, migrate, session_factory
from core.events import Event, RecordingEmitter
from core.kv import KV, MemoryKV, RedisKV
from core.settings import IdpSettings
from idp.directory.models import User
from idp.directory.services import Directory
from idp.guard import GuardReason, LoginGuard, source_key
from onegate.runtime import MIGRATIONS

T0 = 1_800_000_000.0
SETTINGS = IdpSettings(
    lockout_threshold=3,
    lockout_seconds=60,
    lockout_max_seconds=600,
    ip_throttle_limit=5,
    ip_throttle_window=300,
)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


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


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[async_sessionmaker[Any]]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'idp.db'}")
    await migrate(engine, MIGRATIONS)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture(params=["memory", "redis"])
async def any_kv(request: pytest.FixtureRequest) -> AsyncIterator[KV]:
    if request.param == "memory":
        store: KV = MemoryKV()
    else:
        store = RedisKV(request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix"))
    yield store
    await store.close()


@pytest.fixture
def events() -> RecordingEmitter:
    return RecordingEmitter()


def _guard(
    kv: KV, db: async_sessionmaker[Any], events: RecordingEmitter, clock: Clock, **overrides: Any
) -> LoginGuard:
    settings = SETTINGS.model_copy(update=overrides) if overrides else SETTINGS
    return LoginGuard(kv=kv, db=db, settings=settings, events=events, clock=clock)


@pytest.fixture
def guard(sqlite_db: async_sessionmaker[Any], events: RecordingEmitter, clock: Clock) -> LoginGuard:
    """On MemoryKV sharing the fake clock: windows end when the test says so."""
    return _guard(MemoryKV(clock=clock), sqlite_db, events, clock)


async def _user(db: async_sessionmaker[Any], username: str = "zhangwei") -> User:
    async with db() as s:
        user = (await s.execute(select(User).where(User.username == username))).scalar_one_or_none()
    if user is None:
        user = await Directory(db).add_user(username=username, display_name="张伟", password_hash=None)
    return user


async def _fresh(db: async_sessionmaker[Any], username: str = "zhangwei") -> User:
    async with db() as s:
        return (await s.execute(select(User).where(User.username == username))).scalar_one()


def _locked_until(user: User) -> float | None:
    value = user.locked_until
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _of(events: RecordingEmitter, action: str) -> list[Event]:
    return [event for event in events.events if event.action == action]


_addresses = itertools.count(1)


async def _fail(guard: LoginGuard, db: async_sessionmaker[Any], times: int) -> list[Any]:
    """``times`` wrong passwords for zhangwei, each from an address of its own (no throttling)."""
    decisions = []
    for _ in range(times):
        n = next(_addresses)
        ip = f"10.0.{n // 250}.{n % 250 + 1}"
        assert (await guard.begin_attempt(ip)).allowed
        decisions.append(await guard.record_failure(ip=ip, user=await _fresh(db)))
    return decisions


# -- per account --------------------------------------------------------------------------------


async def test_the_threshold_th_failure_locks_the_account_in_the_database(
    any_kv: KV, db: async_sessionmaker[Any], events: RecordingEmitter, clock: Clock
) -> None:
    guard = _guard(any_kv, db, events, clock)
    await _user(db)
    first, second, third = await _fail(guard, db, 3)
    assert first.allowed and second.allowed and not first.locked_now
    assert third.refused and third.locked_now and third.reason is GuardReason.LOCKED
    assert third.retry_after == 60

    user = await _fresh(db)
    assert _locked_until(user) == T0 + 60
    assert user.lockout_count == 1
    decision = guard.check_account(user)
    assert decision.refused and decision.reason is GuardReason.LOCKED and decision.retry_after == 60

    [locked] = _of(events, "user-locked")
    assert locked.get("user.name") == "zhangwei" and locked.get("user.id") == str(user.id)
    assert locked.get("onegate.reason") == "too_many_failures"
    assert locked.get("labels.lockout_seconds") == "60"
    assert locked.get("source.ip", "").startswith("10.0.")
    assert await any_kv.get(f"login-fail:{user.id}") is None  # the counter starts again


async def test_the_lock_ends_by_time(
    guard: LoginGuard, sqlite_db: async_sessionmaker[Any], clock: Clock
) -> None:
    await _user(sqlite_db)
    await _fail(guard, sqlite_db, 3)
    clock.now = T0 + 59
    assert guard.check_account(await _fresh(sqlite_db)).refused
    clock.now = T0 + 60
    assert guard.check_account(await _fresh(sqlite_db)).allowed


async def test_an_administrator_lifts_the_lock_by_clearing_locked_until(
    guard: LoginGuard, sqlite_db: async_sessionmaker[Any]
) -> None:
    await _user(sqlite_db)
    await _fail(guard, sqlite_db, 3)
    assert guard.check_account(await _fresh(sqlite_db)).refused
    # What `onegate user unlock` does from another process: only the row changes.
    async with sqlite_db() as s, s.begin():
        await s.execute(update(User).where(User.username == "zhangwei").values(locked_until=None))
    assert guard.check_account(await _fresh(sqlite_db)).allowed


async def test_each_lockout_doubles_up_to_the_cap(
    guard: LoginGuard, sqlite_db: async_sessionmaker[Any], events: RecordingEmitter, clock: Clock
) -> None:
    await _user(sqlite_db)
    durations = []
    for _ in range(6):
        *_, last = await _fail(guard, sqlite_db, 3)
        durations.append(last.retry_after)
        user = await _fresh(sqlite_db)
        assert _locked_until(user) == clock.now + last.retry_after
        clock.now = _locked_until(user) or 0.0  # the lock has just ended
    assert durations == [60, 120, 240, 480, 600, 600]
    assert (await _fresh(sqlite_db)).lockout_count == 6
    assert [e.get("labels.lockout_seconds") for e in _of(events, "user-locked")] == [
        "60",
        "120",
        "240",
        "480",
        "600",
        "600",
    ]


async def test_lockout_count_decays_after_a_quiet_day(
    guard: LoginGuard, sqlite_db: async_sessionmaker[Any], clock: Clock
) -> None:
    await _user(sqlite_db)
    await _fail(guard, sqlite_db, 3)
    clock.now += 60 + 3600  # within a day of the end of the first lockout
    *_, second = await _fail(guard, sqlite_db, 3)
    assert second.retry_after == 120
    clock.now += 120 + 86400 + 1  # more than a day after the second one ended
    *_, third = await _fail(guard, sqlite_db, 3)
    assert third.retry_after == 60
    assert (await _fresh(sqlite_db)).lockout_count == 1


async def test_a_success_resets_the_failures_in_a_row_but_not_the_lockout_count(
    guard: LoginGuard, sqlite_db: async_sessionmaker[Any], clock: Clock
) -> None:
    await _user(sqlite_db)
    await _fail(guard, sqlite_db, 3)
    clock.now += 61
    await _fail(guard, sqlite_db, 2)
    await guard.begin_attempt("10.0.0.1")
    await guard.record_success(ip="10.0.0.1", user=await _fresh(sqlite_db))
    decisions = await _fail(guard, sqlite_db, 2)
    assert all(d.allowed for d in decisions)  # 2 + success + 2: never three in a row
    *_, lock = await _fail(guard, sqlite_db, 1)
    assert lock.locked_now and lock.retry_after == 120  # the count survived the success


async def test_failures_in_a_row_are_forgotten_after_the_window(
    guard: LoginGuard, sqlite_db: async_sessionmaker[Any], clock: Clock
) -> None:
    await _user(sqlite_db)
    await _fail(guard, sqlite_db, 2)
    clock.now += 61  # lockout_seconds is also the window of the failure counter
    decisions = await _fail(guard, sqlite_db, 2)
    assert all(d.allowed for d in decisions)
    assert _locked_until(await _fresh(sqlite_db)) is None


async def test_uncounted_failures_never_lock(guard: LoginGuard, sqlite_db: async_sessionmaker[Any]) -> None:
    await _user(sqlite_db)
    for _ in range(5):
        assert (await guard.record_failure(ip="10.0.0.1", user=None)).allowed
    assert _locked_until(await _fresh(sqlite_db)) is None


async def test_parallel_failures_lock_once(
    any_kv: KV, db: async_sessionmaker[Any], events: RecordingEmitter, clock: Clock
) -> None:
    guard = _guard(any_kv, db, events, clock)
    user = await _user(db)
    decisions = await asyncio.gather(*(guard.record_failure(ip="10.0.0.1", user=user) for _ in range(8)))
    assert sum(d.locked_now for d in decisions) == 1
    assert (await _fresh(db)).lockout_count == 1
    assert len(_of(events, "user-locked")) == 1


async def test_a_vanished_user_is_not_locked(guard: LoginGuard, sqlite_db: async_sessionmaker[Any]) -> None:
    ghost = User(id=999, username="ghost", display_name="ghost", sub="x")
    decisions = [await guard.record_failure(ip="10.0.0.1", user=ghost) for _ in range(3)]
    assert all(d.allowed for d in decisions)


# -- per source address -------------------------------------------------------------------------


async def test_an_address_is_throttled_after_the_limit_with_one_event(
    any_kv: KV, sqlite_db: async_sessionmaker[Any], events: RecordingEmitter, clock: Clock
) -> None:
    guard = _guard(any_kv, sqlite_db, events, clock)
    for n in range(5):
        assert (await guard.begin_attempt("203.0.113.7", username=f"user{n}")).allowed
        await guard.record_failure(ip="203.0.113.7", user=None)
    refused = [await guard.begin_attempt("203.0.113.7", username="user-x") for _ in range(3)]
    assert all(d.refused and d.reason is GuardReason.THROTTLED for d in refused)
    assert all(0 < d.retry_after <= 300 for d in refused)
    [throttled] = _of(events, "ip-throttled")
    assert throttled.get("source.ip") == "203.0.113.7"
    assert throttled.get("onegate.reason") == "too_many_failures"
    assert throttled.get("labels.last_username") == "user-x"
    assert (await guard.begin_attempt("203.0.113.8")).allowed  # another address is not affected


async def test_the_throttle_lifts_when_the_window_ends(
    guard: LoginGuard, events: RecordingEmitter, clock: Clock
) -> None:
    for _ in range(5):
        await guard.begin_attempt("203.0.113.7")
    refused = await guard.begin_attempt("203.0.113.7")
    assert refused.refused and refused.retry_after == 300
    clock.now += 299
    assert (await guard.begin_attempt("203.0.113.7")).retry_after == 1
    clock.now += 1
    assert (await guard.begin_attempt("203.0.113.7")).allowed
    for _ in range(5):
        await guard.begin_attempt("203.0.113.7")
    assert len(_of(events, "ip-throttled")) == 2  # once per window


async def test_successes_give_back_their_own_attempt_only(
    guard: LoginGuard, sqlite_db: async_sessionmaker[Any]
) -> None:
    user = await _user(sqlite_db)
    for _ in range(4):  # four failures
        await guard.begin_attempt("10.0.0.9")
    for _ in range(10):  # then many successes: each gives back only itself
        assert (await guard.begin_attempt("10.0.0.9")).allowed
        await guard.record_success(ip="10.0.0.9", user=user)
    assert (await guard.begin_attempt("10.0.0.9")).allowed  # the fifth failure
    assert (await guard.begin_attempt("10.0.0.9")).refused


async def test_parallel_attempts_cannot_all_slip_under_the_limit(guard: LoginGuard) -> None:
    decisions = await asyncio.gather(*(guard.begin_attempt("198.51.100.1") for _ in range(12)))
    assert sum(d.allowed for d in decisions) == 5


async def test_an_ipv6_host_cannot_escape_by_rotating_within_its_64(guard: LoginGuard) -> None:
    for n in range(5):
        assert (await guard.begin_attempt(f"2001:db8:1:2::{n + 1:x}")).allowed
    assert (await guard.begin_attempt("2001:db8:1:2:ffff::1")).refused
    assert (await guard.begin_attempt("2001:db8:1:3::1")).allowed  # the next /64 is someone else


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("10.1.2.3", "10.1.2.3"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::9", "2001:db8:1:2::/64"),
        ("", "unknown"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_source_key(ip: str, key: str) -> None:
    assert source_key(ip) == key


async def test_check_account_ignores_a_past_lock(guard: LoginGuard, clock: Clock) -> None:
    user = User(id=1, username="zhangwei", display_name="张伟", sub="s", lockout_count=3)
    user.locked_until = datetime.fromtimestamp(T0 - 1, UTC)
    assert guard.check_account(user).allowed
    user.locked_until = datetime.fromtimestamp(T0 + 10.5, UTC).replace(tzinfo=None)  # naive, as SQLite
    decision = guard.check_account(user)
    assert decision.refused and decision.retry_after == 11
