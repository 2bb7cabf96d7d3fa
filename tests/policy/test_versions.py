"""Policy versions: apply, history, diff, rollback; rejected bundles stored nowhere; every
instance reloads within a second of a change."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

import onegate.runtime
from core.db import create_engine, migrate, session_factory
from core.events import RecordingEmitter
from core.kv import MemoryKV, RedisKV
from policy.check import Catalog
from policy.model import Effect, Request
from policy.models import PolicyVersion
from policy.versions import PolicyRejected, PolicyStore, PolicyWatcher, UnknownVersion

V1 = """apps:
  hr:
    rules:
      - {id: staff, effect: allow, subjects: {groups: [hr-staff]}}
"""
V2 = V1 + "      - {id: no-admin, effect: deny, paths: [/admin]}\n"
CATALOG = Catalog(groups={"hr-staff"})


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'onegate.db'}"
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    eng = create_engine(url)
    await migrate(eng, onegate.runtime.MIGRATIONS)
    yield eng
    await eng.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return session_factory(engine)


def admin_request(user: str = "zhangwei") -> Request:
    return Request.of(app="hr", path="/admin", user=user, groups={"hr-staff"})


async def test_apply_history_diff_and_rollback(sessions: async_sessionmaker[Any]) -> None:
    events = RecordingEmitter()
    store = PolicyStore(sessions, MemoryKV(), events)
    assert await store.active() is None
    v1, _ = await store.apply(V1, author="secadmin", comment="first", catalog=CATALOG)
    v2, warnings = await store.apply(V2, author="secadmin", comment="close /admin", catalog=CATALOG)
    assert (v1.number, v2.number) == (1, 2) and v2.created_at >= v1.created_at
    assert [f.code for f in warnings] == ["overlap"]  # warnings do not block
    assert (await store.active()) == v2
    # The same text again changes nothing.
    again, _ = await store.apply(V2, author="other", catalog=CATALOG)
    assert again == v2 and len(await store.history()) == 2

    diff = await store.diff(1, 2)
    assert diff.startswith("--- v1\n+++ v2\n") and "+      - {id: no-admin" in diff

    v3, _ = await store.rollback(1, author="secadmin", catalog=CATALOG)
    assert (v3.number, v3.action, v3.based_on, v3.text, v3.comment) == (
        3,
        "rollback",
        1,
        V1,
        "rollback to v1",
    )
    history = await store.history()
    assert [(v.number, v.author, v.action) for v in history] == [
        (3, "secadmin", "rollback"),
        (2, "secadmin", "apply"),
        (1, "secadmin", "apply"),
    ]
    assert events.actions() == ["policy-activated", "policy-activated", "policy-rolled-back"]
    assert events.events[-1].get("onegate.policy.restored") == 1
    with pytest.raises(UnknownVersion):
        await store.get(99)


async def test_a_bundle_failing_check_never_becomes_active(sessions: async_sessionmaker[Any]) -> None:
    events = RecordingEmitter()
    store = PolicyStore(sessions, MemoryKV(), events)
    await store.apply(V1, author="secadmin", catalog=CATALOG)
    for bad in (V1.replace("hr-staff", "hr-staf"), "apps: [\n", V1 + "      - {id: staff, effect: deny}\n"):
        with pytest.raises(PolicyRejected) as caught:
            await store.apply(bad, author="secadmin", catalog=CATALOG)
        assert caught.value.findings and all(f.line for f in caught.value.findings)
    active = await store.active()
    assert active is not None and active.number == 1 and active.text == V1
    assert events.actions() == ["policy-activated"] + ["policy-rejected"] * 3
    # A rollback to a version that no longer passes (its group is gone) is refused too.
    await store.apply(V2, author="secadmin", catalog=CATALOG)
    with pytest.raises(PolicyRejected):
        await store.rollback(1, author="secadmin", catalog=Catalog(groups={"someone-else"}))
    assert (await store.active()).number == 2  # type: ignore[union-attr]


async def test_every_instance_reloads_within_a_second(
    sessions: async_sessionmaker[Any], redis_url: str, redis_prefix: str
) -> None:
    # Two gateway instances: their own Redis connections, the same database.
    kvs = [RedisKV(redis_url, prefix=redis_prefix) for _ in range(3)]
    admin = PolicyStore(sessions, kvs[0], RecordingEmitter())
    watchers = [
        PolicyWatcher(PolicyStore(sessions, kv, RecordingEmitter()), kv, poll_interval=30) for kv in kvs[1:]
    ]
    try:
        for watcher in watchers:
            await watcher.start()
            assert watcher.engine.decide(admin_request()).effect is Effect.DENY  # nothing active: deny
        await asyncio.sleep(0.1)  # subscribed
        await admin.apply(V1, author="secadmin", catalog=CATALOG)
        await _until(lambda: all(w.version == 1 for w in watchers))
        assert all(w.engine.decide(admin_request()).allowed for w in watchers)

        started = time.monotonic()
        await admin.apply(V2, author="secadmin", catalog=CATALOG)
        await _until(lambda: all(w.version == 2 for w in watchers))
        elapsed = time.monotonic() - started
        assert elapsed <= 1.0, f"reload took {elapsed:.3f} s"
        assert all(w.engine.decide(admin_request()).rule_ids == ("no-admin",) for w in watchers)
    finally:
        for watcher in watchers:
            await watcher.stop()
        for kv in kvs:
            await kv.close()


async def test_a_lost_message_is_caught_up_by_the_poll(sessions: async_sessionmaker[Any]) -> None:
    store = PolicyStore(sessions, MemoryKV(), RecordingEmitter())  # publishes where nobody listens
    watcher_kv = MemoryKV()
    watcher = PolicyWatcher(store, watcher_kv, poll_interval=0.1)
    await watcher.start()
    try:
        await store.apply(V1, author="secadmin", catalog=CATALOG)
        await _until(lambda: watcher.version == 1, timeout=3)
    finally:
        await watcher.stop()


async def test_a_stored_version_that_does_not_load_keeps_the_engine(
    sessions: async_sessionmaker[Any],
) -> None:
    store = PolicyStore(sessions, MemoryKV(), RecordingEmitter())
    await store.apply(V1, author="secadmin", catalog=CATALOG)
    watcher = PolicyWatcher(store, MemoryKV(), poll_interval=60)
    await watcher.start()
    try:
        # A row written past the store (by hand, or by an older release): it never replaces the
        # working engine.
        async with sessions() as s, s.begin():
            s.add(PolicyVersion(author="dba", comment="", action="apply", text="apps: [", digest="x"))
        assert await watcher.refresh() is False
        assert watcher.engine.version == 1 and watcher.engine.decide(admin_request()).allowed
    finally:
        await watcher.stop()


async def _until(condition: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)
