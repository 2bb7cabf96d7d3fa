"""Policy versions: apply, history, diff, rollback; rejected bundles stored nowhere; every
instance reloads within a second of a change, and catches up by polling when the channel fails."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

import onegate.runtime
from core.db import create_engine, migrate, session_factory
from core.events import Category, RecordingEmitter
from core.kv import KV, MemoryKV, RedisKV
from policy.check import Catalog
from policy.engine import PolicyEngine
from policy.model import Effect, Request
from policy.models import PolicyVersion
from policy.rules import load_bundle, load_path
from policy.versions import CHANNEL, PolicyRejected, PolicyStore, PolicyWatcher, UnknownVersion, digest_of

V1 = """apps:
  hr:
    rules:
      - {id: staff, effect: allow, subjects: {groups: [hr-staff]}}
"""
V2 = V1 + "      - {id: no-admin, effect: deny, paths: [/admin]}\n"
V3 = V1 + "      - {id: no-audit, effect: deny, paths: [/audit]}\n"
CATALOG = Catalog(groups={"hr-staff"})


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return session_factory(engine)


@pytest.fixture
async def sqlite_sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[Any]]:
    """For the tests about the channel, not the database."""
    eng = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'onegate.db'}")
    await migrate(eng, onegate.runtime.MIGRATIONS)
    yield session_factory(eng)
    await eng.dispose()


def admin_request(user: str = "zhangwei") -> Request:
    return Request.of(app="hr", path="/admin", user=user, groups={"hr-staff"})


async def test_apply_history_diff_and_rollback(sessions: async_sessionmaker[Any]) -> None:
    events = RecordingEmitter()
    store = PolicyStore(sessions, MemoryKV(), events)
    assert await store.active() is None and await store.history() == []
    v1, _ = await store.apply(V1, author="secadmin", comment="first", catalog=CATALOG)
    v2, warnings = await store.apply(V2, author="wangfang", comment="close /admin", catalog=CATALOG)
    assert (v1.number, v2.number) == (1, 2)
    assert v1.created_at.tzinfo is not None and v1.created_at <= v2.created_at
    assert (v2.author, v2.comment, v2.action, v2.based_on, v2.digest) == (
        "wangfang",
        "close /admin",
        "apply",
        None,
        digest_of(V2),
    )
    assert [f.code for f in warnings] == ["overlap"]  # warnings do not block
    assert (await store.active()) == v2 == (await store.get(2))
    # The same text again changes nothing.
    again, _ = await store.apply(V2, author="other", catalog=CATALOG)
    assert again == v2 and len(await store.history()) == 2

    diff = await store.diff(1, 2)
    assert diff == (
        "--- v1\n+++ v2\n@@ -2,3 +2,4 @@\n   hr:\n     rules:\n"
        "       - {id: staff, effect: allow, subjects: {groups: [hr-staff]}}\n"
        "+      - {id: no-admin, effect: deny, paths: [/admin]}\n"
    )
    assert await store.diff(2, 2) == ""

    v3, _ = await store.rollback(1, author="secadmin", catalog=CATALOG)
    assert (v3.number, v3.action, v3.based_on, v3.text, v3.digest, v3.comment) == (
        3,
        "rollback",
        1,
        V1,
        v1.digest,
        "rollback to v1",
    )
    assert [(v.number, v.author, v.action) for v in await store.history()] == [
        (3, "secadmin", "rollback"),
        (2, "wangfang", "apply"),
        (1, "secadmin", "apply"),
    ]
    assert [v.number for v in await store.history(limit=2)] == [3, 2]
    assert events.actions() == ["policy-activated", "policy-activated", "policy-rolled-back"]
    activated, rolled_back = events.events[1], events.events[2]
    assert activated.category is Category.CONFIGURATION
    assert (
        activated.get("onegate.policy.version"),
        activated.get("onegate.policy.previous"),
        activated.get("onegate.policy.digest"),
        activated.get("labels.actor"),
    ) == (2, 1, digest_of(V2), "wangfang")
    assert (rolled_back.get("onegate.policy.version"), rolled_back.get("onegate.policy.restored")) == (3, 1)
    with pytest.raises(UnknownVersion, match="no policy version 99"):
        await store.get(99)
    with pytest.raises(UnknownVersion):
        await store.rollback(99, author="secadmin", catalog=CATALOG)


async def test_a_bundle_failing_check_never_becomes_active(sessions: async_sessionmaker[Any]) -> None:
    events = RecordingEmitter()
    kv = MemoryKV()
    store = PolicyStore(sessions, kv, events)
    await store.apply(V1, author="secadmin", catalog=CATALOG)
    unknown_group, yaml_error, duplicate_id = (
        V1.replace("hr-staff", "hr-staf"),
        "apps: [\n",
        V1 + "      - {id: staff, effect: deny}\n",
    )
    async with kv.subscribe(CHANNEL) as channel:
        for bad, code in (
            (unknown_group, "unknown_group"),
            (yaml_error, "yaml"),
            (duplicate_id, "duplicate_id"),
        ):
            with pytest.raises(PolicyRejected) as caught:
                await store.apply(bad, author="secadmin", catalog=CATALOG, source="hr.yaml")
            errors = [f for f in caught.value.findings if f.severity == "error"]
            assert code in {f.code for f in errors} and all(f.line and f.source == "hr.yaml" for f in errors)
        assert await channel.get(timeout=0.05) is None  # nothing announced
    active = await store.active()
    assert active is not None and active.number == 1 and active.text == V1
    assert len(await store.history()) == 1
    assert events.actions() == ["policy-activated"] + ["policy-rejected"] * 3
    assert events.events[1].get("event.outcome") == "failure"
    assert events.events[1].get("onegate.policy.errors") == 1

    # A rollback to a version that no longer passes (its group is gone) is refused too, and its
    # findings name the version.
    await store.apply(V2, author="secadmin", catalog=CATALOG)
    with pytest.raises(PolicyRejected) as caught:
        await store.rollback(1, author="secadmin", catalog=Catalog(groups={"someone-else"}))
    assert [(f.source, f.code) for f in caught.value.findings if f.severity == "error"] == [
        ("v1", "unknown_group")
    ]
    assert (await store.active()).number == 2  # type: ignore[union-attr]
    assert events.actions()[-1] == "policy-rejected" and events.events[-1].get("onegate.policy.restored") == 1


async def test_a_folder_is_stored_as_one_text_that_loads_again(
    sessions: async_sessionmaker[Any], tmp_path: Path
) -> None:
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "hr.yaml").write_text(V1)
    (folder / "wiki.yaml").write_text(
        "apps:\n  wiki:\n    rules:\n      - {id: wiki-all, effect: allow, subjects: {groups: [staf]}}\n"
    )
    store = PolicyStore(sessions, MemoryKV(), RecordingEmitter())
    with pytest.raises(PolicyRejected) as caught:
        await store.apply(load_path(folder), author="secadmin", catalog=CATALOG)
    (finding,) = caught.value.findings
    assert (finding.source, finding.line, finding.code) == (str(folder / "wiki.yaml"), 4, "unknown_group")

    (folder / "wiki.yaml").write_text((folder / "wiki.yaml").read_text().replace("staf", "hr-staff"))
    version, _ = await store.apply(load_path(folder), author="secadmin", catalog=CATALOG)
    reloaded = load_bundle(version.text)
    assert sorted(reloaded.apps) == ["hr", "wiki"] and [r.id for r in reloaded.all_rules()] == [
        "staff",
        "wiki-all",
    ]
    assert version.digest == digest_of(version.text) == load_path(folder).digest


async def test_concurrent_changes_get_consecutive_numbers(sessions: async_sessionmaker[Any]) -> None:
    store = PolicyStore(sessions, MemoryKV(), RecordingEmitter())
    texts = [V1 + f"      - {{id: d{i}, effect: deny, paths: [/d{i}]}}\n" for i in range(4)]
    results = await asyncio.gather(*(store.apply(t, author="secadmin", catalog=CATALOG) for t in texts))
    assert sorted(v.number for v, _ in results) == [1, 2, 3, 4]
    assert {v.text for v in await store.history()} == set(texts)
    # The same text from two administrators at once: one version.
    same = await asyncio.gather(*(store.apply(V3, author=a, catalog=CATALOG) for a in ("a", "b")))
    assert same[0][0] == same[1][0] and same[0][0].number == 5
    assert await store.newest_number() == 5


async def test_every_instance_reloads_within_a_second(
    sessions: async_sessionmaker[Any], redis_url: str, redis_prefix: str
) -> None:
    # Two gateway instances: their own Redis connections, the same database. A long poll, so
    # only the channel can make the bound.
    kvs = [RedisKV(redis_url, prefix=redis_prefix) for _ in range(3)]
    admin = PolicyStore(sessions, kvs[0], RecordingEmitter())
    reloaded: list[int | None] = []
    watchers = [
        PolicyWatcher(
            PolicyStore(sessions, kv, RecordingEmitter()),
            kv,
            poll_interval=30,
            on_reload=lambda e: reloaded.append(e.version),
        )
        for kv in kvs[1:]
    ]
    try:
        for watcher in watchers:
            await watcher.start()
            assert watcher.version is None
            assert watcher.engine.decide(admin_request()).effect is Effect.DENY  # nothing active: deny
        await _subscribed(kvs[0], 2)
        await admin.apply(V1, author="secadmin", catalog=CATALOG)
        await _until(lambda: all(w.version == 1 for w in watchers))
        assert all(w.engine.decide(admin_request()).allowed for w in watchers)

        for text, number in ((V2, 2), (V1, 3)):
            started = time.monotonic()
            await admin.apply(text, author="secadmin", catalog=CATALOG)
            await _until(lambda n=number: all(w.version == n for w in watchers))  # type: ignore[misc]
            elapsed = time.monotonic() - started
            assert elapsed <= 1.0, f"reload took {elapsed:.3f} s"
        assert all(w.engine.decide(admin_request()).allowed for w in watchers)
        v2 = PolicyEngine.from_text(V2)
        assert v2.decide(admin_request()).rule_ids == ("no-admin",)  # what v2 served meanwhile
        assert sorted(reloaded) == [1, 1, 2, 2, 3, 3]
    finally:
        for watcher in watchers:
            await watcher.stop()
        for kv in kvs:
            await kv.close()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_lost_message_is_caught_up_by_the_poll(
    sqlite_sessions: async_sessionmaker[Any], backend: str, request: pytest.FixtureRequest
) -> None:
    # The store publishes where the watcher does not listen (another MemoryKV, another prefix).
    if backend == "redis":
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        admin_kv: KV = RedisKV(url, prefix=prefix + "elsewhere:")
        watcher_kv: KV = RedisKV(url, prefix=prefix)
    else:
        admin_kv, watcher_kv = MemoryKV(), MemoryKV()
    store = PolicyStore(sqlite_sessions, admin_kv, RecordingEmitter())
    watcher = PolicyWatcher(
        PolicyStore(sqlite_sessions, watcher_kv, RecordingEmitter()), watcher_kv, poll_interval=0.2
    )
    await watcher.start()
    try:
        await store.apply(V1, author="secadmin", catalog=CATALOG)
        started = time.monotonic()
        await _until(lambda: watcher.version == 1, timeout=3)
        assert time.monotonic() - started < 1.5
        assert watcher.engine.decide(admin_request()).allowed
    finally:
        await watcher.stop()
        await admin_kv.close()
        await watcher_kv.close()


async def test_redis_going_away_and_coming_back(
    sqlite_sessions: async_sessionmaker[Any], redis_url: str, redis_prefix: str
) -> None:
    """The watcher reaches Redis through a relay the test cuts: the poll keeps it current while
    Redis is away, and it subscribes again when Redis is back."""
    target = urlsplit(redis_url)
    relay = Relay(target.hostname or "127.0.0.1", target.port or 6379)
    await relay.open()
    admin_kv = RedisKV(redis_url, prefix=redis_prefix)
    watcher_kv = RedisKV(f"redis://127.0.0.1:{relay.port}/0", prefix=redis_prefix, connect_timeout=0.5)
    admin = PolicyStore(sqlite_sessions, admin_kv, RecordingEmitter())
    watcher = PolicyWatcher(
        PolicyStore(sqlite_sessions, watcher_kv, RecordingEmitter()), watcher_kv, poll_interval=0.3
    )
    try:
        await watcher.start()
        await _subscribed(admin_kv, 1)
        await admin.apply(V1, author="secadmin", catalog=CATALOG)
        await _until(lambda: watcher.version == 1)

        await relay.cut()
        await admin.apply(V2, author="secadmin", catalog=CATALOG)
        await _until(lambda: watcher.version == 2, timeout=3)  # by the poll
        assert watcher.engine.decide(admin_request()).effect is Effect.DENY

        await relay.open()
        await _subscribed(admin_kv, 1, timeout=5)  # back on the channel
        await admin.apply(V1, author="secadmin", catalog=CATALOG)
        await _until(lambda: watcher.version == 3)
    finally:
        await watcher.stop()
        await relay.cut()
        await admin_kv.close()
        await watcher_kv.close()


async def test_apply_stores_the_version_while_redis_is_down(sqlite_sessions: async_sessionmaker[Any]) -> None:
    kv = RedisKV("redis://127.0.0.1:1/0", prefix="nowhere:", connect_timeout=0.3)  # nothing listens
    events = RecordingEmitter()
    try:
        version, _ = await PolicyStore(sqlite_sessions, kv, events).apply(
            V1, author="secadmin", catalog=CATALOG
        )
    finally:
        await kv.close()
    assert version.number == 1 and events.actions() == ["policy-activated"]
    active = await PolicyStore(sqlite_sessions, MemoryKV(), events).active()
    assert active == version  # the watchers' poll finds it


@pytest.mark.parametrize("forward", [True, False], ids=["refused", "hung"])
async def test_a_watcher_stops_while_redis_is_away(
    sqlite_sessions: async_sessionmaker[Any], redis_url: str, redis_prefix: str, forward: bool
) -> None:
    # redis-py replaces a cancellation by its own error when it cannot unsubscribe on the way
    # out: the watcher must end all the same.
    target = urlsplit(redis_url)
    relay = Relay(target.hostname or "127.0.0.1", target.port or 6379, forward=forward)
    await relay.open()
    kv = RedisKV(f"redis://127.0.0.1:{relay.port}/0", prefix=redis_prefix, connect_timeout=0.3)
    direct = RedisKV(redis_url, prefix=redis_prefix)
    watcher = PolicyWatcher(PolicyStore(sqlite_sessions, kv, RecordingEmitter()), kv, poll_interval=0.1)
    try:
        await watcher.start()
        if forward:
            await _subscribed(direct, 1)
            await relay.cut()
        for _ in range(5):  # land the cancellation at different points of the reconnecting
            await asyncio.sleep(0.13)
            tasks = list(watcher._follower._tasks)
            await asyncio.wait_for(watcher.stop(), timeout=3)
            assert tasks and all(t.done() for t in tasks)
            await watcher.start()
    finally:
        await watcher.stop()
        await relay.cut()
        await kv.close()
        await direct.close()


async def test_a_stored_version_that_does_not_load_keeps_the_engine(
    sessions: async_sessionmaker[Any],
) -> None:
    events = RecordingEmitter()
    store = PolicyStore(sessions, MemoryKV(), events)

    async def write_past_the_store(number: int, text: str) -> None:
        # A row written by hand, or by a release that read bundles differently.
        async with sessions() as s, s.begin():
            s.add(PolicyVersion(id=number, author="dba", comment="", action="apply", text=text, digest="x"))

    # Nothing that loads: deny everything.
    await write_past_the_store(1, "apps: [")
    watcher = PolicyWatcher(store, MemoryKV(), poll_interval=60)
    await watcher.start()
    try:
        assert (watcher.version, watcher.failed) == (None, 1)
        assert watcher.engine.decide(admin_request()).effect is Effect.DENY
        await store.apply(V1, author="secadmin", catalog=CATALOG)
        await watcher.refresh()
        assert (watcher.version, watcher.failed) == (2, None)

        await write_past_the_store(3, "apps:\n  hr:\n    rules: [{id: x, effect: permit}]\n")
        await watcher.refresh()
        assert (watcher.version, watcher.failed) == (2, 3)
        assert watcher.engine.decide(admin_request()).allowed  # v2 still serves
        assert await watcher.refresh() is False  # not tried again
        failures = [e for e in events.events if e.action == "policy-load-failed"]
        assert [(e.get("onegate.policy.version"), e.get("onegate.policy.in_use")) for e in failures] == [
            (1, None),
            (3, 2),
        ]
        assert "bad_effect" in failures[1].get("error.message")

        # A newer good version is loaded.
        await store.apply(V2, author="secadmin", catalog=CATALOG)
        await watcher.refresh()
        assert (watcher.version, watcher.failed) == (4, None)
        assert watcher.engine.decide(admin_request()).rule_ids == ("no-admin",)
    finally:
        await watcher.stop()


async def test_a_failing_reload_callback_does_not_stop_the_watcher(
    sqlite_sessions: async_sessionmaker[Any],
) -> None:
    kv = MemoryKV()
    store = PolicyStore(sqlite_sessions, kv, RecordingEmitter())

    def broken(engine: PolicyEngine) -> None:
        raise RuntimeError("callback bug")

    watcher = PolicyWatcher(store, kv, poll_interval=60, on_reload=broken)
    await watcher.start()
    try:
        for number, text in enumerate((V1, V2), start=1):
            await store.apply(text, author="secadmin", catalog=CATALOG)
            await _until(lambda n=number: watcher.version == n)  # type: ignore[misc]
    finally:
        await watcher.stop()


async def test_diff_of_texts_without_a_final_newline(sessions: async_sessionmaker[Any]) -> None:
    store = PolicyStore(sessions, MemoryKV(), RecordingEmitter())
    await store.apply(V1.rstrip("\n"), author="secadmin", catalog=CATALOG)
    await store.apply(V2.rstrip("\n"), author="secadmin", catalog=CATALOG)
    diff = await store.diff(1, 2)
    assert diff.endswith(
        "-      - {id: staff, effect: allow, subjects: {groups: [hr-staff]}}\n"
        "\\ No newline at end of file\n"
        "+      - {id: staff, effect: allow, subjects: {groups: [hr-staff]}}\n"
        "+      - {id: no-admin, effect: deny, paths: [/admin]}\n"
        "\\ No newline at end of file\n"
    )


# -- helpers ---------------------------------------------------------------------------------


async def _until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def _subscribed(kv: KV, watchers: int, timeout: float = 2.0) -> None:
    """Wait until ``watchers`` listen on the channel (an empty message reaches them; they ignore
    it after reading the newest version, which has not changed)."""
    deadline = time.monotonic() + timeout
    while await kv.publish(CHANNEL, b"") < watchers:
        if time.monotonic() > deadline:
            raise AssertionError("watchers not subscribed in time")
        await asyncio.sleep(0.02)


class Relay:
    """A TCP relay to Redis that can be cut (every connection closed, nothing listening) and
    opened again on the same port: Redis going away, for the client, for real."""

    def __init__(self, host: str, port: int, *, forward: bool = True) -> None:
        self._target = (host, port)
        self._forward = forward  # False: accept connections and never answer (a hung Redis)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            if not self._forward:
                await reader.read()  # until the client gives up
                return
            up_reader, up_writer = await asyncio.open_connection(*self._target)
            self._writers.add(up_writer)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
