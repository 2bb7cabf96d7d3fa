"""MFA tables: TOTP credentials (encrypted seeds) and recovery codes (argon2id hashes).

Users are referred to by ``users.id`` through a foreign key declared by table name, so
this package needs nothing from ``idp`` (``mfa`` sits left of ``idp``). Deleting a user
deletes their factors (``ON DELETE CASCADE``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base

__all__ = ["RecoveryCode", "TotpCredential"]


def _now() -> datetime:
    return datetime.now(UTC)


class TotpCredential(Base):
    """One authenticator app of a user (RFC 6238 TOTP)."""

    __tablename__ = "totp_credentials"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # A label the user chose ("手机" / "Phone"), shown when listing factors.
    name: Mapped[str] = mapped_column(String(64))
    # The seed, envelope-encrypted (keyvault) with aad "mfa/totp/user:<user_id>/credential:<id>",
    # so a blob copied into another row or user does not decrypt.
    secret_enc: Mapped[bytes] = mapped_column(LargeBinary)
    # The highest time step ever accepted for the user (kept equal on all of the user's rows):
    # a code whose step is at or below it is a replay (RFC 6238 §5.2).
    last_used_step: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RecoveryCode(Base):
    """One single-use recovery code; only its argon2id hash is kept."""

    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    # Set once, atomically (UPDATE ... WHERE used_at IS NULL); a used code never works again.
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
