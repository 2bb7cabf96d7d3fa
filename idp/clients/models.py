"""Client and consent tables."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Enum, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base

__all__ = ["AuthMethod", "Client", "ClientType", "Consent"]


def _now() -> datetime:
    return datetime.now(UTC)


def _enum(kind: type[enum.Enum]) -> Enum:
    return Enum(kind, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])


class ClientType(enum.StrEnum):
    CONFIDENTIAL = "confidential"
    PUBLIC = "public"


class AuthMethod(enum.StrEnum):
    """``token_endpoint_auth_method`` values (OIDC Core 1.0 section 9)."""

    CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105 - a method name, not a secret
    CLIENT_SECRET_POST = "client_secret_post"  # noqa: S105 - a method name, not a secret
    PRIVATE_KEY_JWT = "private_key_jwt"
    NONE = "none"


class Client(Base):
    __tablename__ = "clients"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str | None] = mapped_column(String(200))
    client_type: Mapped[ClientType] = mapped_column(_enum(ClientType))
    token_endpoint_auth_method: Mapped[AuthMethod] = mapped_column(_enum(AuthMethod))
    # Keyed SHA-256 of a 256-bit random secret (see DESIGN.md: argon2 is for low-entropy secrets).
    secret_hash: Mapped[str | None] = mapped_column(String(128))
    secret_rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    jwks: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # public keys for private_key_jwt
    jwks_uri: Mapped[str | None] = mapped_column(String(2000))
    redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list)
    post_logout_redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list)
    grant_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)  # the scopes it may ask for
    first_party: Mapped[bool] = mapped_column(default=False)  # consent is skipped
    require_pkce: Mapped[bool] = mapped_column(default=True)
    # The weakest authentication class (acr) a sign-in for this client must reach; None: any.
    minimum_acr: Mapped[str | None] = mapped_column(String(64))
    id_token_lifetime: Mapped[int | None]
    access_token_lifetime: Mapped[int | None]
    refresh_token_lifetime: Mapped[int | None]
    backchannel_logout_uri: Mapped[str | None] = mapped_column(String(2000))
    backchannel_logout_session_required: Mapped[bool] = mapped_column(default=True)
    description: Mapped[str | None] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class Consent(Base):
    """Scopes a user has allowed a (third-party) client to receive."""

    __tablename__ = "consents"
    __table_args__ = (UniqueConstraint("user_id", "client_pk"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    client_pk: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    granted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
