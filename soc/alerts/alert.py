"""The values the alert store hands out: an alert, a history entry, a page of alerts and the
result of a bulk change. They are frozen snapshots, never the database rows."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from soc.alerts.errors import AlertError
from soc.alerts.models import AlertHistoryRecord, AlertRecord
from soc.alerts.sla import Sla, iso_utc
from soc.detections.model import Severity, Text

__all__ = [
    "ALERT_ID",
    "NO_DRILL",
    "SEVERITY_SCORE",
    "UNASSIGNED",
    "Alert",
    "AlertPage",
    "BulkResult",
    "CloseReason",
    "HistoryAction",
    "HistoryEntry",
    "Refusal",
    "Status",
    "utc",
]

# An alert's id: 32 hex digits.
ALERT_ID = re.compile(r"[0-9a-f]{32}")
# ``list(assignee=UNASSIGNED)``: alerts without an assignee (so no user may be given this name).
UNASSIGNED = "unassigned"
# ``list(drill_id=NO_DRILL)``: alerts outside any drill (so no drill may have this id).
NO_DRILL = "none"
# ECS ``event.severity`` of an alert, as Elastic Security numbers its rule severities.
SEVERITY_SCORE = {Severity.LOW: 21, Severity.MEDIUM: 47, Severity.HIGH: 73, Severity.CRITICAL: 99}


class Status(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    CLOSED = "closed"


class CloseReason(StrEnum):
    """Why an alert was closed (Elastic Security's vocabulary, plus the true/benign split)."""

    DUPLICATE = "duplicate"
    FALSE_POSITIVE = "false_positive"  # the rule matched something it should not have
    TRUE_POSITIVE = "true_positive"  # a real attack, dealt with
    BENIGN_POSITIVE = "benign_positive"  # real behaviour, allowed (a test, an admin's task)
    OTHER = "other"


class HistoryAction(StrEnum):
    CREATED = "created"
    SIGNAL = "signal"  # a signal joined the alert (suppression)
    ACKNOWLEDGED = "acknowledged"
    CLOSED = "closed"
    REOPENED = "reopened"
    ASSIGNED = "assigned"
    UNASSIGNED = "unassigned"
    COMMENTED = "commented"


def utc(value: datetime) -> datetime:
    """A time read from the database, in UTC: SQLite gives it back without its zone, PostgreSQL
    in the session's zone."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


def _iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else iso_utc(value)


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert as stored, with where it stands against its response targets when it was read
    (``sla``)."""

    id: str
    rule_id: str
    rule_name: Text
    severity: Severity
    risk_score: int
    technique: str
    tactic: str
    status: Status
    close_reason: CloseReason | None
    assignee: str | None
    suppression_hash: str
    entity: Mapping[str, str]
    reason: Text
    values: Mapping[str, Any]
    first_seen: datetime
    last_seen: datetime
    created_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    closed_at: datetime | None
    event_count: int
    signal_count: int
    incident_id: str | None
    drill_id: str | None
    version: int
    sla: Sla

    @classmethod
    def of(cls, row: AlertRecord, sla: Sla) -> Alert:
        return cls(
            id=row.id,
            rule_id=row.rule_id,
            rule_name=Text(en=row.rule_name_en, zh=row.rule_name_zh),
            severity=Severity(row.severity),
            risk_score=row.risk_score,
            technique=row.technique,
            tactic=row.tactic,
            status=Status(row.status),
            close_reason=CloseReason(row.close_reason) if row.close_reason else None,
            assignee=row.assignee,
            suppression_hash=row.suppression_hash,
            entity=dict(row.entity),
            reason=Text(en=row.reason_en, zh=row.reason_zh),
            values=dict(row.values),
            first_seen=utc(row.first_seen),
            last_seen=utc(row.last_seen),
            created_at=utc(row.created_at),
            updated_at=utc(row.updated_at),
            acknowledged_at=_utc_or_none(row.acknowledged_at),
            closed_at=_utc_or_none(row.closed_at),
            event_count=row.event_count,
            signal_count=row.signal_count,
            incident_id=row.incident_id,
            drill_id=row.drill_id,
            version=row.version,
            sla=sla,
        )

    @property
    def time_to_acknowledge(self) -> float | None:
        """Seconds from creation to the first response; None while pending."""
        return self.sla.time_to_acknowledge

    @property
    def time_to_close(self) -> float | None:
        """Seconds from creation to the close; None while the alert is not closed."""
        return self.sla.time_to_close

    @property
    def overdue(self) -> bool:
        """A pending response is past its target (as of when the alert was read)."""
        return self.sla.overdue

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (times in ISO 8601 UTC)."""
        return {
            "id": self.id,
            "rule": {
                "id": self.rule_id,
                "name": self.rule_name.as_dict(),
                "technique": self.technique,
                "tactic": self.tactic,
            },
            "severity": self.severity.value,
            "severity_score": SEVERITY_SCORE[self.severity],
            "risk_score": self.risk_score,
            "status": self.status.value,
            "close_reason": self.close_reason.value if self.close_reason else None,
            "assignee": self.assignee,
            "suppression_hash": self.suppression_hash,
            "entity": dict(self.entity),
            "reason": self.reason.as_dict(),
            "values": dict(self.values),
            "first_seen": iso_utc(self.first_seen),
            "last_seen": iso_utc(self.last_seen),
            "created_at": iso_utc(self.created_at),
            "updated_at": iso_utc(self.updated_at),
            "acknowledged_at": _iso_or_none(self.acknowledged_at),
            "closed_at": _iso_or_none(self.closed_at),
            "event_count": self.event_count,
            "signal_count": self.signal_count,
            "incident_id": self.incident_id,
            "drill_id": self.drill_id,
            "version": self.version,
            "sla": self.sla.as_dict(),
        }


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One change of an alert; ``seq`` is the alert's version after it."""

    alert_id: str
    seq: int
    at: datetime
    actor: str
    action: HistoryAction
    from_status: Status | None
    to_status: Status | None
    close_reason: CloseReason | None
    assignee: str | None
    note: str | None

    @classmethod
    def of(cls, row: AlertHistoryRecord) -> HistoryEntry:
        return cls(
            alert_id=row.alert_id,
            seq=row.seq,
            at=utc(row.at),
            actor=row.actor,
            action=HistoryAction(row.action),
            from_status=Status(row.from_status) if row.from_status else None,
            to_status=Status(row.to_status) if row.to_status else None,
            close_reason=CloseReason(row.close_reason) if row.close_reason else None,
            assignee=row.assignee,
            note=row.note,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "seq": self.seq,
            "at": iso_utc(self.at),
            "actor": self.actor,
            "action": self.action.value,
            "from_status": self.from_status.value if self.from_status else None,
            "to_status": self.to_status.value if self.to_status else None,
            "close_reason": self.close_reason.value if self.close_reason else None,
            "assignee": self.assignee,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class AlertPage:
    """One page of a list: ``total`` counts every match; ``cursor`` asks for the next page
    (None on the last)."""

    alerts: list[Alert]
    total: int
    cursor: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"alerts": [a.as_dict() for a in self.alerts], "total": self.total, "cursor": self.cursor}


@dataclass(frozen=True, slots=True)
class Refusal:
    """An alert a bulk change left as it was, and why."""

    alert_id: str
    code: str
    message_en: str
    message_zh: str

    @classmethod
    def of(cls, alert_id: str, error: AlertError) -> Refusal:
        return cls(alert_id, error.code, error.message_en, error.message_zh)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.alert_id, "code": self.code, "en": self.message_en, "zh": self.message_zh}


@dataclass(frozen=True, slots=True)
class BulkResult:
    """What a bulk change did: the alerts it changed (as they are now) and the ones it refused,
    each in the order asked."""

    changed: list[Alert] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": [a.as_dict() for a in self.changed],
            "refused": [r.as_dict() for r in self.refused],
        }
