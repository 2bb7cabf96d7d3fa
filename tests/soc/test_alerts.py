"""The alert store: suppression, idempotent replay, triage transitions with their history and
events, optimistic concurrency, bulk changes, response targets and the lists, on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import session_factory
from core.events import Category, Event, Kind, Outcome, RecordingEmitter
from soc.alerts import (
    MAX_COMMENT,
    NO_DRILL,
    UNASSIGNED,
    AlertConflict,
    AlertInvalid,
    AlertNotFound,
    AlertStore,
    CloseReason,
    HistoryAction,
    SlaTargets,
    Status,
    TransitionRefused,
)
from soc.alerts.models import AlertRecord
from soc.detections.model import RuleInfo, Severity, Signal, Text

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC).timestamp()  # event time of the first signals

BRUTE = RuleInfo(
    id="test.brute-force",
    name=Text(en="Brute force against one account", zh="针对单个账号的暴力破解"),
    description=Text(en="Many failed logins for one user", zh="同一用户多次登录失败"),
    severity=Severity.HIGH,
    risk_score=73,
    technique="T1110.001",
    tactic="credential-access",
    suppress_by=("user.name",),
    suppress_for=600.0,
)
SPRAY = RuleInfo(
    id="test.spray",
    name=Text(en="Password spray", zh="密码喷洒"),
    description=Text(en="One address, many accounts", zh="同一地址尝试多个账号"),
    severity=Severity.CRITICAL,
    risk_score=99,
    technique="T1110.003",
    tactic="credential-access",
    suppress_by=("source.ip",),
)


class Clock:
    """The store's wall clock, moved by hand."""

    def __init__(self) -> None:
        self.now = T0 + 30.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def signal(
    events: tuple[str, ...],
    *,
    at: float = T0,
    user: str = "zhangwei",
    ip: str = "203.0.113.7",
    rule: RuleInfo = BRUTE,
) -> Signal:
    return Signal(
        rule=rule,
        at=at,
        entity={"user.name": user, "source.ip": ip},
        events=events,
        reason=Text(en=f"{len(events)} failed logins for {user}", zh=f"{user} 登录失败 {len(events)} 次"),
        values={"failures": len(events), "threshold": 3, "window_s": 300},
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def emitter() -> RecordingEmitter:
    return RecordingEmitter()


@pytest.fixture
def store(engine: AsyncEngine, emitter: RecordingEmitter, clock: Clock) -> AlertStore:
    return AlertStore(engine, events=emitter, clock=clock)


def only(emitter: RecordingEmitter, action: str) -> Event:
    found = [e for e in emitter.events if e.action == action]
    assert len(found) == 1, emitter.actions()
    return found[0]


# -- raising and suppression ---------------------------------------------------------------------


async def test_a_signal_raises_an_alert_with_its_event(store: AlertStore, emitter: RecordingEmitter) -> None:
    alert, created = await store.raise_signal(signal(("e1", "e2", "e3")))
    assert created
    assert len(alert.id) == 32 and int(alert.id, 16) >= 0
    assert (alert.rule_id, alert.severity, alert.risk_score) == ("test.brute-force", Severity.HIGH, 73)
    assert alert.rule_name.zh == "针对单个账号的暴力破解" and alert.technique == "T1110.001"
    assert (alert.status, alert.assignee, alert.close_reason) == (Status.OPEN, None, None)
    assert alert.entity == {"user.name": "zhangwei", "source.ip": "203.0.113.7"}
    assert alert.reason.zh == "zhangwei 登录失败 3 次" and alert.values["failures"] == 3
    assert alert.first_seen == alert.last_seen == datetime.fromtimestamp(T0, UTC)
    assert alert.created_at == datetime.fromtimestamp(T0 + 30, UTC)
    assert (alert.event_count, alert.signal_count, alert.version) == (3, 1, 1)
    assert await store.evidence(alert.id) == ["e1", "e2", "e3"]
    [entry] = await store.history(alert.id)
    assert (entry.seq, entry.action, entry.to_status, entry.actor) == (
        1,
        HistoryAction.CREATED,
        Status.OPEN,
        "rule:test.brute-force",
    )
    assert await store.get(alert.id) == alert

    event = only(emitter, "alert-created")
    assert (event.category, event.kind, event.dataset) == (
        Category.INTRUSION_DETECTION,
        Kind.ALERT,
        "onegate.soc",
    )
    assert event.get("rule.id") == "test.brute-force"
    assert event.get("rule.name") == "Brute force against one account"
    assert event.get("event.severity") == 73
    assert event.get("onegate.risk_score") == 73
    assert event.get("onegate.alert_id") == alert.id
    assert event.get("user.name") == "zhangwei" and event.get("source.ip") == "203.0.113.7"
    assert event.get("threat.technique.id") == ["T1110.001"]
    assert event.timestamp == alert.created_at  # the store's clock


async def test_severity_numbers_follow_elastic(engine: AsyncEngine, emitter: RecordingEmitter) -> None:
    store = AlertStore(engine, events=emitter)
    for number, severity in enumerate(Severity):
        rule = dataclasses.replace(BRUTE, id=f"test.{severity.value}", severity=severity)
        await store.raise_signal(signal((f"s{number}",), rule=rule))
    assert [e.get("event.severity") for e in emitter.events] == [21, 47, 73, 99]


async def test_signals_of_one_key_within_the_window_join_one_alert(
    store: AlertStore, emitter: RecordingEmitter
) -> None:
    first, _ = await store.raise_signal(signal(("e1", "e2", "e3")))
    # Overlapping evidence (a sliding window reports its events again) is kept once.
    joined, created = await store.raise_signal(signal(("e2", "e3", "e4", "e5"), at=T0 + 120))
    assert not created and joined.id == first.id
    assert (joined.event_count, joined.signal_count, joined.version) == (5, 2, 2)
    assert joined.last_seen == datetime.fromtimestamp(T0 + 120, UTC)
    assert joined.first_seen == first.first_seen
    assert await store.evidence(first.id) == ["e1", "e2", "e3", "e4", "e5"]
    assert [h.action for h in await store.history(first.id)] == [HistoryAction.CREATED, HistoryAction.SIGNAL]
    assert emitter.actions() == ["alert-created"]  # joining raises nothing new
    # At the window's very end it still joins; a signal that arrives late moves first_seen back.
    await store.raise_signal(signal(("e6",), at=T0 + 600))
    late, created = await store.raise_signal(signal(("e0",), at=T0 - 60))
    assert not created and late.id == first.id
    assert late.first_seen == datetime.fromtimestamp(T0 - 60, UTC)
    assert late.last_seen == datetime.fromtimestamp(T0 + 600, UTC)


async def test_after_the_window_a_new_alert(store: AlertStore) -> None:
    first, _ = await store.raise_signal(signal(("e1",)))
    second, created = await store.raise_signal(signal(("e2",), at=T0 + 601))
    assert created and second.id != first.id
    # Later signals join the newest alert whose window holds them.
    third, created = await store.raise_signal(signal(("e3",), at=T0 + 700))
    assert not created and third.id == second.id


async def test_after_a_close_a_new_alert(store: AlertStore) -> None:
    first, _ = await store.raise_signal(signal(("e1",)))
    await store.close(first.id, CloseReason.TRUE_POSITIVE, actor="lina")
    second, created = await store.raise_signal(signal(("e2",), at=T0 + 10))
    assert created and second.id != first.id
    assert (await store.get(first.id)).event_count == 1


async def test_an_acknowledged_alert_still_takes_signals(store: AlertStore) -> None:
    first, _ = await store.raise_signal(signal(("e1",)))
    await store.acknowledge(first.id, actor="lina")
    joined, created = await store.raise_signal(signal(("e2",), at=T0 + 10))
    assert not created and joined.id == first.id and joined.status is Status.ACKNOWLEDGED


async def test_another_entity_or_rule_or_drill_another_alert(store: AlertStore) -> None:
    first, _ = await store.raise_signal(signal(("e1",)))
    # Another user: another key. Another address alone is not part of this rule's key.
    other_user, created = await store.raise_signal(signal(("e2",), user="wangfang"))
    assert created and other_user.id != first.id
    same_user, created = await store.raise_signal(signal(("e3",), ip="198.51.100.9"))
    assert not created and same_user.id == first.id
    # Another rule about the same events: another alert.
    spray, created = await store.raise_signal(signal(("e1",), rule=SPRAY))
    assert created and spray.id not in (first.id, other_user.id)
    # A drill's signals never join real alerts, nor another drill's.
    drill, created = await store.raise_signal(signal(("d1",)), drill_id="2026-q4")
    assert created and drill.drill_id == "2026-q4"
    again, created = await store.raise_signal(signal(("d2",)), drill_id="2026-q4")
    assert not created and again.id == drill.id
    _, created = await store.raise_signal(signal(("d3",)), drill_id="2027-q1")
    assert created


async def test_a_replayed_signal_changes_nothing(store: AlertStore, emitter: RecordingEmitter) -> None:
    created_alert, _ = await store.raise_signal(signal(("e1", "e2")))
    joined, _ = await store.raise_signal(signal(("e3",), at=T0 + 60))
    for replayed in (signal(("e1", "e2")), signal(("e3",), at=T0 + 60)):
        alert, created = await store.raise_signal(replayed)
        assert not created and alert == joined
    assert len(await store.history(created_alert.id)) == 2
    assert emitter.actions() == ["alert-created"]
    # Even after the alert was closed: the completing event is its evidence already.
    await store.close(created_alert.id, "duplicate", actor="lina")
    alert, created = await store.raise_signal(signal(("e3",), at=T0 + 60))
    assert not created and alert.id == created_alert.id and alert.status is Status.CLOSED


async def test_concurrent_replays_insert_one_alert(store: AlertStore, engine: AsyncEngine) -> None:
    # Two stores (two processes after a restart) take the same signal at the same time.
    other = AlertStore(engine)
    results = await asyncio.gather(*(s.raise_signal(signal(("e1", "e2"))) for s in (store, other, store)))
    assert len({alert.id for alert, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    page = await store.list()
    assert page.total == 1 and page.alerts[0].event_count == 2


async def test_the_new_alert_id_is_derived_from_the_signal(engine: AsyncEngine) -> None:
    alert, _ = await AlertStore(engine).raise_signal(signal(("e1", "e9")))
    key = "\x1f".join(("test.brute-force", signal(("e9",)).suppression_hash, "e9"))
    assert alert.id == hashlib.sha256(key.encode()).hexdigest()[:32]


async def test_bad_signals_are_refused(store: AlertStore) -> None:
    with pytest.raises(AlertInvalid) as e:
        await store.raise_signal(signal(("x" * 129,)))
    assert e.value.code == "invalid_event_id"
    for drill in (NO_DRILL, "bad drill", ""):
        with pytest.raises(AlertInvalid):
            await store.raise_signal(signal(("e1",)), drill_id=drill)
    assert (await store.list()).total == 0


# -- transitions -----------------------------------------------------------------------------------


async def test_every_transition_with_its_history_and_event(
    store: AlertStore, emitter: RecordingEmitter, clock: Clock
) -> None:
    alert, _ = await store.raise_signal(signal(("e1",)))
    clock.advance(60)
    acked = await store.acknowledge(alert.id, actor="lina", note="looking")
    assert acked.status is Status.ACKNOWLEDGED and acked.version == 2
    assert acked.acknowledged_at == datetime.fromtimestamp(clock.now, UTC)
    clock.advance(60)
    assigned = await store.assign(alert.id, "lina", actor="lina")
    assert assigned.assignee == "lina"
    reassigned = await store.assign(alert.id, "wangqiang", actor="lina")
    assert reassigned.assignee == "wangqiang"
    commented = await store.comment(alert.id, "攻击来源为外网地址，已封禁。", actor="wangqiang")
    assert commented.version == 5 and commented.status is Status.ACKNOWLEDGED
    clock.advance(60)
    closed = await store.close(alert.id, "true_positive", actor="wangqiang", note="blocked")
    assert (closed.status, closed.close_reason) == (Status.CLOSED, CloseReason.TRUE_POSITIVE)
    assert closed.closed_at == datetime.fromtimestamp(clock.now, UTC)
    assert closed.acknowledged_at == acked.acknowledged_at  # the first response stays
    reopened = await store.reopen(alert.id, actor="lina", note="came back")
    assert (reopened.status, reopened.close_reason, reopened.closed_at) == (Status.OPEN, None, None)
    assert reopened.acknowledged_at == acked.acknowledged_at
    unassigned = await store.assign(alert.id, None, actor="lina")
    assert unassigned.assignee is None and unassigned.version == 8

    history = await store.history(alert.id)
    assert [h.seq for h in history] == list(range(1, 9))
    assert [(h.action, h.actor, h.from_status, h.to_status) for h in history[1:]] == [
        (HistoryAction.ACKNOWLEDGED, "lina", Status.OPEN, Status.ACKNOWLEDGED),
        (HistoryAction.ASSIGNED, "lina", None, None),
        (HistoryAction.ASSIGNED, "lina", None, None),
        (HistoryAction.COMMENTED, "wangqiang", None, None),
        (HistoryAction.CLOSED, "wangqiang", Status.ACKNOWLEDGED, Status.CLOSED),
        (HistoryAction.REOPENED, "lina", Status.CLOSED, Status.OPEN),
        (HistoryAction.UNASSIGNED, "lina", None, None),
    ]
    assert history[1].note == "looking"
    assert [h.assignee for h in history[2:4]] == ["lina", "wangqiang"]
    assert history[4].note == "攻击来源为外网地址，已封禁。"
    assert (history[5].close_reason, history[5].note) == (CloseReason.TRUE_POSITIVE, "blocked")
    assert history[7].assignee == "wangqiang"  # whom it was taken from
    assert history[1].at == acked.acknowledged_at

    assert emitter.actions() == [
        "alert-created",
        "alert-acknowledged",
        "alert-assigned",
        "alert-assigned",
        "alert-commented",
        "alert-closed",
        "alert-reopened",
        "alert-unassigned",
    ]
    for event in emitter.events[1:]:
        assert event.category is Category.INTRUSION_DETECTION and event.outcome is Outcome.SUCCESS
        assert event.get("onegate.alert_id") == alert.id
        assert event.get("user.name") is None  # the actor is not whom the alert is about
    closed_event = only(emitter, "alert-closed")
    assert closed_event.get("onegate.actor") == "wangqiang"
    assert closed_event.get("onegate.close_reason") == "true_positive"
    assert closed_event.get("onegate.previous_status") == "acknowledged"
    assert closed_event.get("onegate.version") == 6
    assert emitter.events[3].get("onegate.assignee") == "wangqiang"


async def test_closing_an_open_alert_directly(store: AlertStore, clock: Clock) -> None:
    alert, _ = await store.raise_signal(signal(("e1",)))
    clock.advance(90)
    closed = await store.close(alert.id, CloseReason.FALSE_POSITIVE, actor="lina")
    assert closed.acknowledged_at == closed.closed_at  # closing is the first response
    assert (closed.time_to_acknowledge, closed.time_to_close) == (90.0, 90.0)
    reopened = await store.reopen(alert.id, actor="lina")
    assert reopened.time_to_acknowledge == 90.0 and reopened.time_to_close is None


@pytest.mark.parametrize(
    ("steps", "action", "code"),
    [
        (["acknowledge"], "acknowledge", "already_acknowledged"),
        (["close"], "acknowledge", "closed"),
        (["close"], "close", "already_closed"),
        ([], "reopen", "already_open"),
        (["acknowledge", "reopen"], "reopen", "already_open"),
        ([], "unassign", "not_assigned"),
        (["assign"], "assign", "already_assigned"),
    ],
)
async def test_invalid_transitions_are_refused_with_reasons(
    store: AlertStore, emitter: RecordingEmitter, steps: list[str], action: str, code: str
) -> None:
    alert, _ = await store.raise_signal(signal(("e1",)))
    calls = {
        "acknowledge": lambda: store.acknowledge(alert.id, actor="lina"),
        "close": lambda: store.close(alert.id, "other", actor="lina"),
        "reopen": lambda: store.reopen(alert.id, actor="lina"),
        "assign": lambda: store.assign(alert.id, "lina", actor="lina"),
        "unassign": lambda: store.assign(alert.id, None, actor="lina"),
    }
    for step in steps:
        await calls[step]()
    before = await store.get(alert.id)
    events = len(emitter.events)
    with pytest.raises(TransitionRefused) as e:
        await calls[action]()
    assert e.value.code == code
    assert alert.id in e.value.message_en and alert.id in e.value.message_zh
    assert await store.get(alert.id) == before  # nothing changed
    assert len(emitter.events) == events


async def test_requests_checked_before_the_alert(store: AlertStore) -> None:
    alert, _ = await store.raise_signal(signal(("e1",)))
    cases = [
        (store.close(alert.id, None, actor="lina"), "close_reason_required"),
        (store.close(alert.id, "resolved", actor="lina"), "unknown_close_reason"),
        (store.comment(alert.id, "", actor="lina"), "comment_empty"),
        (store.comment(alert.id, "   \n", actor="lina"), "comment_empty"),
        (store.comment(alert.id, "x" * (MAX_COMMENT + 1), actor="lina"), "comment_too_long"),
        (store.acknowledge(alert.id, actor="lina", note="n" * 4001), "note_too_long"),
        (store.assign(alert.id, "li na", actor="lina"), "invalid_username"),
        (store.assign(alert.id, UNASSIGNED, actor="lina"), "invalid_username"),
        (store.acknowledge(alert.id, actor=""), "invalid_actor"),
    ]
    for call, code in cases:
        with pytest.raises(AlertInvalid) as e:
            await call
        assert e.value.code == code
        assert e.value.message_en and e.value.message_zh
    assert (await store.get(alert.id)).version == 1


async def test_comment_limits(store: AlertStore) -> None:
    alert, _ = await store.raise_signal(signal(("e1",)))
    await store.comment(alert.id, "x", actor="lina")
    longest = "长" * MAX_COMMENT
    await store.comment(alert.id, longest, actor="lina")
    history = await store.history(alert.id)
    assert [h.note for h in history[1:]] == ["x", longest]
    # A closed alert still takes comments (the post-mortem).
    await store.close(alert.id, "benign_positive", actor="lina")
    closed = await store.comment(alert.id, "drill traffic", actor="lina")
    assert closed.status is Status.CLOSED


async def test_unknown_alerts(store: AlertStore) -> None:
    for alert_id in ("0" * 32, "not-an-id", "'; DROP TABLE soc_alerts; --"):
        with pytest.raises(AlertNotFound) as e:
            await store.get(alert_id)
        assert e.value.message_zh.startswith("没有告警")
        with pytest.raises(AlertNotFound):
            await store.acknowledge(alert_id, actor="lina")
        with pytest.raises(AlertNotFound):
            await store.history(alert_id)
        with pytest.raises(AlertNotFound):
            await store.evidence(alert_id)


async def test_a_stale_version_is_refused(store: AlertStore, emitter: RecordingEmitter) -> None:
    alert, _ = await store.raise_signal(signal(("e1",)))
    acked = await store.acknowledge(alert.id, actor="lina", expected_version=1)
    assert acked.version == 2
    with pytest.raises(AlertConflict) as e:
        await store.close(alert.id, "duplicate", actor="wangqiang", expected_version=1)
    assert (e.value.code, e.value.expected, e.value.stored) == ("version_mismatch", 1, 2)
    assert "重新读取" in e.value.message_zh
    # A joined signal changes the alert too: a version read before it is stale.
    await store.raise_signal(signal(("e2",), at=T0 + 5))
    with pytest.raises(AlertConflict):
        await store.assign(alert.id, "lina", actor="lina", expected_version=2)
    assert (await store.assign(alert.id, "lina", actor="lina", expected_version=3)).version == 4
    assert emitter.actions() == ["alert-created", "alert-acknowledged", "alert-assigned"]


async def test_concurrent_changes_are_serialised(store: AlertStore) -> None:
    alert, _ = await store.raise_signal(signal(("e1",)))
    results = await asyncio.gather(
        *(store.comment(alert.id, f"note {i}", actor="lina") for i in range(8)), return_exceptions=True
    )
    assert all(not isinstance(r, BaseException) for r in results), results
    history = await store.history(alert.id)
    assert [h.seq for h in history] == list(range(1, 10))
    assert sorted(h.note or "" for h in history[1:]) == [f"note {i}" for i in range(8)]
    assert (await store.get(alert.id)).version == 9


# -- bulk ------------------------------------------------------------------------------------------


async def test_bulk_with_mixed_results(store: AlertStore, emitter: RecordingEmitter) -> None:
    a, _ = await store.raise_signal(signal(("a1",), user="a"))
    b, _ = await store.raise_signal(signal(("b1",), user="b"))
    c, _ = await store.raise_signal(signal(("c1",), user="c"))
    d, _ = await store.raise_signal(signal(("d1",), user="d"))
    await store.close(b.id, "duplicate", actor="lina")
    await store.comment(d.id, "seen", actor="lina")  # d is at version 2
    missing = "f" * 32
    result = await store.bulk(
        [a.id, b.id, missing, c.id, a.id, d.id],
        "close",
        actor="lina",
        reason="false_positive",
        note="scanner",
        expected_versions={c.id: 1, d.id: 1},
    )
    assert [x.id for x in result.changed] == [a.id, c.id]
    assert all(
        x.status is Status.CLOSED and x.close_reason is CloseReason.FALSE_POSITIVE for x in result.changed
    )
    assert [(r.alert_id, r.code) for r in result.refused] == [
        (b.id, "already_closed"),
        (missing, "alert_not_found"),
        (d.id, "version_mismatch"),
    ]
    assert all(r.message_en and r.message_zh for r in result.refused)
    assert (await store.get(d.id)).status is Status.OPEN
    assert [e.get("onegate.alert_id") for e in emitter.events if e.action == "alert-closed"] == [
        b.id,
        a.id,
        c.id,
    ]
    as_json = result.as_dict()
    assert as_json["refused"][0] == {
        "id": b.id,
        "code": "already_closed",
        "en": f"alert {b.id} is closed already",
        "zh": f"告警 {b.id} 已关闭",
    }

    assigned = await store.bulk([a.id, b.id, c.id, d.id], "assign", actor="lina", assignee="lina")
    assert len(assigned.changed) == 4 and not assigned.refused
    reopened = await store.bulk([a.id, d.id], "reopen", actor="lina")
    assert [x.id for x in reopened.changed] == [a.id] and reopened.refused[0].code == "already_open"
    commented = await store.bulk([a.id, d.id], "comment", actor="lina", text="批量备注")
    assert len(commented.changed) == 2
    assert (await store.history(d.id))[-1].note == "批量备注"


async def test_bulk_requests_are_checked_whole(store: AlertStore) -> None:
    a, _ = await store.raise_signal(signal(("a1",)))
    with pytest.raises(AlertInvalid) as e:
        await store.bulk([a.id], "close", actor="lina")
    assert e.value.code == "close_reason_required"
    with pytest.raises(AlertInvalid) as e:
        await store.bulk([a.id], "delete", actor="lina")
    assert e.value.code == "unknown_action"
    with pytest.raises(AlertInvalid) as e:
        await store.bulk([f"{i:032x}" for i in range(1001)], "acknowledge", actor="lina")
    assert e.value.code == "too_many_alerts"
    assert (await store.get(a.id)).version == 1


# -- SLA -------------------------------------------------------------------------------------------


async def test_sla_figures_and_overdue(store: AlertStore, clock: Clock) -> None:
    critical, _ = await store.raise_signal(signal(("c1",), rule=SPRAY))  # ack 15 min / close 4 h
    high, _ = await store.raise_signal(signal(("h1",)))  # ack 1 h / close 24 h
    assert critical.time_to_acknowledge is None and critical.time_to_close is None
    assert critical.sla.acknowledge_due == critical.created_at + timedelta(minutes=15)
    assert critical.sla.close_due == critical.created_at + timedelta(hours=4)
    assert not critical.overdue

    clock.advance(15 * 60)  # exactly at the due time: not yet overdue
    assert (await store.list(overdue=True)).total == 0
    clock.advance(1)
    late = await store.list(overdue=True)
    assert [a.id for a in late.alerts] == [critical.id]
    assert late.alerts[0].sla.acknowledge_overdue and late.alerts[0].overdue
    assert store.sla(critical).overdue  # the stored snapshot is old; sla() reads the clock

    acked = await store.acknowledge(critical.id, actor="lina")
    assert acked.time_to_acknowledge == 901.0 and not acked.overdue
    assert (await store.list(overdue=True)).total == 0
    clock.advance(4 * 3600)  # past the critical close target and the high acknowledge one
    late = await store.list(overdue=True)
    assert sorted(a.id for a in late.alerts) == sorted([critical.id, high.id])
    by_id = {a.id: a for a in late.alerts}
    assert by_id[critical.id].sla.close_overdue and not by_id[critical.id].sla.acknowledge_overdue
    assert by_id[high.id].sla.acknowledge_overdue and not by_id[high.id].sla.close_overdue
    closed = await store.close(critical.id, "true_positive", actor="lina")
    assert closed.time_to_close == 901.0 + 4 * 3600 and not closed.overdue
    assert [a.id for a in (await store.list(overdue=True)).alerts] == [high.id]
    assert closed.as_dict()["sla"]["time_to_close"] == 901.0 + 4 * 3600


async def test_sla_targets_are_configurable(engine: AsyncEngine, clock: Clock) -> None:
    minutes = {s: 60.0 for s in Severity}
    store = AlertStore(engine, clock=clock, sla=SlaTargets(acknowledge=minutes, close={**minutes}))
    alert, _ = await store.raise_signal(signal(("e1",)))
    clock.advance(61)
    assert [a.id for a in (await store.list(overdue=True)).alerts] == [alert.id]
    with pytest.raises(ValueError, match="no target for low"):
        SlaTargets(acknowledge={"critical": 1, "high": 1, "medium": 1}, close=minutes)
    with pytest.raises(ValueError, match="shorter"):
        SlaTargets(acknowledge={**minutes, Severity.LOW: 120}, close=minutes)


# -- lists -----------------------------------------------------------------------------------------


async def test_list_filters(store: AlertStore, clock: Clock, engine: AsyncEngine) -> None:
    z, _ = await store.raise_signal(signal(("z1",), user="zhangwei", ip="203.0.113.7"))
    clock.advance(10)
    w, _ = await store.raise_signal(signal(("w1",), user="wangfang", ip="198.51.100.2"))
    clock.advance(10)
    s, _ = await store.raise_signal(signal(("s1",), rule=SPRAY, ip="203.0.113.7"))
    clock.advance(10)
    d, _ = await store.raise_signal(signal(("d1",), user="redteam01"), drill_id="2026-q4")
    await store.acknowledge(w.id, actor="lina")
    await store.assign(w.id, "lina", actor="lina")
    await store.close(s.id, "true_positive", actor="lina")
    async with session_factory(engine)() as session, session.begin():
        await session.execute(update(AlertRecord).where(AlertRecord.id == z.id).values(incident_id="inc-1"))

    async def ids(**filters: Any) -> list[str]:
        page = await store.list(**filters)
        assert page.total == len(page.alerts)
        return [a.id for a in page.alerts]

    assert await ids() == [d.id, s.id, w.id, z.id]  # newest first
    assert await ids(status=["open"]) == [d.id, z.id]
    assert await ids(status=[Status.ACKNOWLEDGED, "closed"]) == [s.id, w.id]
    assert await ids(severity=["critical"]) == [s.id]
    assert await ids(severity=[Severity.HIGH]) == [d.id, w.id, z.id]
    assert await ids(rule_id="test.spray") == [s.id]
    assert await ids(assignee="lina") == [w.id]
    assert await ids(assignee=UNASSIGNED) == [d.id, s.id, z.id]
    assert await ids(entity={"source.ip": "203.0.113.7"}) == [d.id, s.id, z.id]
    assert await ids(entity={"source.ip": "203.0.113.7", "user.name": "zhangwei"}) == [s.id, z.id]
    assert await ids(entity={"user.name": "nobody"}) == []
    assert await ids(incident_id="inc-1") == [z.id]
    assert await ids(drill_id="2026-q4") == [d.id]
    assert await ids(drill_id=NO_DRILL) == [s.id, w.id, z.id]
    assert await ids(since=w.created_at, until=d.created_at) == [s.id, w.id]
    assert await ids(since=d.created_at + timedelta(microseconds=1)) == []
    assert await ids(status=["open"], entity={"user.name": "zhangwei"}, drill_id=NO_DRILL) == [z.id]
    for bad in (
        {"status": ["pending"]},
        {"severity": ["urgent"]},
        {"entity": {"user.name') OR 1=1 --": "x"}},
        {"since": datetime(2026, 1, 1)},
        {"limit": 0},
        {"limit": 501},
        {"cursor": "garbage!"},
    ):
        with pytest.raises(AlertInvalid):
            await store.list(**bad)


async def test_paging_with_a_cursor(store: AlertStore, clock: Clock) -> None:
    made = []
    for i in range(7):
        alert, _ = await store.raise_signal(signal((f"e{i}",), user=f"user{i}"))
        made.append(alert.id)
        if i % 3:  # some share a creation time: the id orders them
            clock.advance(1)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.list(limit=3, cursor=cursor)
        assert page.total == 7
        seen += [a.id for a in page.alerts]
        pages += 1
        cursor = page.cursor
        if cursor is None:
            break
    assert pages == 3 and sorted(seen) == sorted(made) and len(seen) == 7
    everything = (await store.list(limit=500)).alerts
    assert [a.id for a in everything] == seen
    keys = [(a.created_at, a.id) for a in everything]
    assert keys == sorted(keys, reverse=True)
    # The filters apply to later pages too.
    page = await store.list(limit=1, entity={"user.name": "user3"})
    assert page.total == 1 and page.cursor is None


async def test_as_dict_is_json_ready(store: AlertStore) -> None:
    alert, _ = await store.raise_signal(signal(("e1",)))
    data = json.loads(json.dumps(alert.as_dict()))
    assert data["created_at"].endswith("Z") and data["first_seen"] == "2026-11-02T09:00:00.000000Z"
    assert data["rule"]["name"] == {"en": "Brute force against one account", "zh": "针对单个账号的暴力破解"}
    assert (data["severity"], data["severity_score"], data["status"], data["version"]) == (
        "high",
        73,
        "open",
        1,
    )
    assert data["sla"]["overdue"] is False and data["sla"]["time_to_acknowledge"] is None
    [entry] = await store.history(alert.id)
    assert entry.as_dict()["action"] == "created"
