"""Routes added at run time: validated as configured routes are, refused when they collide with the
configuration or with each other, kept with their history, and followed by every gateway process
within a second (the channel) or the poll (when a message is lost)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

import onegate.runtime
from core.db import create_engine, migrate, session_factory
from core.events import Category, Outcome, RecordingEmitter
from core.kv import KV, MemoryKV, RedisKV
from core.settings import GatewayRoute
from gateway.models import RouteRecord
from gateway.route_records import (
    RouteConflict,
    RouteInvalid,
    RouteNotFound,
    RouteStale,
    config_route_dict,
    parse_route,
)
from gateway.route_store import CHANNEL, RouteStore
from gateway.route_watcher import RouteWatcher
from gateway.routes import Route, RouteTable, compose, find_conflict
from gateway.upstream import Origin

CONFIG = [
    GatewayRoute(app="hr", hosts=["hr.example.gov"], upstream="http://10.2.0.15:8080"),
    GatewayRoute(app="oa-legacy", hosts=["oa.example.gov"]),
]
PERMITS = {"hosts": ["permits.example.gov"], "upstream": "http://10.2.0.16:8080"}


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


def _store(sessions: async_sessionmaker[Any], kv: KV | None = None, **kwargs: Any) -> RouteStore:
    return RouteStore(
        sessions, kv or MemoryKV(), kwargs.pop("events", RecordingEmitter()), config=CONFIG, **kwargs
    )


async def _until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# -- the table rules ---------------------------------------------------------------------------


def _route(app: str, *hosts: str, prefix: str = "/") -> Route:
    return Route(app=app, hosts=hosts, origin=Origin.parse("http://10.0.0.1:80"), path_prefix=prefix)


def test_the_configuration_owns_its_applications_and_hosts() -> None:
    config = RouteTable([_route("hr", "hr.example.gov")])
    assert find_conflict(_route("hr", "new.example.gov"), config, []).kind == "config_app"  # type: ignore[union-attr]
    # Even a longer prefix of a configured host would take requests away from it.
    taken = find_conflict(_route("reports", "hr.example.gov", prefix="/reports"), config, [])
    assert taken is not None and (taken.kind, taken.other, taken.host) == (
        "config_host",
        "hr",
        "hr.example.gov",
    )
    assert "configuration" in taken.message_en and "配置文件" in taken.message_zh
    # Added routes share a host by prefix, as configured ones do; not with the same prefix.
    others = [_route("permits", "permits.example.gov")]
    assert find_conflict(_route("permits-api", "permits.example.gov", prefix="/api"), config, others) is None
    same = find_conflict(_route("permits2", "x.example.gov", "permits.example.gov"), config, others)
    assert same is not None and (same.kind, same.other, same.path_prefix) == ("host", "permits", "/")


def test_compose_leaves_out_what_the_configuration_took_since() -> None:
    config = [_route("hr", "hr.example.gov")]
    added = [_route("permits", "permits.example.gov"), _route("hr-new", "hr.example.gov", prefix="/new")]
    table, left_out = compose(config, added)
    assert sorted(table.hosts()) == ["hr.example.gov", "permits.example.gov"]
    assert table.match("hr.example.gov", "/new/x").app == "hr"  # type: ignore[union-attr]
    assert [(r.app, c.kind) for r, c in left_out] == [("hr-new", "config_host")]


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "hosts"),
        ({"hosts": []}, "hosts"),
        ({"hosts": "permits.example.gov"}, "hosts"),
        ({"hosts": ["permits.example.gov:8443"]}, "hosts"),
        ({"hosts": ["10.2.0.16"]}, "hosts"),
        ({"hosts": ["localhost"]}, "hosts"),
        ({"hosts": ["a.example.gov", "A.example.gov"]}, "hosts"),
        ({"hosts": ["evil@permits.example.gov"]}, "hosts"),
        ({"hosts": [f"h{i}.example.gov" for i in range(21)]}, "hosts"),
        ({**PERMITS, "upstream": "http://10.2.0.16:8080/app"}, "upstream"),
        ({**PERMITS, "upstream": "ftp://10.2.0.16"}, "upstream"),
        ({**PERMITS, "upstream": "http://user:pw@10.2.0.16"}, "upstream"),
        ({**PERMITS, "upstream": 8080}, "upstream"),
        ({**PERMITS, "path_prefix": "/a%2Fb"}, "path_prefix"),
        ({**PERMITS, "path_prefix": "relative"}, "path_prefix"),
        ({**PERMITS, "connect_timeout": "5"}, "connect_timeout"),
        ({**PERMITS, "connect_timeout": 0}, "connect_timeout"),
        ({**PERMITS, "read_timeout": 7200}, "read_timeout"),
        ({**PERMITS, "preserve_host": "yes"}, "preserve_host"),
        ({**PERMITS, "enabled": "true"}, "enabled"),
        ({**PERMITS, "app": "permits"}, "app"),  # the name is the route's key, not a field
        ({**PERMITS, "color": "red"}, "color"),
    ],
)
def test_a_route_is_validated_as_a_configured_one(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(RouteInvalid) as refused:
        parse_route("permits", spec)
    assert refused.value.field is not None and refused.value.field.split(".")[0] == field
    assert refused.value.message_en and refused.value.message_zh


@pytest.mark.parametrize("app", ["", "-x", "a/b", "a b", "x" * 65, "许可"])
def test_application_names_have_the_policy_form(app: str) -> None:
    with pytest.raises(RouteInvalid) as refused:
        parse_route(app, PERMITS)
    assert refused.value.field == "app"


def test_a_valid_route_is_parsed_with_its_defaults() -> None:
    route, stored = parse_route(
        "permits",
        {"hosts": ["Permits.Example.gov"], "upstream": "http://10.2.0.16:8080", "path_prefix": "/API/"},
    )
    assert route.hosts == ("permits.example.gov",) and route.path_prefix == "/api"
    assert stored == {
        "hosts": ["permits.example.gov"],
        "upstream": "http://10.2.0.16:8080",
        "path_prefix": "/API/",
        "preserve_host": False,
        "connect_timeout": 5.0,
        "read_timeout": 60.0,
        "enabled": True,
    }
    forward_auth, _ = parse_route("oa2", {"hosts": ["oa2.example.gov"], "connect_timeout": 2})
    assert forward_auth.origin is None and forward_auth.connect_timeout == 2.0


# -- the store ---------------------------------------------------------------------------------


async def test_create_update_remove_with_history_and_events(sessions: async_sessionmaker[Any]) -> None:
    events = RecordingEmitter()
    store = _store(sessions, events=events)
    assert await store.revision() == 0 and await store.routes() == [] and await store.history() == []
    created = await store.create("permits", PERMITS, actor="api-key:ops", comment="new system")
    assert (created.app, created.hosts, created.revision, created.enabled) == (
        "permits",
        ("permits.example.gov",),
        1,
        True,
    )
    assert created.created_by == created.updated_by == "api-key:ops" and created.created_at.tzinfo is not None
    assert await store.get("permits") == created and await store.revision() == 1

    updated = await store.update(
        "permits", {**PERMITS, "read_timeout": 120, "enabled": False}, actor="cli:wangfang"
    )
    assert (updated.revision, updated.read_timeout, updated.enabled, updated.updated_by) == (
        2,
        120.0,
        False,
        "cli:wangfang",
    )
    assert updated.created_by == "api-key:ops"
    # The same settings again: nothing stored, no event.
    same = await store.update("permits", {**PERMITS, "read_timeout": 120, "enabled": False}, actor="x")
    assert same == updated and await store.revision() == 2

    removed = await store.remove("permits", actor="cli:wangfang", comment="moved")
    assert removed.app == "permits"
    with pytest.raises(RouteNotFound):
        await store.get("permits")

    history = await store.history()
    assert [(c.number, c.action, c.actor) for c in history] == [
        (3, "remove", "cli:wangfang"),
        (2, "update", "cli:wangfang"),
        (1, "create", "api-key:ops"),
    ]
    assert history[2].before is None and history[2].after["hosts"] == ["permits.example.gov"]  # type: ignore[index]
    assert history[2].comment == "new system" and history[0].comment == "moved"
    assert history[1].changed == ["read_timeout", "enabled"] and history[0].after is None
    assert history[1].as_dict()["before"]["read_timeout"] == 60.0
    assert [c.number for c in await store.history("permits", limit=2)] == [3, 2]
    assert await store.history("other") == []

    assert events.actions() == ["gateway-route-created", "gateway-route-updated", "gateway-route-removed"]
    for event in events.events:
        assert event.category is Category.CONFIGURATION and event.outcome is Outcome.SUCCESS
        assert event.get("onegate.app") == "permits" and event.get("event.dataset") == "onegate.gateway"
    assert events.events[0].get("labels.actor") == "api-key:ops"
    assert events.events[0].get("event.type") == ["creation"]
    assert events.events[1].get("onegate.changed") == ["read_timeout", "enabled"]
    assert events.events[2].get("onegate.route.revision") == 3


async def test_refused_changes_say_why_and_emit_an_event(sessions: async_sessionmaker[Any]) -> None:
    events = RecordingEmitter()
    store = _store(sessions, events=events, reserved_hosts=["idp.example.gov"])
    await store.create("permits", PERMITS, actor="ops")

    cases: list[tuple[Any, str]] = [
        (store.create("permits", {"hosts": ["other.example.gov"]}, actor="ops"), "route_exists"),
        (store.create("hr", {"hosts": ["hr2.example.gov"]}, actor="ops"), "config_conflict"),
        (
            store.create("r", {"hosts": ["hr.example.gov"], "path_prefix": "/r"}, actor="ops"),
            "config_conflict",
        ),
        (
            store.create("p2", {"hosts": ["p2.example.gov", "permits.example.gov"]}, actor="ops"),
            "host_conflict",
        ),
        (store.create("idp", {"hosts": ["idp.example.gov"]}, actor="ops"), "reserved_host"),
        (store.update("hr", {"hosts": ["hr.example.gov"]}, actor="ops"), "config_conflict"),
        (store.remove("oa-legacy", actor="ops"), "config_conflict"),
        (store.update("nothing", {"hosts": ["n.example.gov"]}, actor="ops"), "route_not_found"),
        (store.remove("nothing", actor="ops"), "route_not_found"),
        (
            store.create("bad", {"hosts": ["bad.example.gov"], "upstream": "nope"}, actor="ops"),
            "invalid_route",
        ),
        (store.update("permits", PERMITS, actor="ops", expect_revision=7), "revision_mismatch"),
    ]
    for change, code in cases:
        with pytest.raises((RouteConflict, RouteInvalid, RouteNotFound, RouteStale)) as refused:
            await change
        assert refused.value.code == code, (code, refused.value)
    conflict = await _raises(store.create("r", {"hosts": ["hr.example.gov"], "path_prefix": "/r"}, actor="o"))
    assert "hr.example.gov" in conflict.message_en and "配置文件" in conflict.message_zh
    # The same host with another prefix is no conflict; the same prefix spelled otherwise is.
    await store.create("permits-api", {"hosts": ["permits.example.gov"], "path_prefix": "/api"}, actor="ops")
    twin = await _raises(
        store.create("api2", {"hosts": ["permits.example.gov"], "path_prefix": "/API/"}, actor="o")
    )
    assert twin.code == "host_conflict" and "permits-api" in twin.message_en

    rejected = [e for e in events.events if e.action == "gateway-route-rejected"]
    assert len(rejected) == len(cases) + 2
    assert all(e.outcome is Outcome.FAILURE and e.get("error.message") for e in rejected)
    assert [e.get("onegate.reason") for e in rejected][:2] == ["route_exists", "config_conflict"]
    assert await store.revision() == 2  # nothing refused was stored


async def _raises(change: Any) -> Any:
    try:
        await change
    except (RouteConflict, RouteInvalid) as e:
        return e
    raise AssertionError("the change was not refused")


async def test_concurrent_changes_for_one_host_admit_one(sessions: async_sessionmaker[Any]) -> None:
    store = _store(sessions)
    results = await asyncio.gather(
        *(store.create(f"app{i}", {"hosts": ["shared.example.gov"]}, actor="ops") for i in range(4)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1, results
    assert all(
        isinstance(r, RouteConflict) and r.code == "host_conflict" for r in results if r not in winners
    )
    # Different hosts at once: every one stored, numbered 2, 3, 4 without gaps.
    await asyncio.gather(
        *(store.create(f"x{i}", {"hosts": [f"x{i}.example.gov"]}, actor="ops") for i in range(3))
    )
    assert [c.number for c in await store.history()] == [4, 3, 2, 1]


async def test_the_table_is_config_first_and_leaves_out_disabled_and_shadowed_routes(
    sessions: async_sessionmaker[Any],
) -> None:
    store = _store(sessions)
    await store.create("permits", PERMITS, actor="ops")
    await store.create("off", {"hosts": ["off.example.gov"], "enabled": False}, actor="ops")
    await store.create("docs", {"hosts": ["docs.example.gov"], "upstream": "http://10.2.0.9"}, actor="ops")
    revision, table, left_out = await store.table()
    assert revision == 3 and left_out == []
    assert table.hosts() == ["docs.example.gov", "hr.example.gov", "oa.example.gov", "permits.example.gov"]
    assert table.match("permits.example.gov", "/x").origin == Origin.parse("http://10.2.0.16:8080")  # type: ignore[union-attr]

    # The configuration changes afterwards and takes docs.example.gov: the configuration wins.
    config = [*CONFIG, GatewayRoute(app="docs-new", hosts=["docs.example.gov"], upstream="http://10.9.9.9")]
    later = RouteStore(sessions, MemoryKV(), RecordingEmitter(), config=config)
    _, table, left_out = await later.table()
    assert table.match("docs.example.gov", "/").app == "docs-new"  # type: ignore[union-attr]
    assert [app for app, _ in left_out] == ["docs"]

    # A row written past the store (bad upstream) is left out, never a broken table.
    async with sessions() as s, s.begin():
        row = await s.get(RouteRecord, "permits")
        assert row is not None
        row.upstream = "not a url"
    _, table, left_out = await store.table()
    assert "permits.example.gov" not in table and [app for app, _ in left_out] == ["permits"]


def test_configured_routes_are_described_in_the_same_shape() -> None:
    described = config_route_dict(CONFIG[0])
    assert described["source"] == "config" and described["enabled"] is True
    assert described["hosts"] == ["hr.example.gov"] and described["read_timeout"] == 60.0


# -- the watcher -------------------------------------------------------------------------------


async def _subscribed(kv: KV, watchers: int, timeout: float = 2.0) -> None:
    """Wait until ``watchers`` listen on the channel (an empty message reaches them; they find
    the revision unchanged and ignore it)."""
    deadline = time.monotonic() + timeout
    while await kv.publish(CHANNEL, b"") < watchers:
        assert time.monotonic() < deadline, "watchers not subscribed in time"
        await asyncio.sleep(0.02)


async def test_every_gateway_process_sees_a_change_within_a_second(
    sessions: async_sessionmaker[Any], redis_url: str, redis_prefix: str
) -> None:
    # Two gateway processes: their own Redis connections, the same database. A long poll, so
    # only the channel can make the bound.
    kvs = [RedisKV(redis_url, prefix=redis_prefix) for _ in range(3)]
    admin = _store(sessions, kvs[0])
    swapped: list[list[str]] = []
    watchers = [
        RouteWatcher(
            _store(sessions, kv), kv, poll_interval=30, on_change=lambda t: swapped.append(t.hosts())
        )
        for kv in kvs[1:]
    ]
    try:
        for watcher in watchers:
            await watcher.start()
            assert watcher.revision == 0 and watcher.table.hosts() == ["hr.example.gov", "oa.example.gov"]
        await _subscribed(kvs[0], 2)
        for change, wanted in (
            (admin.create("permits", PERMITS, actor="ops"), "permits.example.gov"),
            (admin.remove("permits", actor="ops"), None),
        ):
            started = time.monotonic()
            await change
            await _until(lambda w=wanted: all(_routed(x, w) for x in watchers))  # type: ignore[misc]
            elapsed = time.monotonic() - started
            assert elapsed <= 1.0, f"reload took {elapsed:.3f} s"
        assert all(w.revision == 2 for w in watchers)
        assert len(swapped) == 6  # start, create, remove for each
    finally:
        for watcher in watchers:
            await watcher.stop()
        for kv in kvs:
            await kv.close()


def _routed(watcher: RouteWatcher, host: str | None) -> bool:
    return host in watcher.table if host else "permits.example.gov" not in watcher.table


async def test_a_lost_message_is_caught_up_by_the_poll(sqlite_sessions: async_sessionmaker[Any]) -> None:
    admin = _store(sqlite_sessions, MemoryKV())  # publishes where the watcher does not listen
    watcher_kv = MemoryKV()
    watcher = RouteWatcher(_store(sqlite_sessions, watcher_kv), watcher_kv, poll_interval=0.2)
    await watcher.start()
    try:
        await admin.create("permits", PERMITS, actor="ops")
        started = time.monotonic()
        await _until(lambda: "permits.example.gov" in watcher.table, timeout=3)
        assert time.monotonic() - started < 1.5
        assert await watcher.refresh() is False  # the same revision is not loaded twice
    finally:
        await watcher.stop()


async def test_a_store_that_cannot_be_read_keeps_the_routes_in_use(tmp_path: Path) -> None:
    eng = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")  # no tables: every read fails
    try:
        kv = MemoryKV()
        watcher = RouteWatcher(RouteStore(session_factory(eng), kv, RecordingEmitter(), config=CONFIG), kv)
        assert await watcher.refresh() is False
        assert watcher.table.hosts() == ["hr.example.gov", "oa.example.gov"] and watcher.revision is None
    finally:
        await eng.dispose()


async def test_a_failing_callback_does_not_stop_the_watcher(sqlite_sessions: async_sessionmaker[Any]) -> None:
    kv = MemoryKV()
    store = _store(sqlite_sessions, kv)

    def broken(_table: RouteTable) -> None:
        raise RuntimeError("boom")

    watcher = RouteWatcher(store, kv, poll_interval=30, on_change=broken)
    await watcher.start()
    try:
        await store.create("permits", PERMITS, actor="ops")
        await _until(lambda: "permits.example.gov" in watcher.table)
    finally:
        await watcher.stop()


async def test_a_route_the_configuration_took_later_can_still_be_changed_and_removed(
    sessions: async_sessionmaker[Any],
) -> None:
    await _store(sessions).create("docs", {"hosts": ["docs.example.gov"]}, actor="ops")
    config = [*CONFIG, GatewayRoute(app="docs", hosts=["docs2.example.gov"])]
    later = RouteStore(sessions, MemoryKV(), RecordingEmitter(), config=config)
    _, table, left_out = await later.table()
    assert "docs.example.gov" not in table and [app for app, _ in left_out] == ["docs"]
    # Changing it is refused (the configuration has the application now); removing it is not.
    with pytest.raises(RouteConflict) as refused:
        await later.update("docs", {"hosts": ["docs.example.gov"], "enabled": False}, actor="ops")
    assert refused.value.code == "config_conflict"
    await later.remove("docs", actor="ops")
    assert await later.routes() == []
