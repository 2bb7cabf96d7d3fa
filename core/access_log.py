"""Recorded access events, read back for replay (``onegate policy simulate``).

The gateway emits one ECS event per request it decides (``event.category`` ``web``, with an
``onegate.app``); the SOC stores them. Whatever holds them - an NDJSON export
(:class:`NdjsonAccessLog`) or the SOC's event store itself (:class:`StoreAccessLog`, through the
store protocol of :mod:`core.eventstore`) - offers them through :class:`AccessEventSource`, so the
policy package can replay traffic without importing the SOC (``core`` imports neither).

The fields replay reads (:data:`ACCESS_FIELDS`, the gateway's contract):

===========================  ================================================================
``@timestamp``               when the request was decided
``user.name``                the signed-in user (absent: anonymous)
``onegate.groups``           the user's groups (list of strings)
``onegate.departments``      the user's department and every one above it, nearest first (list)
``user.roles``               the user's roles (list)
``onegate.app``              the application (required: what makes an event an access event)
``url.path``                 the request path: the canonical form the gateway forwarded (or, for
                             a refused request, the raw path); replay canonicalises it again
``http.request.method``      the method (default ``GET``)
``source.ip``                the client address
``onegate.acr``              the session's authentication level (URN or short name)
``onegate.auth_age``         seconds since the user last proved their identity (number)
``onegate.risk``             the user's risk score at the time (0-100; default 0)
``onegate.decision``         what was decided: ``allow`` / ``deny`` / ``step_up``
``onegate.rule_ids``         the rules that decided (list)
===========================  ================================================================
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from core.events import Category, Event, EventError
from core.eventstore import EventStore, Query

__all__ = [
    "ACCESS_FIELDS",
    "AccessEventSource",
    "BadLine",
    "CountableSource",
    "NdjsonAccessLog",
    "StoreAccessLog",
    "count_events",
    "is_access_event",
]

ACCESS_FIELDS: Mapping[str, str] = {
    "@timestamp": "when the request was decided",
    "user.name": "the signed-in user (absent: anonymous)",
    "onegate.groups": "the user's groups (list)",
    "onegate.departments": "the user's department and those above it, nearest first (list)",
    "user.roles": "the user's roles (list)",
    "onegate.app": "the application",
    "url.path": "the canonical request path (the raw one for a refused request)",
    "http.request.method": "the method",
    "source.ip": "the client address",
    "onegate.acr": "the session's authentication level",
    "onegate.auth_age": "seconds since the user last proved their identity",
    "onegate.risk": "the user's risk score then (0-100)",
    "onegate.decision": "what was decided (allow / deny / step_up)",
    "onegate.rule_ids": "the rules that decided (list)",
}


def is_access_event(event: Event) -> bool:
    """Whether ``event`` records a request the gateway decided."""
    app = event.fields.get("onegate.app")
    return event.category is Category.WEB and isinstance(app, str) and bool(app)


@runtime_checkable
class AccessEventSource(Protocol):
    """Recorded access events. Implementations: :class:`NdjsonAccessLog`; the SOC's event store."""

    def access_events(self, since: datetime, until: datetime | None = None) -> AsyncIterator[Event]:
        """The access events with ``since <= @timestamp < until`` (no ``until``: up to now and
        beyond), oldest first; equal times in the order they were recorded."""
        ...


@runtime_checkable
class CountableSource(AccessEventSource, Protocol):
    """A source that can also say how many events a window holds (for a progress bar)."""

    async def count(self, since: datetime, until: datetime | None = None) -> int | None:
        """How many events :meth:`access_events` may yield for the window (an upper bound:
        lines that turn out unreadable or not access events are among them), or None when
        that is expensive to know."""
        ...


