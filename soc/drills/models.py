"""The drill tables: an exercise (window, red-team sources and accounts) and its test cases.

A test case's outcome is computed from the data when asked (events and alerts change as they
arrive); only an analyst's override is stored.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, CheckConstraint, DateTime, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base

__all__ = ["DrillCaseRecord", "DrillRecord"]

OUTCOMES = ("blocked", "alerted", "logged", "none")


class DrillRecord(Base):
    __tablename__ = "soc_drills"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # a slug: "2026-q4-red-team"
    name: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sources: Mapped[list[str]] = mapped_column(JSON)  # CIDRs of the red team
    accounts: Mapped[list[str]] = mapped_column(JSON)  # user names the red team uses
    detect_within_s: Mapped[int] = mapped_column()  # "Alerted" means an alert within this
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(200))


class DrillCaseRecord(Base):
    __tablename__ = "soc_drill_cases"
    __table_args__ = (
        CheckConstraint(
            "override IS NULL OR override IN ('blocked', 'alerted', 'logged', 'none')", name="override"
        ),
    )

    drill_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("soc_drills.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    technique: Mapped[str] = mapped_column(String(32))  # ATT&CK: "T1110.003"
    action: Mapped[str] = mapped_column(Text)  # what the red team plans to do
    source: Mapped[str | None] = mapped_column(String(64))  # the address it will come from
    account: Mapped[str | None] = mapped_column(String(200))  # the account it targets or uses
    executed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    override: Mapped[str | None] = mapped_column(String(16))
    override_note: Mapped[str | None] = mapped_column(Text)
    override_by: Mapped[str | None] = mapped_column(String(200))
