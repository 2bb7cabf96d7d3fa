"""Incidents (alerts sharing an entity join one) and response actions, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from core.events import RecordingEmitter
from soc.alerts import AlertStore
from soc.alerts.alert import Alert
from soc.detections.model import RuleInfo, Severity, Signal, Text
from soc.incidents.services import IncidentError, IncidentStore
from soc.response.services import Action, ResponseError, ResponseService
from soc.triage import CATCH_UP_SECONDS, GRACE_SECONDS, Repaired, Triage

T0 = datetime(2026, 11, 30, 1, 0, tzinfo=UTC).timestamp()
ATTACKER = "203.0.113.7"


def rule(rule_id: str, severity: Severity, *suppress_by: str) -> RuleInfo:
    return RuleInfo(
        id=rule_id,
        name=Text(rule_id.title(), f"规则 {rule_id}"),
        description=Text("d", "描述"),
        severity=severity,
        risk_score={"low": 21, "medium": 47, "high": 73, "critical": 99}[severity.value],
        technique="T1110",
        tactic="credential-access",
        suppress_by=suppress_by,
    )


SPRAY = rule("spray", Severity.HIGH, "source.ip")
BRUTE = rule("brute", Severity.MEDIUM, "user.name")
SUCCESS = rule("success-after", Severity.CRITICAL, "user.name")
DOWNLOAD = rule("download", Severity.HIGH, "user.name")


class Clock:
    def __init__(self) -> None:
        self.now = T0 + 5

    def __call__(self) -> float:
        return self.now


class Soc:
    def __init__(self, engine: AsyncEngine) -> None:
        self.clock = Clock()
        self.events = RecordingEmitter()
        self.alerts = AlertStore(engine, events=self.events, clock=self.clock)
        self.incidents = IncidentStore(engine, events=self.events, clock=self.clock, window=3600)
        self.n = 0

    async def alert(
        self, info: RuleInfo, at: float, entity: Mapping[str, str], *, drill: str | None = None
    ) -> Alert:
        self.n += 1
        signal = Signal(info, T0 + at, dict(entity), (f"e{self.n:04d}",), Text("r", "原因"))
        alert, created = await self.alerts.raise_signal(signal, drill_id=drill)
        assert created
        self.clock.now = max(self.clock.now, T0 + at + 2)
        return alert


async def test_an_attack_chain_becomes_one_incident_and_others_stay_apart(engine: AsyncEngine) -> None:
    soc = Soc(engine)
    spray = await soc.alert(SPRAY, 0, {"source.ip": ATTACKER})
    first = await soc.incidents.attach(spray)
    assert first.status == "open" and first.alert_count == 1
    assert first.title.en == f"Spray: source.ip={ATTACKER}" and first.title.zh.startswith("规则 spray")
    brute = await soc.alert(BRUTE, 60, {"user.name": "wangfang", "source.ip": ATTACKER})
    success = await soc.alert(
        SUCCESS, 120, {"user.name": "wangfang", "source.ip": "10.1.2.3", "session.id": "s1"}
    )
    download = await soc.alert(DOWNLOAD, 900, {"user.name": "wangfang"})
    for alert in (brute, success, download):
        assert (await soc.incidents.attach(alert)).id == first.id
    other = await soc.incidents.attach(
        await soc.alert(BRUTE, 130, {"user.name": "lina", "source.ip": "10.9.9.9"})
    )
    assert other.id != first.id
    incident = await soc.incidents.get(first.id)
    assert incident.alert_count == 4
    assert incident.severity is Severity.CRITICAL and incident.risk_score == 99
    assert set(incident.entities) == {
        f"source.ip={ATTACKER}",
        "user.name=wangfang",
        "source.ip=10.1.2.3",
        "session.id=s1",
    }
    assert await soc.incidents.alert_ids(first.id) == [spray.id, brute.id, success.id, download.id]
    assert (await soc.alerts.get(download.id)).incident_id == first.id
    # Attaching again changes nothing.
    assert (await soc.incidents.attach(download)).alert_count == 4
    assert soc.events.actions().count("incident-created") == 2


async def test_an_alert_after_the_window_opens_a_new_incident(engine: AsyncEngine) -> None:
    soc = Soc(engine)
    first = await soc.incidents.attach(await soc.alert(BRUTE, 0, {"user.name": "zhaolei"}))
    later = await soc.incidents.attach(await soc.alert(DOWNLOAD, 3700, {"user.name": "zhaolei"}))
    assert later.id != first.id


async def test_a_resolved_incident_takes_no_new_alerts(engine: AsyncEngine) -> None:
    soc = Soc(engine)
    first = await soc.incidents.attach(await soc.alert(BRUTE, 0, {"user.name": "zhaolei"}))
    await soc.incidents.set_status(first.id, "resolved", actor="lina")
    again = await soc.incidents.attach(await soc.alert(DOWNLOAD, 60, {"user.name": "zhaolei"}))
    assert again.id != first.id


async def test_drill_alerts_stay_out_of_real_incidents(engine: AsyncEngine) -> None:
    soc = Soc(engine)
    real = await soc.incidents.attach(await soc.alert(SPRAY, 0, {"source.ip": ATTACKER}))
    drill = await soc.incidents.attach(
        await soc.alert(BRUTE, 10, {"user.name": "x", "source.ip": ATTACKER}, drill="d1")
    )
    assert drill.id != real.id and drill.drill_id == "d1"
    assert [i.id for i in await soc.incidents.list()] == [real.id]
    assert [i.id for i in await soc.incidents.list(drill_id="d1")] == [drill.id]
    with pytest.raises(IncidentError, match="never linked"):
        await soc.incidents.link(real.id, (await soc.incidents.alert_ids(drill.id))[0], actor="lina")


async def test_statuses_history_and_the_time_figures(engine: AsyncEngine) -> None:
    soc = Soc(engine)
    alert = await soc.alert(SPRAY, 0, {"source.ip": ATTACKER})  # raised at T0 + 5
    incident = await soc.incidents.attach(alert)
    assert incident.time_to_detect == 5.0 and incident.time_to_respond is None
    soc.clock.now = T0 + 65
    incident = await soc.incidents.responded(incident.id, actor="lina", note="block-address")
    soc.clock.now = T0 + 125
    incident = await soc.incidents.set_status(incident.id, "contained", actor="lina", note="blocked")
    with pytest.raises(IncidentError, match="version"):
        await soc.incidents.set_status(incident.id, "resolved", actor="lina", expected_version=1)
    soc.clock.now = T0 + 605
    incident = await soc.incidents.set_status(
        incident.id, "resolved", actor="lina", expected_version=incident.version
    )
    assert (incident.time_to_detect, incident.time_to_respond, incident.time_to_resolve) == (5.0, 60.0, 600.0)
    with pytest.raises(IncidentError, match="cannot become contained") as refused:
        await soc.incidents.set_status(incident.id, "contained", actor="lina")
    assert "不能变为" in refused.value.zh
    with pytest.raises(IncidentError, match="version") as stale:
        await soc.incidents.comment(incident.id, "x", actor="lina", expected_version=incident.version - 1)
    assert stale.value.status == 412
    await soc.incidents.comment(incident.id, "源地址已封禁", actor="lina", expected_version=incident.version)
    with pytest.raises(IncidentError, match="1 to 4000"):
        await soc.incidents.comment(incident.id, " ", actor="lina")
    actions = [h["action"] for h in await soc.incidents.history(incident.id)]
    assert actions == ["created", "response", "status", "status", "commented"]
    assert incident.as_dict()["time_to_resolve_s"] == 600.0
    assert "incident-resolved" in soc.events.actions()


async def test_link_unlink_and_merge(engine: AsyncEngine) -> None:
    soc = Soc(engine)
    a = await soc.incidents.attach(await soc.alert(BRUTE, 0, {"user.name": "lina"}))
    b = await soc.incidents.attach(await soc.alert(SPRAY, 5, {"source.ip": "198.51.100.1"}))
    c = await soc.incidents.attach(await soc.alert(DOWNLOAD, 9, {"user.name": "chenjing"}))
    [b_alert] = await soc.incidents.alert_ids(b.id)
    a = await soc.incidents.link(a.id, b_alert, actor="lina")
    assert a.alert_count == 2 and (await soc.incidents.get(b.id)).alert_count == 0
    assert "source.ip=198.51.100.1" in a.entities
    a = await soc.incidents.unlink(a.id, b_alert, actor="lina")
    assert a.alert_count == 1 and (await soc.alerts.get(b_alert)).incident_id is None
    with pytest.raises(IncidentError, match="not in this incident"):
        await soc.incidents.unlink(a.id, b_alert, actor="lina")
    merged = await soc.incidents.merge(a.id, [c.id], actor="lina")
    assert merged.alert_count == 2 and merged.severity is Severity.HIGH
    gone = await soc.incidents.get(c.id)
    assert gone.status == "merged" and gone.merged_into == a.id
    with pytest.raises(IncidentError, match="merged into"):
        await soc.incidents.comment(c.id, "x", actor="lina")
    with pytest.raises(IncidentError, match="no incident"):
        await soc.incidents.get("nope")


# -- response actions ----------------------------------------------------------------------------


class Responders:
    """The owning components' side, as onegate registers it: here, what was asked of them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def make(self, action: str, *, fail: bool = False) -> Any:
        async def respond(target: str, params: Mapping[str, Any], *, actor: str, reason: str) -> Text:
            self.calls.append((action, target, dict(params)))
            if fail:
                raise RuntimeError("the directory is read-only")
            return Text(f"{action} done for {target}", f"已对 {target} 执行")

        return respond