async def count_events(
    source: AccessEventSource, since: datetime, until: datetime | None = None
) -> int | None:
    """``source.count(...)`` when the source offers it, else None."""
    if isinstance(source, CountableSource):
        return await source.count(since, until)
    return None


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line of an NDJSON file that is not a readable event."""

    line: int
    reason: str


# "@timestamp" as a JSON key: quotes inside JSON strings are escaped, so this only finds keys.
_TIMESTAMP = re.compile(rb'"@timestamp"\s*:\s*"([^"]{1,64})"')
_YIELD_EVERY = 2048  # lines; let other tasks run during a long read


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("no time zone")
    return moment


def _aware(name: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")


@dataclass(frozen=True, slots=True)
class _Scan:
    key: tuple[Any, ...]
    entries: list[tuple[float, int, int]]  # (epoch seconds, line number, byte offset), in order
    problems: list[BadLine]


class NdjsonAccessLog:
    """Access events from an NDJSON file of ECS documents, one per line: an export from
    Elasticsearch / OpenSearch (a ``_source`` wrapper is unwrapped) or from the SOC store.

    The file need not be in time order. Reading takes two passes and holds only three numbers
    per event of the window in memory: the first finds each line's ``@timestamp``, the second
    reads the lines of the window in time order (equal times: file order) and validates them as
    events (:meth:`core.events.Event.from_ecs`). Nothing crashes on a bad line: lines that are
    not events are listed in :attr:`problems` with their numbers and reasons, and events that
    are not access events (a sign-in, a configuration change) are counted in :attr:`other_events`.
    Both describe the last read.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.problems: list[BadLine] = []
        self.other_events = 0
        self._scan: _Scan | None = None

    @property
    def bad_lines(self) -> list[int]:
        return [p.line for p in self.problems]

    def _index(self, since: datetime, until: datetime | None) -> _Scan:
        _aware("since", since)
        _aware("until", until)
        stat = self.path.stat()
        key = (since, until, stat.st_size, stat.st_mtime_ns)
        if self._scan is not None and self._scan.key == key:
            return self._scan
        low, high = since.timestamp(), until.timestamp() if until is not None else None
        entries: list[tuple[float, int, int]] = []
        problems: list[BadLine] = []
        ordered, last = True, float("-inf")
        with self.path.open("rb") as lines:
            offset = 0
            for number, line in enumerate(lines, 1):
                start, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                match = _TIMESTAMP.search(line)
                if match is None:
                    problems.append(BadLine(number, "no @timestamp"))
                    continue
                try:
                    moment = _parse_time(match.group(1).decode("ascii")).timestamp()
                except (UnicodeDecodeError, ValueError):
                    problems.append(BadLine(number, "bad @timestamp"))
                    continue
                if moment < low or (high is not None and moment >= high):
                    continue
                ordered = ordered and moment >= last
                last = moment
                entries.append((moment, number, start))
        if not ordered:
            entries.sort()
        self._scan = _Scan(key, entries, problems)
        return self._scan

    @staticmethod
    def _event(raw: bytes) -> Event:
        document = json.loads(raw)
        if isinstance(document, dict) and isinstance(document.get("_source"), dict):
            document = document["_source"]
        if not isinstance(document, dict):
            raise EventError("not a JSON object")
        return Event.from_ecs(document)

    async def access_events(self, since: datetime, until: datetime | None = None) -> AsyncIterator[Event]:
        scan = self._index(since, until)
        problems = list(scan.problems)
        self.problems, self.other_events = problems, 0
        try:
            with self.path.open("rb") as lines:
                for done, (_, number, offset) in enumerate(scan.entries, 1):
                    if not done % _YIELD_EVERY:
                        await asyncio.sleep(0)
                    lines.seek(offset)
                    try:
                        event = self._event(lines.readline())
                    except UnicodeDecodeError:
                        problems.append(BadLine(number, "not UTF-8"))
                        continue
                    except json.JSONDecodeError as e:
                        problems.append(BadLine(number, f"not JSON: {e.msg}"))
                        continue
                    except EventError as e:
                        problems.append(BadLine(number, str(e)))
                        continue
                    if event.timestamp < since or (until is not None and event.timestamp >= until):
                        continue  # "@timestamp" found by the scan was not the document's own
                    if not is_access_event(event):
                        self.other_events += 1
                        continue
                    yield event
        finally:
            problems.sort(key=lambda p: p.line)

    async def count(self, since: datetime, until: datetime | None = None) -> int | None:
        return len(self._index(since, until).entries)


# What makes a stored document an access event: a web event naming the application.
_ACCESS_QUERY = "onegate.app:*"
_ACCESS_FILTERS = {"event.category": ["web"]}


class StoreAccessLog:
    """Access events from an event store (the SOC's SQLite, OpenSearch or Elasticsearch store),
    oldest first, read a page at a time. A stored document that is not a valid event is listed in
    :attr:`problems` (``line``: its position in the window, from 1) and skipped."""

    def __init__(self, store: EventStore, *, name: str = "the event store", page: int = 1000) -> None:
        self.store = store
        self.path = name  # what messages call the source
        self.page = page
        self.problems: list[BadLine] = []
        self.other_events = 0

    async def access_events(self, since: datetime, until: datetime | None = None) -> AsyncIterator[Event]:
        _aware("since", since)
        _aware("until", until)
        self.problems, self.other_events = [], 0
        after: tuple[str, str] | None = None
        position = 0
        while True:
            query = Query(
                text=_ACCESS_QUERY,
                start=since,
                end=until,
                filters=_ACCESS_FILTERS,
                size=self.page,
                ascending=True,
                after=after,
            )
            found = await self.store.search(query)
            for hit in found.hits:
                position += 1
                try:
                    event = Event.from_ecs(hit)
                except EventError as e:
                    self.problems.append(BadLine(position, str(e)))
                    continue
                if not is_access_event(event):
                    self.other_events += 1
                    continue
                yield event
            if len(found.hits) < self.page:
                return
            after = found.cursor

    async def count(self, since: datetime, until: datetime | None = None) -> int | None:
        return await self.store.count(
            Query(text=_ACCESS_QUERY, start=since, end=until, filters=_ACCESS_FILTERS)
        )
