"""The alert tables: an alert, its evidence (event ids) and its history.

``soc_alerts`` holds one row per alert, with the rule's identity copied in (a rule may change
or go away; the alert keeps what it was raised as). ``version`` counts the changes of the row
and equals the ``seq`` of its newest history entry: the API's ETag, and the guard that keeps two
concurrent changes from both applying (an update names the version it read).
``soc_alert_events`` is the evidence: one row per event id, numbered in the order it arrived.
``soc_alert_history`` is append-only: creation, every joined signal and every triage change.

Times are UTC. ``first_seen`` / ``last_seen`` are event time (from the signals); the others are
wall-clock time of the store.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, DateTime, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base

__all__ = ["AlertEventRecord", "AlertHistoryRecord", "AlertRecord"]

STATUSES = ("open", "acknowledged", "closed")
CLOSE_REASONS = ("duplicate", "false_positive", "true_positive", "benign_positive", "other")
ACTIONS = (
    "created",
    "signal",
    "acknowledged",
    "closed",
    "reopened",
    "assigned",
    "unassigned",
    "commented",
)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class AlertRecord(Base):
    __tablename__ = "soc_alerts"
    __table_args__ = (
        CheckConstraint(_one_of("status", STATUSES), name="status"),
        CheckConstraint(_one_of("close_reason", CLOSE_REASONS), name="close_reason"),
        # The triage queue: by status, newest first.
        Index("ix_soc_alerts_status_created_at", "status", "created_at"),
        # Suppression: the open alert of a key whose window holds the signal's time.
        Index("ix_soc_alerts_suppression_hash_first_seen", "suppression_hash", "first_seen"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    rule_id: Mapped[str] = mapped_column(String(128), index=True)
    rule_name_en: Mapped[str] = mapped_column(String(300))
    rule_name_zh: Mapped[str] = mapped_column(String(300))
    severity: Mapped[str] = mapped_column(String(16))
    risk_score: Mapped[int] = mapped_column()
    technique: Mapped[str] = mapped_column(String(32))
    tactic: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    close_reason: Mapped[str | None] = mapped_column(String(32))
    assignee: Mapped[str | None] = mapped_column(String(200), index=True)
    suppression_hash: Mapped[str] = mapped_column(String(32))
    entity: Mapped[dict[str, str]] = mapped_column(JSON)
    reason_en: Mapped[str] = mapped_column(Text)
    reason_zh: Mapped[str] = mapped_column(Text)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The first response: set by the first acknowledgement, or by a close without one.
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    event_count: Mapped[int] = mapped_column()  # distinct evidence events
    signal_count: Mapped[int] = mapped_column()  # signals the alert took (1 at creation)
    incident_id: Mapped[str | None] = mapped_column(String(64), index=True)
    drill_id: Mapped[str | None] = mapped_column(String(64))
    version: Mapped[int] = mapped_column()

    # Every update names the version it read (UPDATE ... WHERE version = read): a concurrent
    # change makes it fail instead of being overwritten. The store sets the new version itself.
    __mapper_args__ = {"version_id_col": version, "version_id_generator": False}  # noqa: RUF012


class AlertEventRecord(Base):
    """One event of an alert's evidence."""

    __tablename__ = "soc_alert_events"

    alert_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("soc_alerts.id", ondelete="CASCADE"), primary_key=True
    )
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)
    seq: Mapped[int] = mapped_column()  # 1, 2, 3 ... in the alert, the order the events came in
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # when it was added


class AlertHistoryRecord(Base):
    """One change of an alert: who, when, what."""

    __tablename__ = "soc_alert_history"
    __table_args__ = (CheckConstraint(_one_of("action", ACTIONS), name="action"),)

    alert_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("soc_alerts.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)  # the alert's version after it
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(16))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str | None] = mapped_column(String(16))
    close_reason: Mapped[str | None] = mapped_column(String(32))
    assignee: Mapped[str | None] = mapped_column(String(200))  # given (assigned) or taken (unassigned)
    note: Mapped[str | None] = mapped_column(Text)
