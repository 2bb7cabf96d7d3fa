"""The incident tables: an incident, the entities it is about, and its history.

``soc_incident_entities`` holds one row per entity key (``user.name=wangfang``,
``source.ip=203.0.113.7`` ...) with the event time it was last seen in one of the incident's
alerts: a new alert joins the open incident that shares a key seen within the linking window.
Alerts point at their incident (``soc_alerts.incident_id``). Times are UTC.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base

__all__ = ["IncidentEntityRecord", "IncidentHistoryRecord", "IncidentRecord"]

STATUSES = ("open", "contained", "resolved", "merged")
ACTIONS = (
    "created",
    "alert-linked",
    "alert-unlinked",
    "merged",
    "status",
    "assigned",
    "commented",
    "response",
)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class IncidentRecord(Base):
    __tablename__ = "soc_incidents"
    __table_args__ = (
        CheckConstraint(_one_of("status", STATUSES), name="status"),
        Index("ix_soc_incidents_status_created_at", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    title_en: Mapped[str] = mapped_column(String(500))
    title_zh: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))
    risk_score: Mapped[int] = mapped_column()
    assignee: Mapped[str | None] = mapped_column(String(200))
    drill_id: Mapped[str | None] = mapped_column(String(64), index=True)
    merged_into: Mapped[str | None] = mapped_column(String(32))
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # earliest evidence (event time)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    detected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # first alert raised
    responded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # first response action
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    alert_count: Mapped[int] = mapped_column()
    version: Mapped[int] = mapped_column()


class IncidentEntityRecord(Base):
    __tablename__ = "soc_incident_entities"
    __table_args__ = (Index("ix_soc_incident_entities_key_last_seen", "key", "last_seen"),)

    incident_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("soc_incidents.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(300), primary_key=True)  # "source.ip=203.0.113.7"
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class IncidentHistoryRecord(Base):
    __tablename__ = "soc_incident_history"
    __table_args__ = (CheckConstraint(_one_of("action", ACTIONS), name="action"),)

    incident_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("soc_incidents.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(16))
    alert_id: Mapped[str | None] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str | None] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
