"""Recorded access events, as read back for replay (``onegate policy simulate``).

The gateway emits one ECS event per request (``event.category`` ``web``); the SOC stores them.
Whatever holds them - an NDJSON export here, the SOC's event store - offers them through
:class:`AccessEventSource`, so the policy package can replay traffic without importing the SOC.

The fields replay reads (the gateway's contract):

==========================  ===============================================================
``@timestamp``              when
``user.name``               the signed-in user (absent: anonymous)
``onegate.groups``          the user's groups (list)
``onegate.departments``     the user's department and those above it, nearest first (list)
``user.roles``              roles (list)
``onegate.app``             the application
``url.path``                the canonical request path
``http.request.method``     the method
``source.ip``               the client address
``onegate.acr``             the authentication level of the session
``onegate.auth_age``        seconds since the user last proved their identity
``onegate.risk``            the user's risk score at the time
``onegate.decision``        what was decided (allow / deny / step_up)
``onegate.rule_ids``        the rules that decided (list)
==========================  ===============================================================
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from core.events import Category, Event, EventError

__all__ = ["AccessEventSource", "NdjsonAccessLog", "is_access_event"]


def is_access_event(event: Event) -> bool:
    return event.category is Category.WEB and bool(event.get("onegate.app"))


class AccessEventSource(Protocol):
    def access_events(self, since: datetime, until: datetime | None = None) -> AsyncIterator[Event]:
        """Access events with ``since <= @timestamp < until``, oldest first."""
        ...

    async def count(self, since: datetime, until: datetime | None = None) -> int | None:
        """How many there are (for a progress bar), or None when that is expensive to know."""
        ...


@dataclass
class NdjsonAccessLog:
    """Access events from an NDJSON file of ECS documents (one per line, e.g. an export from
    Elasticsearch or the SOC). Lines that are not events, and events that are not access events,
    are skipped and counted in :attr:`bad_lines` / :attr:`skipped`."""

    path: Path
    bad_lines: list[int] = field(default_factory=list)
    skipped: int = 0

    def _events(self) -> list[tuple[int, Event]]:
        out: list[tuple[int, Event]] = []
        self.bad_lines, self.skipped = [], 0
        with self.path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    event = Event.from_ecs(json.loads(line))
                except (json.JSONDecodeError, EventError, AttributeError, TypeError):
                    self.bad_lines.append(number)
                    continue
                if not is_access_event(event):
                    self.skipped += 1
                    continue
                out.append((number, event))
        return out

    def _window(self, since: datetime, until: datetime | None) -> list[Event]:
        events = [
            e for _, e in self._events() if e.timestamp >= since and (until is None or e.timestamp < until)
        ]
        return sorted(events, key=lambda e: e.timestamp)

    async def access_events(self, since: datetime, until: datetime | None = None) -> AsyncIterator[Event]:
        for event in self._window(since, until):
            yield event

    async def count(self, since: datetime, until: datetime | None = None) -> int | None:
        return len(self._window(since, until))
