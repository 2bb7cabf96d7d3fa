"""MFA tables: TOTP credentials (encrypted seeds), recovery codes (argon2id hashes), WebAuthn credentials.

Users are referred to by ``users.id`` through a foreign key declared by table name, so
this package needs nothing from ``idp`` (``mfa`` sits left of ``idp``). Deleting a user
deletes their factors (``ON DELETE CASCADE``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base

__all__ = ["RecoveryCode", "TotpCredential", "WebAuthnCredential"]


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


class WebAuthnCredential(Base):
    """One WebAuthn authenticator (security key or passkey) registered by a user."""

    __tablename__ = "webauthn_credentials"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # The authenticator's credential id (raw bytes, at most 1023 per WebAuthn L3): unique across
    # all users, so one credential can never be bound to two accounts.
    credential_id: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    # The user handle given at registration (random, per user, no personal data): a passkey
    # sign-in without a username returns it and it must match the credential's owner.
    user_handle: Mapped[bytes] = mapped_column(LargeBinary, index=True)
    # The credential public key, COSE_Key CBOR-encoded as the authenticator returned it.
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    aaguid: Mapped[str] = mapped_column(String(36))  # authenticator model, UUID text
    name: Mapped[str] = mapped_column(String(64))
    transports: Mapped[str] = mapped_column(String(200), default="")  # space-separated hints
    discoverable: Mapped[bool] = mapped_column(default=False)  # a passkey (resident key)
    backup_eligible: Mapped[bool] = mapped_column(default=False)  # may be synced between devices
    backed_up: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
