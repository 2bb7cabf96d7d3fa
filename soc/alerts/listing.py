"""The filters, order and pages of :meth:`AlertStore.list <soc.alerts.services.AlertStore.list>`.

Alerts are listed newest first by ``created_at``, ties by id, and paged by keyset: a cursor names
the last alert of a page, so a page never repeats or skips an alert when new ones arrive.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_

from soc.alerts.alert import ALERT_ID, NO_DRILL, UNASSIGNED, Alert, Status
from soc.alerts.errors import AlertInvalid
from soc.alerts.models import AlertRecord
from soc.alerts.sla import SlaTargets
from soc.detections.model import Severity

__all__ = ["MAX_PAGE", "bad_filter", "decode_cursor", "encode_cursor", "filters", "overdue"]

MAX_PAGE = 500
_ENTITY_FIELD = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+")


def filters(
    *,
    status: Collection[Status | str] | None,
    severity: Collection[Severity | str] | None,
    rule_id: str | None,
    assignee: str | None,
    entity: Mapping[str, str] | None,
    incident_id: str | None,
    drill_id: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if status is not None:
        try:
            statuses = sorted({Status(v).value for v in status})
        except ValueError:
            raise bad_filter("status", "open, acknowledged, closed") from None
        where.append(AlertRecord.status.in_(statuses))
    if severity is not None:
        try:
            severities = sorted({Severity(v).value for v in severity})
        except ValueError:
            raise bad_filter("severity", "low, medium, high, critical") from None
        where.append(AlertRecord.severity.in_(severities))
    if rule_id is not None:
        where.append(AlertRecord.rule_id == rule_id)
    if assignee is not None:
        where.append(
            AlertRecord.assignee.is_(None) if assignee == UNASSIGNED else AlertRecord.assignee == assignee
        )
    for name, value in (entity or {}).items():
        if not _ENTITY_FIELD.fullmatch(name):
            raise bad_filter("entity", "ECS field names such as user.name")
        where.append(AlertRecord.entity[name].as_string() == value)
    if incident_id is not None:
        where.append(AlertRecord.incident_id == incident_id)
    if drill_id is not None:
        where.append(
            AlertRecord.drill_id.is_(None) if drill_id == NO_DRILL else AlertRecord.drill_id == drill_id
        )
    for bound, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise bad_filter(bound, "a time with its time zone")
    if since is not None:
        where.append(AlertRecord.created_at >= since.astimezone(UTC))
    if until is not None:
        where.append(AlertRecord.created_at < until.astimezone(UTC))
    return where


def overdue(targets: SlaTargets, now: datetime) -> ColumnElement[bool]:
    """Open past the acknowledge target, or not closed past the close target (see
    :class:`~soc.alerts.sla.SlaTargets`: strictly after the due time)."""
    return or_(
        *(
            and_(
                AlertRecord.severity == severity.value,
                or_(
                    and_(
                        AlertRecord.acknowledged_at.is_(None),
                        AlertRecord.created_at < now - timedelta(seconds=targets.acknowledge[severity]),
                    ),
                    and_(
                        AlertRecord.closed_at.is_(None),
                        AlertRecord.created_at < now - timedelta(seconds=targets.close[severity]),
                    ),
                ),
            )
            for severity in Severity
        )
    )


def bad_filter(name: str, expected: str) -> AlertInvalid:
    return AlertInvalid(
        "invalid_filter", f"filter {name}: expected {expected}", f"筛选条件 {name} 无效：应为 {expected}"
    )


def encode_cursor(alert: Alert) -> str:
    """Where the next page starts: after this alert in (created_at, id) descending order.
    Opaque to callers; it is not a secret (it names an alert the caller has seen)."""
    raw = json.dumps([alert.created_at.isoformat(), alert.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, alert_id = json.loads(raw)
        at = datetime.fromisoformat(created)
        if at.tzinfo is None or not isinstance(alert_id, str) or not ALERT_ID.fullmatch(alert_id):
            raise ValueError(cursor)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise AlertInvalid("invalid_cursor", "invalid page cursor", "分页游标无效") from None
    return at.astimezone(UTC), alert_id
