"""The stored versions of the policy bundle (append-only: the newest row is the active one)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base

__all__ = ["PolicyVersion"]


def _now() -> datetime:
    return datetime.now(UTC)


class PolicyVersion(Base):
    __tablename__ = "policy_versions"

    id: Mapped[int] = mapped_column(primary_key=True)  # the version number
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    author: Mapped[str] = mapped_column(String(200))
    comment: Mapped[str] = mapped_column(String(1000), default="")
    action: Mapped[str] = mapped_column(String(16))  # apply | rollback
    based_on: Mapped[int | None] = mapped_column()  # the version a rollback restored
    text: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(64))
