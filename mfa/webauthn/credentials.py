"""The registered credentials (``webauthn_credentials``): lookup for the ceremonies, insertion,
the signature counter, and their owner's management (list, rename, remove).

* **Credential binding.** A credential id is registered once across all users (``duplicate``,
  also under a race: the unique constraint decides).
* **The signature counter** (WebAuthn L3 §6.1.1): when the stored or the new counter is
  non-zero, the new one must be greater; otherwise the key may have been cloned (``counter``).
  It advances by a compare-and-set ``UPDATE``, so of two concurrent assertions with the same
  counter only one passes.
"""

from __future__ import annotations

import builtins
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from fido2 import cbor
from fido2.cose import CoseKey
from fido2.webauthn import (
    AuthenticatorData,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    PublicKeyCredentialType,
)
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.events import EventEmitter
from mfa.models import WebAuthnCredential
from mfa.webauthn.encoding import TRANSPORTS
from mfa.webauthn.events import emit_event
from mfa.webauthn.refusals import Refused
from mfa.webauthn.results import WebAuthnCredentialInfo, WebAuthnReason

__all__ = ["DEFAULT_NAME", "Credentials", "clean_name", "descriptor", "stored_key"]

DEFAULT_NAME = "通行密钥"
_NAME_MAX = 64


def clean_name(name: object) -> str:
    # A label only; drop control / format characters (right-to-left overrides) rather than fail.
    if not isinstance(name, str):
        return DEFAULT_NAME
    cleaned = "".join(ch for ch in name[: _NAME_MAX * 4] if unicodedata.category(ch)[0] != "C").strip()
    return cleaned[:_NAME_MAX] or DEFAULT_NAME


def stored_key(row: WebAuthnCredential) -> CoseKey:
    """The credential's public key as stored (COSE, §6.5.1); ValueError when it is not a COSE key."""
    data = cbor.decode(row.public_key)
    if not isinstance(data, Mapping):
        raise ValueError("not a COSE key")
    return CoseKey.parse(data)


def descriptor(row: WebAuthnCredential) -> PublicKeyCredentialDescriptor:
    """The credential as listed in ``excludeCredentials`` / ``allowCredentials`` (§5.8.3)."""
    transports = [AuthenticatorTransport(t) for t in row.transports.split() if t in TRANSPORTS]
    return PublicKeyCredentialDescriptor(
        type=PublicKeyCredentialType.PUBLIC_KEY, id=row.credential_id, transports=transports or None
    )


