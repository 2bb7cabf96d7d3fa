"""Security events in Elastic Common Schema (ECS) form, and the in-process bus.

Gateway and IdP *emit* events (access decisions, logins, MFA, admin changes); soc
*consumes* them (ingest, detections). Field names follow ECS 8
(https://www.elastic.co/guide/en/ecs/current/ecs-field-reference.html); OneGate's own
fields live under ``onegate.*``.

An :class:`Event` is validated when it is made: the category and outcome vocabularies
are closed, typed fields are checked (an IP is an IP, a status code is an int), and no
field may carry a secret (names such as ``password`` or ``token`` are refused), so a
careless emitter cannot leak credentials into the event store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import structlog

from core.randomhex import RandomHex

__all__ = [
    "ECS_FIELD_SETS",
    "Category",
    "Event",
    "EventBus",
    "EventEmitter",
    "EventError",
    "Kind",
    "Outcome",
    "RecordingEmitter",
]

log = structlog.get_logger("onegate.events")


class EventError(ValueError):
    """An event that does not satisfy the model; the message names the field."""


class Category(StrEnum):
    """ECS ``event.category`` values OneGate emits."""

    AUTHENTICATION = "authentication"
    CONFIGURATION = "configuration"
    IAM = "iam"
    INTRUSION_DETECTION = "intrusion_detection"
    NETWORK = "network"
    SESSION = "session"
    WEB = "web"


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    UNKNOWN = "unknown"


class Kind(StrEnum):
    EVENT = "event"
    ALERT = "alert"
    STATE = "state"


# ECS top-level field sets an event may use; anything else is a typo or a leak.
ECS_FIELD_SETS = frozenset(
    {
        "client",
        "destination",
        "error",
        "event",
        "group",
        "host",
        "http",
        "labels",
        "message",
        "network",
        "observer",
        "onegate",
        "related",
        "rule",
        "server",
        "service",
        "session",
        "source",
        "tags",
        "threat",
        "trace",
        "transaction",
        "url",
        "user",
        "user_agent",
    }
)
_SECRET_WORDS = ("password", "passwd", "secret", "token", "authorization", "cookie", "otp", "private_key")
# Fields whose ``event.*`` part the constructor fills; emitters must not set them in ``fields``.
_RESERVED = frozenset(
    {
        "@timestamp",
        "event.id",
        "event.category",
        "event.action",
        "event.outcome",
        "event.kind",
        "event.dataset",
    }
)
_MAX_STRING = 8192


def _check_ip(name: str, value: Any) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError as e:
        raise EventError(f"{name} must be an IP address, got {value!r}") from e


def _check_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise EventError(f"{name} must be an integer, got {value!r}")


def _check_str_list(name: str, value: Any) -> None:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise EventError(f"{name} must be a list of strings")


_TYPED: dict[str, Callable[[str, Any], None]] = {
    "source.ip": _check_ip,
    "client.ip": _check_ip,
    "destination.ip": _check_ip,
    "http.response.status_code": _check_int,
    "source.port": _check_int,
    "event.duration": _check_int,
    "event.severity": _check_int,
    "event.type": _check_str_list,
    "onegate.rule_ids": _check_str_list,
    "user.roles": _check_str_list,
    "related.ip": _check_str_list,
    "related.user": _check_str_list,
    "tags": _check_str_list,
}


def _check_name(name: str) -> None:
    top = name.split(".", 1)[0]
    if top not in ECS_FIELD_SETS:
        raise EventError(f"field {name!r} is outside the ECS field sets OneGate uses")
    lowered = name.lower()
    if any(word in lowered for word in _SECRET_WORDS):
        raise EventError(f"field {name!r} looks like a secret; events never carry secrets")
    if name in _RESERVED:
        raise EventError(f"field {name!r} is set from the Event's own arguments")


# Field names already checked, with their value checker: the gateway builds an event per request,
# and the same few dozen names come back every time.
_CHECKED_NAMES: dict[str, Callable[[str, Any], None] | None] = {}
_UNCHECKED = object()


def _check_field(name: str, value: Any) -> None:
    checker = _CHECKED_NAMES.get(name, _UNCHECKED)
    if checker is _UNCHECKED:
        _check_name(name)
        checker = _TYPED.get(name)
        if len(_CHECKED_NAMES) < 4096:
            _CHECKED_NAMES[name] = checker
    if checker is not None:
        checker(name, value)  # type: ignore[operator]
    elif isinstance(value, str):
        if len(value) > _MAX_STRING:
            raise EventError(f"field {name!r} is longer than {_MAX_STRING} characters")
    elif value is not None and not isinstance(value, int | float | bool | list | tuple):
        raise EventError(f"field {name!r} has unsupported type {type(value).__name__}")


_set = object.__setattr__


def _utcnow() -> datetime:
    return datetime.now(UTC)


_random_20 = RandomHex(20)


def new_event_id() -> str:
    """32 hex digits: the millisecond of the epoch (12), then 80 random bits. Ids made in time
    order land next to each other in an index (the event stores write several times faster
    than with wholly random ids) and stay unique without coordination."""
    return f"{time.time_ns() // 1_000_000:012x}{_random_20()}"


@dataclass(frozen=True, slots=True)
class Event:
    """One ECS event. ``fields`` holds the other ECS fields by dotted name (``"user.name"``)."""

    action: str
    category: Category
    outcome: Outcome = Outcome.UNKNOWN
    dataset: str = "onegate"
    kind: Kind = Kind.EVENT
    fields: Mapping[str, Any] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=_utcnow)
    id: str = field(default_factory=new_event_id)

    def __post_init__(self) -> None:
        if (
            not self.action
            or len(self.action) > 128
            or not self.action.replace("-", "").replace("_", "").isalnum()
        ):
            raise EventError(f"event.action must be a short kebab-case word, got {self.action!r}")
        if not isinstance(self.category, Category):
            raise EventError(f"event.category {self.category!r} is not one of {[c.value for c in Category]}")
        if not isinstance(self.outcome, Outcome):
            raise EventError(f"event.outcome {self.outcome!r} is not one of {[o.value for o in Outcome]}")
        if self.timestamp.tzinfo is None:
            raise EventError("@timestamp must be timezone-aware")
        for name, value in self.fields.items():
            _check_field(name, value)
        object.__setattr__(self, "fields", dict(self.fields))

    @classmethod
    def prechecked(cls, action: str, category: Category, outcome: Outcome, fields: dict[str, Any]) -> Event:
        """An event built without checking its fields again, for an emitter on the request path
        whose field names and value types are fixed in its code (the gateway's access event):
        that emitter's tests build the same event through the checking constructor, so a wrong
        name or type still fails there. ``fields`` is taken as it is (not copied)."""
        event = object.__new__(cls)
        _set(event, "action", action)
        _set(event, "category", category)
        _set(event, "outcome", outcome)
        _set(event, "dataset", "onegate")
        _set(event, "kind", Kind.EVENT)
        _set(event, "fields", fields)
        _set(event, "timestamp", datetime.now(UTC))
        _set(event, "id", new_event_id())
        return event

    def get(self, name: str, default: Any = None) -> Any:
        """A field by dotted ECS name, including the ``event.*`` ones set from arguments."""
        return self.flat().get(name, default)

    def flat(self) -> dict[str, Any]:
        """All fields by dotted name."""
        return {
            "@timestamp": self.timestamp.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "event.id": self.id,
            "event.kind": self.kind.value,
            "event.category": [self.category.value],
            "event.action": self.action,
            "event.outcome": self.outcome.value,
            "event.dataset": self.dataset,
            **self.fields,
        }

    def to_ecs(self) -> dict[str, Any]:
        """The nested ECS document, as stored in Elasticsearch / OpenSearch."""
        document: dict[str, Any] = {}
        for name, value in self.flat().items():
            if name == "@timestamp":
                document[name] = value
                continue
            *parents, leaf = name.split(".")
            node = document
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = list(value) if isinstance(value, tuple) else value
        return document

    @classmethod
    def from_ecs(cls, document: Mapping[str, Any]) -> Event:
        """Rebuild (and re-validate) an event from its ECS document."""
        flat = dict(_flatten(document))
        try:
            category = Category(flat.pop("event.category")[0])
            outcome = Outcome(flat.pop("event.outcome", "unknown"))
            kind = Kind(flat.pop("event.kind", "event"))
            timestamp = datetime.fromisoformat(flat.pop("@timestamp").replace("Z", "+00:00"))
            return cls(
                action=flat.pop("event.action"),
                category=category,
                outcome=outcome,
                kind=kind,
                dataset=flat.pop("event.dataset", "onegate"),
                id=flat.pop("event.id"),
                timestamp=timestamp,
                fields=flat,
            )
        except (KeyError, IndexError, TypeError, ValueError) as e:
            if isinstance(e, EventError):
                raise
            raise EventError(f"not an OneGate ECS event: {e}") from e


def _flatten(document: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


class EventEmitter(Protocol):
    """Where components send events. ``emit`` never blocks and never raises on delivery."""

    def emit(self, event: Event) -> None: ...


class RecordingEmitter:
    """Keeps every event in a list: for the CLI's dry runs and for tests."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def actions(self) -> list[str]:
        return [e.action for e in self.events]


Handler = Callable[[Event], Awaitable[None]]
BatchHandler = Callable[[list[Event]], Awaitable[None]]


class _Subscriber:
    def __init__(
        self,
        name: str,
        handler: Handler | None,
        maxsize: int,
        batch: BatchHandler | None = None,
        max_batch: int = 1,
    ) -> None:
        self.name = name
        self.handler = handler
        self.batch = batch
        self.max_batch = max_batch
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.task: asyncio.Task[None] | None = None
        self.overflow: deque[Event] = deque()
        self.pending = 0  # emitted to this subscriber and not yet handled
        self.idle = asyncio.Event()  # set whenever pending is 0
        self.idle.set()


class EventBus:
    """In-process fan-out from emitters to subscribers, one queue and worker per subscriber.

    ``emit`` is synchronous and cheap (the gateway calls it on every request). A subscriber
    that falls behind does not slow emitters: beyond its queue, events wait in an overflow
    list that the worker drains first, so none is dropped; ``backlog()`` exposes the depth
    for metrics. A handler that raises is logged and the event is retried once, then
    handed to ``on_failure`` (soc's durable spool), so no event disappears silently.
    """

    def __init__(
        self,
        *,
        queue_size: int = 10_000,
        on_failure: Callable[[str, Event, BaseException], None] | None = None,
    ) -> None:
        self._queue_size = queue_size
        self._subscribers: list[_Subscriber] = []
        self._on_failure = on_failure
        self._running = False
        self.emitted = 0

    def set_on_failure(self, handler: Callable[[str, Event, BaseException], None] | None) -> None:
        """Where events go that a subscriber could not take after its retry (a durable fallback)."""
        self._on_failure = handler

    def subscribe(self, name: str, handler: Handler) -> None:
        """Deliver every later event to ``handler`` (register before ``start``)."""
        self._add(_Subscriber(name, handler, self._queue_size))

    def subscribe_batch(self, name: str, handler: BatchHandler, *, max_batch: int = 1000) -> None:
        """Deliver later events to ``handler`` in lists, in emission order: whatever has queued
        up while the previous call ran, at most ``max_batch`` at a time (a durable sink then
        pays one disk flush per list, not per event)."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._add(_Subscriber(name, None, self._queue_size, handler, max_batch))

    def _add(self, subscriber: _Subscriber) -> None:
        if any(s.name == subscriber.name for s in self._subscribers):
            raise ValueError(f"a subscriber named {subscriber.name!r} exists")
        self._subscribers.append(subscriber)
        if self._running:
            subscriber.task = asyncio.create_task(self._work(subscriber), name=f"events:{subscriber.name}")

    def emit(self, event: Event) -> None:
        if not isinstance(event, Event):
            raise EventError("only Event instances can be emitted")
        self.emitted += 1
        for subscriber in self._subscribers:
            subscriber.pending += 1
            subscriber.idle.clear()
            if subscriber.overflow or subscriber.queue.full():
                subscriber.overflow.append(event)
            else:
                subscriber.queue.put_nowait(event)

    def backlog(self) -> dict[str, int]:
        """Undelivered events per subscriber."""
        return {s.name: s.pending for s in self._subscribers}

    async def start(self) -> None:
        self._running = True
        for subscriber in self._subscribers:
            if subscriber.task is None:
                subscriber.task = asyncio.create_task(
                    self._work(subscriber), name=f"events:{subscriber.name}"
                )

    async def _deliver(self, subscriber: _Subscriber, events: list[Event]) -> None:
        for attempt in (1, 2):
            try:
                if subscriber.batch is not None:
                    await subscriber.batch(events)
                else:
                    assert subscriber.handler is not None  # noqa: S101 - one of the two is set
                    await subscriber.handler(events[0])
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning(
                    "event handler failed",
                    subscriber=subscriber.name,
                    attempt=attempt,
                    event_action=events[0].action,
                    events=len(events),
                    error=type(e).__name__,
                )
                if attempt == 2:
                    for event in events:
                        if self._on_failure is not None:
                            self._on_failure(subscriber.name, event, e)
                        else:
                            log.error("event undeliverable", subscriber=subscriber.name, event_id=event.id)

    async def _work(self, subscriber: _Subscriber) -> None:
        queue, overflow = subscriber.queue, subscriber.overflow
        while True:
            events = [await queue.get()]
            while len(events) < subscriber.max_batch:
                if queue.empty():
                    # Refill from the overflow, oldest first, keeping emission order.
                    while overflow and not queue.full():
                        queue.put_nowait(overflow.popleft())
                    if queue.empty():
                        break
                events.append(queue.get_nowait())
            try:
                await self._deliver(subscriber, events)
            finally:
                subscriber.pending -= len(events)
                if not subscriber.pending:
                    subscriber.idle.set()
            while overflow and not queue.full():
                queue.put_nowait(overflow.popleft())

    async def drain(self) -> None:
        """Wait until every subscriber has handled every event emitted so far."""
        for subscriber in self._subscribers:
            await subscriber.idle.wait()

    async def stop(self, *, drain: bool = True) -> None:
        """Stop the workers, by default after delivering what is queued."""
        if drain and self._running:
            await self.drain()
        self._running = False
        for subscriber in self._subscribers:
            if subscriber.task is not None:
                subscriber.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await subscriber.task
                subscriber.task = None
