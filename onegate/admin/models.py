"""Admin API keys: who may call the admin API (``onegate admin api-keys``).

Only a keyed hash of each key is stored (onegate.admin.keys); the key itself is shown once, when
it is made. A revoked key keeps its row, so the record of who made and revoked it stays.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base

__all__ = ["AdminApiKey"]


def _now() -> datetime:
    return datetime.now(UTC)


class AdminApiKey(Base):
    __tablename__ = "admin_api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the key's public id part
    name: Mapped[str] = mapped_column(String(100))
    digest: Mapped[str] = mapped_column(String(64))  # HMAC-SHA256 of the secret part, hex
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    created_by: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_by: Mapped[str | None] = mapped_column(String(200))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
