"""Consents: the scopes a user has allowed a (third-party) client to receive.

``/authorize`` asks :meth:`ConsentStore.granted` whether every requested scope is already
allowed (OIDC Core 1.0 §3.1.2.4: the OP obtains consent "unless a prior consent ... was
established"); when it is not, the consent page shows the request and, on Allow, calls
:meth:`ConsentStore.grant`. First-party clients never need a consent (the client's
``first_party`` flag, checked by the protocol side). A user withdraws a consent from the
account page (:meth:`ConsentStore.revoke`); the next authorization request asks again.

One row per (user, client) in the ``consents`` table; granting more scopes later widens the
row (union), it never narrows it: narrowing is a revoke followed by a new grant.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from idp.clients.models import Client, Consent

__all__ = ["ConsentStore", "GrantedConsent"]

# A concurrent first grant for the same (user, client) hits the unique constraint; the retry
# then finds the row and widens it.
_GRANT_ATTEMPTS = 3


@dataclass(frozen=True)
class GrantedConsent:
    """One consent of a user, with what the account page shows about the client."""

    client_pk: int
    client_id: str
    client_name: str
    client_name_en: str | None
    scopes: frozenset[str]
    granted_at: datetime


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes for timezone-aware columns; they were written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class ConsentStore:
    """Read, widen and withdraw consents. Every method runs in a transaction of its own."""

    def __init__(self, db: async_sessionmaker[Any], *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        # Read-widen-write must not interleave. PostgreSQL gets SELECT ... FOR UPDATE; SQLite
        # ignores that, and its driver only opens the transaction at the first write, so the
        # embedded deployment (one server process) is serialised here.
        self._grant_lock = asyncio.Lock()

    async def granted(self, user_id: int, client_pk: int) -> frozenset[str]:
        """The scopes ``user_id`` has allowed client ``client_pk`` (empty: no consent)."""
        async with self._db() as s:
            scopes = (
                await s.execute(
                    select(Consent.scopes).where(Consent.user_id == user_id, Consent.client_pk == client_pk)
                )
            ).scalar_one_or_none()
        return frozenset(scopes or ())

    async def grant(self, user_id: int, client_pk: int, scopes: Iterable[str]) -> frozenset[str]:
        """Allow ``scopes`` in addition to those already allowed; returns the whole set now allowed."""
        wanted = frozenset(scopes)
        now = datetime.fromtimestamp(self._clock(), UTC)
        for attempt in range(_GRANT_ATTEMPTS):
            try:
                async with self._grant_lock, self._db() as s, s.begin():
                    # FOR UPDATE: two widenings at once must not both start from the same old set.
                    # (Another process may still insert first: the retry below then widens.)
                    row: Consent | None = (
                        await s.execute(
                            select(Consent)
                            .where(Consent.user_id == user_id, Consent.client_pk == client_pk)
                            .with_for_update()
                        )
                    ).scalar_one_or_none()
                    if row is None:
                        allowed = wanted
                        s.add(
                            Consent(
                                user_id=user_id, client_pk=client_pk, scopes=sorted(allowed), granted_at=now
                            )
                        )
                    else:
                        allowed = wanted | frozenset(row.scopes)
                        row.scopes = sorted(allowed)
                        row.granted_at = now
                return allowed
            except IntegrityError:
                if attempt == _GRANT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def revoke(self, user_id: int, client_pk: int) -> bool:
        """Withdraw the consent; True when there was one."""
        async with self._db() as s, s.begin():
            result = await s.execute(
                delete(Consent).where(Consent.user_id == user_id, Consent.client_pk == client_pk)
            )
        return bool(getattr(result, "rowcount", 0))

    async def list_for_user(self, user_id: int) -> list[GrantedConsent]:
        """Every consent of ``user_id``, most recent first, with the client's names."""
        async with self._db() as s:
            rows = await s.execute(
                select(Consent, Client)
                .join(Client, Client.id == Consent.client_pk)
                .where(Consent.user_id == user_id)
                .order_by(Consent.granted_at.desc(), Consent.id.desc())
            )
            return [
                GrantedConsent(
                    client_pk=client.id,
                    client_id=client.client_id,
                    client_name=client.name,
                    client_name_en=client.name_en,
                    scopes=frozenset(consent.scopes),
                    granted_at=_utc(consent.granted_at),
                )
                for consent, client in rows
            ]