async def test_a_response_is_run_recorded_and_marks_the_incident(engine: AsyncEngine) -> None:
    soc = Soc(engine)
    incident = await soc.incidents.attach(await soc.alert(SPRAY, 0, {"source.ip": ATTACKER}))
    calls = Responders()
    service = ResponseService(
        engine,
        {Action.BLOCK_ADDRESS: calls.make("block"), Action.LOCK_ACCOUNT: calls.make("lock", fail=True)},
        events=soc.events,
        clock=soc.clock,
        on_incident=lambda incident_id, actor, note: soc.incidents.responded(
            incident_id, actor=actor, note=note
        ),
    )
    assert service.available == [Action.LOCK_ACCOUNT, Action.BLOCK_ADDRESS]
    done = await service.execute(
        "block-address",
        ATTACKER,
        actor="lina",
        reason="spraying",
        params={"seconds": 7200},
        incident_id=incident.id,
    )
    assert done.done and done.detail.en == f"block done for {ATTACKER}"
    assert calls.calls == [("block", ATTACKER, {"seconds": 7200})]
    assert (await soc.incidents.get(incident.id)).responded_at is not None
    soc.clock.now += 1
    failed = await service.execute(
        Action.LOCK_ACCOUNT, "wangfang", actor="lina", reason="r", incident_id=incident.id
    )
    assert not failed.done and "read-only" in failed.detail.en
    assert [r.done for r in await service.history(incident_id=incident.id)] == [True, False]
    assert soc.events.actions()[-2:] == ["incident-response", "response-failed"]


