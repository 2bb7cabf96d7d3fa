"""core.access_log: recorded access events read back from ECS NDJSON, in time order, with every
unreadable line reported by number and nothing crashing."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.access_log import (
    ACCESS_FIELDS,
    AccessEventSource,
    CountableSource,
    NdjsonAccessLog,
    count_events,
    is_access_event,
)
from core.events import Category, Event, Outcome

T0 = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


def access(minute: int, ident: str, app: str = "hr", **fields: object) -> dict[str, object]:
    return Event(
        action="access-decided",
        category=Category.WEB,
        outcome=Outcome.SUCCESS,
        timestamp=T0 + timedelta(minutes=minute),
        id=ident,
        fields={"onegate.app": app, "url.path": "/", **fields},
    ).to_ecs()


def write(path: Path, lines: list[object]) -> Path:
    path.write_text(
        "".join(
            (line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n" for line in lines
        ),
        encoding="utf-8",
    )
    return path


async def read(source: NdjsonAccessLog, since: datetime, until: datetime | None = None) -> list[str]:
    return [event.id async for event in source.access_events(since, until)]


async def test_events_come_in_time_order_and_ties_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.ndjson",
        [access(5, "e5"), access(1, "e1a"), access(3, "e3"), access(1, "e1b"), access(0, "e0")],
    )
    source = NdjsonAccessLog(path)
    assert await read(source, T0) == ["e0", "e1a", "e1b", "e3", "e5"]
    assert await source.count(T0) == 5


async def test_the_window_is_since_inclusive_until_exclusive(tmp_path: Path) -> None:
    path = write(tmp_path / "a.ndjson", [access(m, f"e{m}") for m in range(6)])
    source = NdjsonAccessLog(path)
    window = (T0 + timedelta(minutes=1), T0 + timedelta(minutes=4))
    assert await read(source, *window) == ["e1", "e2", "e3"]
    assert await source.count(*window) == 3
    assert await read(source, T0 + timedelta(minutes=10)) == []
    with pytest.raises(ValueError, match="timezone-aware"):
        await source.count(datetime(2026, 11, 30))


async def test_bad_lines_are_reported_with_numbers_and_reasons(tmp_path: Path) -> None:
    bad_ip = access(2, "bad-ip")
    bad_ip["source"] = {"ip": "not-an-address"}
    login = Event(
        action="user-logged-in", category=Category.AUTHENTICATION, outcome=Outcome.SUCCESS, timestamp=T0
    ).to_ecs()
    no_app = access(3, "no-app")
    del no_app["onegate"]
    path = write(
        tmp_path / "a.ndjson",
        [
            access(0, "ok1"),
            '{"@timestamp": "2026-11-30T02:01:00Z", "event": {',  # 2: cut short
            "",  # 3: blank lines are nothing
            '{"@timestamp": "2026-11-30T02:01:00Z", "message": "hello"}',  # 4: not an event
            bad_ip,  # 5
            login,  # 6: an event, not an access event
            "plain text",  # 7
            '{"@timestamp": "yesterday"}',  # 8
            no_app,  # 9: a web event without an application is not an access event
            access(4, "ok2"),
            '[{"@timestamp": "2026-11-30T02:01:00Z"}]',  # 11: JSON, not an object
        ],
    )
    source = NdjsonAccessLog(path)
    assert await read(source, T0 - timedelta(hours=1)) == ["ok1", "ok2"]
    assert source.bad_lines == [2, 4, 5, 7, 8, 11]
    reasons = {p.line: p.reason for p in source.problems}
    assert reasons[2].startswith("not JSON") and reasons[7] == "no @timestamp"
    assert reasons[8] == "bad @timestamp" and "source.ip" in reasons[5] and "not a JSON object" in reasons[11]
    assert source.other_events == 2
    # Reading again starts afresh: the same problems, not twice as many.
    assert await read(source, T0 - timedelta(hours=1)) == ["ok1", "ok2"]
    assert source.bad_lines == [2, 4, 5, 7, 8, 11] and source.other_events == 2


async def test_an_elasticsearch_export_is_unwrapped(tmp_path: Path) -> None:
    path = write(
        tmp_path / "export.ndjson",
        [
            {"_index": "onegate-events", "_id": "1", "_source": access(0, "wrapped", app="wiki")},
            access(1, "plain"),
        ],
    )
    events = [e async for e in NdjsonAccessLog(path).access_events(T0)]
    assert [(e.id, e.get("onegate.app")) for e in events] == [("wrapped", "wiki"), ("plain", "hr")]
    assert all(is_access_event(e) for e in events)


async def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    path = write(tmp_path / "a.ndjson", [access(0, "a")])
    source = NdjsonAccessLog(path)
    assert await source.count(T0) == 1
    write(path, [access(0, "a"), access(1, "b")])
    os.utime(path, ns=(0, 10**9))  # a different modification time, whatever the clock's resolution
    assert await source.count(T0) == 2
    assert await read(source, T0) == ["a", "b"]


async def test_unicode_fields_survive(tmp_path: Path) -> None:
    path = write(tmp_path / "a.ndjson", [access(0, "zh", **{"user.name": "张伟", "url.path": "/人事"})])
    [event] = [e async for e in NdjsonAccessLog(path).access_events(T0)]
    assert event.get("user.name") == "张伟" and event.get("url.path") == "/人事"


class ListSource:
    """The protocol with no count: a progress bar gets None."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events

    async def access_events(self, since: datetime, until: datetime | None = None) -> AsyncIterator[Event]:
        for event in self.events:
            yield event


async def test_the_protocols(tmp_path: Path) -> None:
    ndjson = NdjsonAccessLog(write(tmp_path / "a.ndjson", [access(0, "a")]))
    plain = ListSource([])
    assert isinstance(ndjson, CountableSource) and isinstance(plain, AccessEventSource)
    assert not isinstance(plain, CountableSource)
    assert await count_events(ndjson, T0) == 1
    assert await count_events(plain, T0) is None
    # Every field of the contract is one the event model admits (its namespace is allowed).
    Event(
        action="access-decided",
        category=Category.WEB,
        fields={
            name: ["x"]
            if name in ("onegate.groups", "onegate.departments", "user.roles", "onegate.rule_ids")
            else "10.0.0.1"
            if name == "source.ip"
            else "x"
            for name in ACCESS_FIELDS
            if name != "@timestamp"
        },
    )