class Credentials:
    """The credential table through ``db_sessions``; ``events`` gets mfa-removed and mfa-reset."""

    def __init__(
        self,
        db_sessions: async_sessionmaker[Any],
        *,
        clock: Callable[[], float],
        events: EventEmitter | None,
    ) -> None:
        self._db = db_sessions
        self._clock = clock
        self._events = events

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def rows(self, user_id: int) -> Sequence[WebAuthnCredential]:
        """The user's credentials, oldest first."""
        async with self._db() as s:
            result = await s.execute(
                select(WebAuthnCredential)
                .where(WebAuthnCredential.user_id == user_id)
                .order_by(WebAuthnCredential.id)
            )
            rows: Sequence[WebAuthnCredential] = result.scalars().all()
        return rows

    async def find(self, credential_id: bytes) -> WebAuthnCredential | None:
        """The credential of this (raw) credential id, whoever owns it."""
        async with self._db() as s:
            row: WebAuthnCredential | None = (
                await s.execute(
                    select(WebAuthnCredential).where(WebAuthnCredential.credential_id == credential_id)
                )
            ).scalar_one_or_none()
        return row

    async def add(self, row: WebAuthnCredential) -> None:
        """Insert a new credential; refused (``duplicate``) when its id is registered already."""
        async with self._db() as s:
            taken = await s.execute(
                select(WebAuthnCredential.id).where(WebAuthnCredential.credential_id == row.credential_id)
            )
            if taken.first() is not None:
                raise Refused(WebAuthnReason.DUPLICATE)
        try:
            async with self._db() as s, s.begin():
                s.add(row)
        except IntegrityError:
            # A concurrent registration of the same credential id won the unique constraint. Any
            # other integrity error (no such user) is the caller's bug and is raised as it is.
            async with self._db() as s:
                taken = await s.execute(
                    select(WebAuthnCredential.id).where(WebAuthnCredential.credential_id == row.credential_id)
                )
                if taken.first() is not None:
                    raise Refused(WebAuthnReason.DUPLICATE) from None
            raise

    async def advance_counter(self, row: WebAuthnCredential, auth_data: AuthenticatorData) -> None:
        """§7.2 / §6.1.1: move the stored counter to the new one, or refuse a clone.

        A compare-and-set on the value read: if another assertion moved it meanwhile, read again
        and decide again, so two concurrent assertions with the same counter cannot both pass.
        """
        received = auth_data.counter
        stored = row.sign_count
        for _ in range(8):
            if (stored != 0 or received != 0) and received <= stored:
                raise Refused(WebAuthnReason.COUNTER, row, received=received, stored=stored)
            async with self._db() as s, s.begin():
                moved = await s.execute(
                    update(WebAuthnCredential)
                    .where(WebAuthnCredential.id == row.id, WebAuthnCredential.sign_count == stored)
                    .values(sign_count=received, backed_up=auth_data.is_backed_up(), last_used_at=self.now())
                    .execution_options(synchronize_session=False)
                )
                if moved.rowcount:
                    return
                current = (
                    await s.execute(
                        select(WebAuthnCredential.sign_count).where(WebAuthnCredential.id == row.id)
                    )
                ).scalar_one_or_none()
            if current is None:  # removed meanwhile
                raise Refused(WebAuthnReason.UNKNOWN_CREDENTIAL, row)
            stored = current
        raise Refused(WebAuthnReason.COUNTER, row, received=received, stored=stored)

    # -- management -------------------------------------------------------------------------

    async def is_enrolled(self, user_id: int) -> bool:
        async with self._db() as s:
            found = await s.execute(
                select(WebAuthnCredential.id).where(WebAuthnCredential.user_id == user_id).limit(1)
            )
            return found.first() is not None

    async def list(self, user_id: int) -> builtins.list[WebAuthnCredentialInfo]:
        """The user's credentials, oldest first."""
        return [
            WebAuthnCredentialInfo(
                id=r.id,
                name=r.name,
                created_at=r.created_at,
                last_used_at=r.last_used_at,
                discoverable=r.discoverable,
                backup_eligible=r.backup_eligible,
                aaguid=r.aaguid,
            )
            for r in await self.rows(user_id)
        ]

    async def rename(self, user_id: int, credential_id: int, name: str) -> bool:
        """Relabel one of the user's credentials; False when it is not theirs."""
        async with self._db() as s, s.begin():
            done = await s.execute(
                update(WebAuthnCredential)
                .where(WebAuthnCredential.id == credential_id, WebAuthnCredential.user_id == user_id)
                .values(name=clean_name(name))
                .execution_options(synchronize_session=False)
            )
        renamed = bool(done.rowcount)
        if renamed:
            emit_event(
                self._events, "mfa-renamed", success=True, user_id=user_id, credential_id=credential_id
            )
        return renamed

    async def remove(self, user_id: int, credential_id: int) -> bool:
        """Remove one of the user's credentials; False when there is no such credential of theirs.

        Whether the user may remove their last factor is the caller's policy decision. The
        authenticator keeps its copy; it simply no longer works here.
        """
        async with self._db() as s, s.begin():
            done = await s.execute(
                delete(WebAuthnCredential).where(
                    WebAuthnCredential.id == credential_id, WebAuthnCredential.user_id == user_id
                )
            )
        removed = bool(done.rowcount)
        if removed:
            emit_event(
                self._events, "mfa-removed", success=True, user_id=user_id, credential_id=credential_id
            )
        return removed

    async def remove_all(self, user_id: int, *, emit: bool = True) -> int:
        """Admin reset: remove every credential of the user; how many there were.

        ``emit=False`` when the caller reports the reset itself (``MfaServices.reset``)."""
        async with self._db() as s, s.begin():
            done = await s.execute(delete(WebAuthnCredential).where(WebAuthnCredential.user_id == user_id))
        count = int(done.rowcount)
        if emit:
            emit_event(self._events, "mfa-reset", success=True, user_id=user_id, onegate__mfa__removed=count)
        return count