@pytest.mark.parametrize(
    ("action", "target", "params", "code"),
    [
        ("reboot", "x", {}, "unknown_action"),
        ("raise-risk", "wangfang", {}, "unavailable"),
        ("block-address", "not-an-ip", {}, "invalid_target"),
        ("block-address", ATTACKER, {"seconds": 5}, "invalid_params"),
        ("block-address", ATTACKER, {"forever": True}, "invalid_params"),
        ("lock-account", " ", {}, "invalid_target"),
    ],
)
async def test_bad_responses_are_refused_before_anything_runs(
    engine: AsyncEngine, action: str, target: str, params: dict[str, Any], code: str
) -> None:
    calls = Responders()
    service = ResponseService(
        engine, {Action.BLOCK_ADDRESS: calls.make("block"), Action.LOCK_ACCOUNT: calls.make("lock")}
    )
    with pytest.raises(ResponseError) as refused:
        await service.execute(action, target, actor="lina", reason="r", params=params)
    assert refused.value.code == code and refused.value.zh
    assert calls.calls == []


async def test_repair_finishes_triage_that_a_crash_left_half_done(engine: AsyncEngine) -> None:
    soc = Soc(engine)
    calls = Responders()
    service = ResponseService(
        engine,
        {Action.BLOCK_ADDRESS: calls.make("block"), Action.LOCK_ACCOUNT: calls.make("lock")},
        clock=soc.clock,
    )
    auto = {
        "spray": ["block-address"],
        "brute": ["lock-account"],
        "download": ["lock-account"],
        "success-after": ["block-address"],
    }
    triage = Triage(soc.alerts, soc.incidents, responses=service, auto=auto, clock=soc.clock)
    # Raised, then the process died before the incident and the response: alerts in no incident.
    spray = await soc.alert(SPRAY, 0, {"source.ip": ATTACKER})
    brute = await soc.alert(BRUTE, 10, {"user.name": "zhangwei", "source.ip": ATTACKER})
    drill = await soc.alert(SPRAY, 20, {"source.ip": "198.51.100.9"}, drill="q4")
    closed = await soc.alert(DOWNLOAD, 30, {"user.name": "wangfang"})
    await soc.alerts.close(closed.id, "false_positive", actor="lina")
    no_target = await soc.alert(SUCCESS, 40, {"user.name": "chenjing"})  # no address to block
    # One that went through triage whole: linked, and its response ran once.
    whole = await triage.raise_signal(
        Signal(DOWNLOAD, T0 + 50, {"user.name": "liuyang"}, ("e9000",), Text("r", "原因"))
    )
    assert calls.calls == [("lock", "liuyang", {})]

    assert await triage.repair() == Repaired(0, 0)  # younger than the grace: maybe still under way
    soc.clock.now += GRACE_SECONDS
    assert await triage.repair() == Repaired(linked=5, responded=2)
    assert calls.calls[1:] == [("block", ATTACKER, {"seconds": 3600}), ("lock", "zhangwei", {})]
    for alert in (spray, brute, drill, closed, no_target, whole):
        assert (await soc.alerts.get(alert.id)).incident_id is not None
    assert (await soc.alerts.get(spray.id)).incident_id == (await soc.alerts.get(brute.id)).incident_id
    runs = await service.history(alert_id=spray.id)
    assert [(r.automatic, r.actor, r.incident_id) for r in runs] == [
        (True, "soc:auto", (await soc.alerts.get(spray.id)).incident_id)
    ]
    assert await triage.repair() == Repaired(0, 0)  # done once: nothing twice

    # An automatic action left unrun for longer than the catch-up is not run late.
    late = await soc.alert(SPRAY, 100, {"source.ip": "203.0.113.99"})
    soc.clock.now += CATCH_UP_SECONDS + GRACE_SECONDS
    assert await triage.repair() == Repaired(linked=1, responded=0)
    assert (await soc.alerts.get(late.id)).incident_id is not None
    assert len(calls.calls) == 3


async def test_repair_leaves_triage_under_way_in_this_process_alone(engine: AsyncEngine) -> None:
    soc = Soc(engine)
    entered, release = asyncio.Event(), asyncio.Event()
    runs: list[str] = []

    async def slow_block(target: str, params: Mapping[str, Any], *, actor: str, reason: str) -> Text:
        runs.append(target)
        if len(runs) == 1:  # the first run waits; a second (the bug this guards against) would not
            entered.set()
            await release.wait()
        return Text("blocked", "已封禁")

    service = ResponseService(engine, {Action.BLOCK_ADDRESS: slow_block}, clock=soc.clock)
    triage = Triage(
        soc.alerts, soc.incidents, responses=service, auto={"spray": ["block-address"]}, clock=soc.clock
    )
    signal = Signal(SPRAY, T0, {"source.ip": ATTACKER}, ("e0001",), Text("r", "原因"))
    running = asyncio.create_task(triage.raise_signal(signal))
    await entered.wait()  # linked, its response running (no record of it yet)
    soc.clock.now += GRACE_SECONDS + 1
    assert await triage.repair() == Repaired(0, 0)
    release.set()
    await running
    assert runs == [ATTACKER]
    assert await triage.repair() == Repaired(0, 0)
