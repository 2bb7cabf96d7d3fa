"""The events the alert store emits (ECS, dataset ``onegate.soc``, category
``intrusion_detection``).

``alert-created`` (``event.kind: alert``) names the rule (``rule.id``, ``rule.name``), the
severity as Elastic Security numbers it (``event.severity``: low 21, medium 47, high 73, critical
99), the risk score (``onegate.risk_score``), the ATT&CK technique and whom the alert is about
(``user.name``, ``source.ip``, ``session.id`` where the signal gave them). The triage events
(``alert-acknowledged``, ``-closed``, ``-reopened``, ``-assigned``, ``-unassigned``,
``-commented``) name the analyst in ``onegate.actor``: ``user.name`` would say the analyst is
whom the alert is about. Every event carries ``onegate.alert_id``. Comments and notes stay in the
history, not in the events.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Any

from core.events import Category, Event, Kind, Outcome
from soc.alerts.alert import SEVERITY_SCORE, Alert, HistoryAction, HistoryEntry

__all__ = ["alert_changed", "alert_created"]

_ACTIONS = {
    HistoryAction.ACKNOWLEDGED: "alert-acknowledged",
    HistoryAction.CLOSED: "alert-closed",
    HistoryAction.REOPENED: "alert-reopened",
    HistoryAction.ASSIGNED: "alert-assigned",
    HistoryAction.UNASSIGNED: "alert-unassigned",
    HistoryAction.COMMENTED: "alert-commented",
}


def _event(
    action: str, alert: Alert, fields: dict[str, Any], *, kind: Kind, outcome: Outcome, at: datetime
) -> Event:
    values: dict[str, Any] = {
        "rule.id": alert.rule_id,
        "rule.name": alert.rule_name.en,
        "event.severity": SEVERITY_SCORE[alert.severity],
        "onegate.severity": alert.severity.value,
        "onegate.risk_score": alert.risk_score,
        "onegate.alert_id": alert.id,
    }
    if alert.drill_id is not None:
        values["onegate.drill_id"] = alert.drill_id
    values.update(fields)
    return Event(
        action=action,
        category=Category.INTRUSION_DETECTION,
        outcome=outcome,
        dataset="onegate.soc",
        kind=kind,
        fields=values,
        timestamp=at,
    )


def alert_created(alert: Alert) -> Event:
    fields: dict[str, Any] = {
        "event.type": ["info"],
        "message": alert.reason.en[:1000],
        "threat.technique.id": [alert.technique],
        "onegate.tactic": alert.tactic,
    }
    for name in ("user.name", "session.id"):
        if alert.entity.get(name):
            fields[name] = alert.entity[name][:1000]
    address = alert.entity.get("source.ip")
    if address and _is_ip(address):  # the event refuses a source.ip that is not an address
        fields["source.ip"] = address
    return _event(
        "alert-created", alert, fields, kind=Kind.ALERT, outcome=Outcome.UNKNOWN, at=alert.created_at
    )


def alert_changed(alert: Alert, entry: HistoryEntry) -> Event:
    """The event of a triage change: ``alert`` as it is after ``entry``."""
    fields: dict[str, Any] = {
        "event.type": ["change"],
        "onegate.actor": entry.actor,
        "onegate.status": alert.status.value,
        "onegate.version": alert.version,
    }
    if entry.from_status is not None:
        fields["onegate.previous_status"] = entry.from_status.value
    if entry.close_reason is not None:
        fields["onegate.close_reason"] = entry.close_reason.value
    if entry.assignee is not None:
        fields["onegate.assignee"] = entry.assignee
    return _event(
        _ACTIONS[entry.action], alert, fields, kind=Kind.EVENT, outcome=Outcome.SUCCESS, at=entry.at
    )


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
