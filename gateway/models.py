"""The routes added at run time (the admin API, ``onegate gateway routes``) and their history.

``gateway_routes`` holds one row per application; ``gateway_route_changes`` is append-only: every
creation, update and removal is a row saying who, when, what it was before and what it became.
Its numbers (1, 2, 3 ... without gaps) are the revision of the whole set of routes that every
gateway process watches (gateway.route_store).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, String
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base

__all__ = ["RouteChangeRecord", "RouteRecord"]


def _now() -> datetime:
    return datetime.now(UTC)


class RouteRecord(Base):
    __tablename__ = "gateway_routes"

    app: Mapped[str] = mapped_column(String(64), primary_key=True)
    hosts: Mapped[list[str]] = mapped_column(JSON)
    upstream: Mapped[str | None] = mapped_column(String(300))
    path_prefix: Mapped[str] = mapped_column(String(1000))
    preserve_host: Mapped[bool] = mapped_column(Boolean)
    connect_timeout: Mapped[float] = mapped_column(Float)
    read_timeout: Mapped[float] = mapped_column(Float)
    enabled: Mapped[bool] = mapped_column(Boolean)
    revision: Mapped[int] = mapped_column()  # 1 at creation, +1 per update (the API's ETag)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    created_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_by: Mapped[str] = mapped_column(String(200))


class RouteChangeRecord(Base):
    __tablename__ = "gateway_route_changes"

    id: Mapped[int] = mapped_column(primary_key=True)  # the revision of the whole set of routes
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(16))  # create | update | remove
    app: Mapped[str] = mapped_column(String(64), index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the route's settings, or None
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    comment: Mapped[str] = mapped_column(String(1000), default="")
