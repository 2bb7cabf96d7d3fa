"""The ECS event model and the in-process bus."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from core.events import Category, Event, EventBus, EventError, Kind, Outcome, RecordingEmitter


def access_event(**fields: object) -> Event:
    base = {
        "user.name": "zhangwei",
        "source.ip": "10.1.2.3",
        "url.path": "/admin/",
        "http.request.method": "GET",
        "http.response.status_code": 403,
        "onegate.app": "hr",
        "onegate.decision": "deny",
        "onegate.rule_ids": ["hr-admin-phr"],
        "session.id": "s-1",
        "trace.id": "abc",
    }
    base.update(fields)
    return Event(
        action="access-decision",
        category=Category.WEB,
        outcome=Outcome.FAILURE,
        dataset="onegate.gateway",
        fields=base,
    )


def test_to_ecs_nests_dotted_fields() -> None:
    event = access_event()
    doc = event.to_ecs()
    assert doc["event"]["category"] == ["web"]
    assert doc["event"]["action"] == "access-decision"
    assert doc["event"]["outcome"] == "failure"
    assert doc["event"]["dataset"] == "onegate.gateway"
    assert doc["user"]["name"] == "zhangwei"
    assert doc["source"]["ip"] == "10.1.2.3"
    assert doc["http"]["request"]["method"] == "GET"
    assert doc["http"]["response"]["status_code"] == 403
    assert doc["onegate"]["rule_ids"] == ["hr-admin-phr"]
    assert doc["@timestamp"].endswith("Z")


def test_round_trip_through_ecs() -> None:
    event = access_event(**{"user.full_name": "张伟"})
    again = Event.from_ecs(event.to_ecs())
    assert again == event
    assert again.get("user.full_name") == "张伟"
    assert again.get("event.action") == "access-decision"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"source.ip": "not-an-ip"}, "source.ip must be an IP"),
        ({"http.response.status_code": "403"}, "status_code must be an integer"),
        ({"http.response.status_code": True}, "status_code must be an integer"),
        ({"onegate.rule_ids": "r1"}, "rule_ids must be a list"),
        ({"usr.name": "typo"}, "outside the ECS field sets"),
        ({"user.password": "hunter2"}, "looks like a secret"),
        ({"http.request.headers.authorization": "Bearer x"}, "looks like a secret"),
        ({"onegate.refresh_token": "x"}, "looks like a secret"),
        ({"event.action": "other"}, "set from the Event's own arguments"),
        ({"message": "x" * 9000}, "longer than"),
        ({"user.name": object()}, "unsupported type"),
    ],
)
def test_invalid_fields_are_refused_with_the_field_named(fields: dict[str, object], message: str) -> None:
    with pytest.raises(EventError, match=message):
        access_event(**fields)


def test_closed_vocabularies() -> None:
    with pytest.raises(EventError, match="event.category"):
        Event(action="x", category="made-up")  # type: ignore[arg-type]
    with pytest.raises(EventError, match="event.outcome"):
        Event(action="x", category=Category.WEB, outcome="maybe")  # type: ignore[arg-type]
    with pytest.raises(EventError, match="event.action"):
        Event(action="drop table; --", category=Category.WEB)
    with pytest.raises(EventError, match="timezone"):
        Event(action="x", category=Category.WEB, timestamp=datetime(2026, 1, 1))


def test_from_ecs_rejects_foreign_documents() -> None:
    with pytest.raises(EventError):
        Event.from_ecs({"event": {"action": "x"}})


def test_recording_emitter() -> None:
    emitter = RecordingEmitter()
    emitter.emit(access_event())
    emitter.emit(
        Event(
            action="user-login",
            category=Category.AUTHENTICATION,
            outcome=Outcome.SUCCESS,
            kind=Kind.EVENT,
            timestamp=datetime.now(UTC),
        )
    )
    assert emitter.actions() == ["access-decision", "user-login"]


async def test_bus_fans_out_in_order_to_every_subscriber() -> None:
    bus = EventBus()
    seen: dict[str, list[str]] = {"a": [], "b": []}

    async def handler_a(event: Event) -> None:
        seen["a"].append(event.get("trace.id"))

    async def handler_b(event: Event) -> None:
        await asyncio.sleep(0)
        seen["b"].append(event.get("trace.id"))

    bus.subscribe("a", handler_a)
    bus.subscribe("b", handler_b)
    await bus.start()
    for i in range(50):
        bus.emit(access_event(**{"trace.id": str(i)}))
    await bus.stop()
    assert seen["a"] == [str(i) for i in range(50)]
    assert seen["b"] == seen["a"]
    assert bus.emitted == 50


async def test_slow_subscriber_loses_nothing_beyond_its_queue() -> None:
    bus = EventBus(queue_size=4)
    got: list[str] = []

    async def slow(event: Event) -> None:
        await asyncio.sleep(0.001)
        got.append(event.get("trace.id"))

    bus.subscribe("slow", slow)
    await bus.start()
    for i in range(40):
        bus.emit(access_event(**{"trace.id": str(i)}))
    assert bus.backlog()["slow"] == 40
    await bus.drain()
    assert got == [str(i) for i in range(40)]
    assert bus.backlog()["slow"] == 0
    await bus.stop()


async def test_failing_handler_is_retried_then_handed_to_on_failure() -> None:
    failures: list[tuple[str, str]] = []
    attempts = {"n": 0}

    async def flaky(event: Event) -> None:
        attempts["n"] += 1
        if event.get("trace.id") == "bad" or attempts["n"] == 1:
            raise RuntimeError("store down")

    bus = EventBus(on_failure=lambda name, event, _err: failures.append((name, event.get("trace.id"))))
    bus.subscribe("store", flaky)
    await bus.start()
    bus.emit(access_event(**{"trace.id": "ok"}))  # first attempt fails, the retry succeeds
    bus.emit(access_event(**{"trace.id": "bad"}))  # both attempts fail
    await bus.stop()
    assert failures == [("store", "bad")]
    assert attempts["n"] == 4


async def test_batch_subscriber_gets_what_queued_in_order_and_at_most_max_batch() -> None:
    bus = EventBus(queue_size=8)
    batches: list[list[str]] = []

    async def store(events: list[Event]) -> None:
        batches.append([e.get("trace.id") for e in events])
        await asyncio.sleep(0.001)

    bus.subscribe_batch("spool", store, max_batch=16)
    await bus.start()
    for i in range(100):  # beyond the queue: the overflow keeps the rest, in order
        bus.emit(access_event(**{"trace.id": str(i)}))
    await bus.drain()
    assert [t for batch in batches for t in batch] == [str(i) for i in range(100)]
    assert max(len(b) for b in batches) == 16
    assert len(batches) < 20  # delivered in lists, not one by one
    bus.emit(access_event(**{"trace.id": "late"}))
    await bus.stop()
    assert batches[-1] == ["late"]
    assert bus.backlog()["spool"] == 0


async def test_a_failing_batch_is_retried_then_each_event_handed_to_on_failure() -> None:
    failures: list[str] = []
    bus = EventBus(on_failure=lambda _name, event, _err: failures.append(event.get("trace.id")))

    async def down(_events: list[Event]) -> None:
        raise RuntimeError("spool full")

    bus.subscribe_batch("spool", down)
    await bus.start()
    for i in range(3):
        bus.emit(access_event(**{"trace.id": str(i)}))
    await bus.stop()
    assert failures == ["0", "1", "2"]


def test_batch_size_must_be_positive() -> None:
    async def noop(_events: list[Event]) -> None:
        return None

    with pytest.raises(ValueError, match="max_batch"):
        EventBus().subscribe_batch("x", noop, max_batch=0)


def test_duplicate_subscriber_names_refused() -> None:
    bus = EventBus()

    async def noop(_event: Event) -> None:
        return None

    bus.subscribe("x", noop)
    with pytest.raises(ValueError, match="exists"):
        bus.subscribe("x", noop)


def test_only_events_can_be_emitted() -> None:
    with pytest.raises(EventError):
        EventBus().emit({"event": {}})  # type: ignore[arg-type]


def test_event_ids_are_unique_and_in_time_order() -> None:
    import time as clock

    from core.events import new_event_id

    first = new_event_id()
    clock.sleep(0.002)
    made = [new_event_id() for _ in range(1000)]
    assert len(set(made)) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in made)
    assert first < min(made)  # a later millisecond sorts after
    event = Event(action="access", category=Category.WEB)
    assert abs(int(event.id[:12], 16) - clock.time() * 1000) < 5_000
