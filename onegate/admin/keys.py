"""Admin API keys: made and revoked on the command line, presented as bearer tokens.

A key reads ``oga_<id>_<secret>``: ``id`` is 12 hex digits, public, and names the key (the
database looks it up, logs and events may show it); ``secret`` is 32 random bytes, URL-safe
base64. Only ``HMAC-SHA256(key, id, secret)`` is stored, keyed with the keyvault secret
``admin-api-key-mac``: the secret has 256 bits of entropy, so a keyed hash is enough (DESIGN.md)
and a copied database row does not give the key. The comparison is constant-time
(``hmac.compare_digest``), and an unknown id costs the same hash and comparison as a known one.

A check gives a :class:`KeyCheck`: the key, or why it was refused (:class:`KeyRefusal`). The
caller (the admin API) answers 401 and emits ``admin-api-key-refused``; making and revoking a
key emit ``admin-api-key-created`` / ``admin-api-key-revoked`` here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.events import Category, Event, EventEmitter, Outcome
from keyvault import SecretStore
from onegate.admin.models import AdminApiKey

__all__ = [
    "KEY_PREFIX",
    "MAC_SECRET_NAME",
    "AdminKey",
    "AdminKeyError",
    "AdminKeys",
    "KeyCheck",
    "KeyRefusal",
]

KEY_PREFIX = "oga_"
MAC_SECRET_NAME = "admin-api-key-mac"  # noqa: S105 - the name of a keyvault secret
_KEY = re.compile(r"oga_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,100}")
_DUMMY = "0" * 64
# last_used_at is written at most this often per key (not a write per request).
_TOUCH_EVERY = timedelta(seconds=60)


class KeyRefusal(StrEnum):
    """Why a presented key was refused (logged and in the event, never told to the caller)."""

    MISSING = "missing"
    MALFORMED = "malformed"
    UNKNOWN = "unknown"
    MISMATCH = "mismatch"
    REVOKED = "revoked"
    EXPIRED = "expired"


class AdminKeyError(Exception):
    """A key operation that cannot be done; the message is for the operator (en / zh)."""


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class AdminKey:
    id: str
    name: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, row: AdminApiKey) -> AdminKey:
        return cls(
            id=row.id,
            name=row.name,
            created_at=_utc(row.created_at) or datetime.now(UTC),
            created_by=row.created_by,
            expires_at=_utc(row.expires_at),
            revoked_at=_utc(row.revoked_at),
            revoked_by=row.revoked_by,
            last_used_at=_utc(row.last_used_at),
        )

    def state(self, now: datetime) -> str:
        """``active``, ``revoked`` or ``expired``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    @property
    def actor(self) -> str:
        """How changes made with this key are recorded (``updated_by``, ``labels.actor``)."""
        return f"api-key:{self.name}"

    def as_dict(self, now: datetime) -> dict[str, Any]:
        def when(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "id": self.id,
            "name": self.name,
            "state": self.state(now),
            "created_at": when(self.created_at),
            "created_by": self.created_by,
            "expires_at": when(self.expires_at),
            "revoked_at": when(self.revoked_at),
            "revoked_by": self.revoked_by,
            "last_used_at": when(self.last_used_at),
        }


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """The outcome of checking a presented key: ``key`` when accepted, else ``refusal``;
    ``key_id`` is the id part when one could be read (for the event)."""

    key: AdminKey | None
    refusal: KeyRefusal | None
    key_id: str | None = None


class AdminKeys:
    """The stored keys. ``secrets_store``: the keyvault's secrets (the MAC key lives there)."""

    def __init__(
        self,
        sessions: async_sessionmaker[Any],
        secrets_store: SecretStore,
        events: EventEmitter,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._sessions = sessions
        self._secrets = secrets_store
        self._events = events
        self._clock = clock
        self._token_bytes = token_bytes
        self._key: bytes | None = None

    def __repr__(self) -> str:
        return "AdminKeys()"

    def _mac(self, key_id: str, secret: str) -> str:
        if self._key is None:
            self._key = self._secrets.get_or_create(MAC_SECRET_NAME)
        # The id is bound in, so a digest copied onto another key's row does not verify there.
        message = b"onegate admin api key v1\x00" + key_id.encode() + b"\x00" + secret.encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    # -- the command line ----------------------------------------------------------------------

    async def create(
        self, name: str, *, actor: str, expires_in: timedelta | None = None
    ) -> tuple[AdminKey, str]:
        """Make a key called ``name``: the record and the key itself (shown once, stored nowhere)."""
        name = name.strip()
        if not _NAME.fullmatch(name):
            raise AdminKeyError(
                "a key name is 1 to 100 printable characters / 密钥名称须为 1 至 100 个可打印字符"
            )
        if expires_in is not None and expires_in <= timedelta(0):
            raise AdminKeyError("the lifetime must be positive / 有效期须为正数")
        key_id = self._token_bytes(6).hex()
        secret = base64.urlsafe_b64encode(self._token_bytes(32)).rstrip(b"=").decode()
        now = self._clock()
        row = AdminApiKey(
            id=key_id,
            name=name,
            digest=self._mac(key_id, secret),
            created_at=now,
            created_by=actor[:200],
            expires_at=now + expires_in if expires_in is not None else None,
        )
        async with self._sessions() as s, s.begin():
            s.add(row)
        key = AdminKey.of(row)
        self._event("admin-api-key-created", ["creation"], key, actor)
        return key, f"{KEY_PREFIX}{key_id}_{secret}"

    async def all(self) -> list[AdminKey]:
        """Every key, revoked ones too, oldest first."""
        async with self._sessions() as s:
            rows = await s.scalars(select(AdminApiKey).order_by(AdminApiKey.created_at, AdminApiKey.id))
            return [AdminKey.of(row) for row in rows]

    async def revoke(self, which: str, *, actor: str) -> AdminKey:
        """Revoke the key with id ``which`` (or the one active key named ``which``); it is refused
        from the next request on. Revoking a revoked key changes nothing."""
        async with self._sessions() as s, s.begin():
            row = await s.get(AdminApiKey, which)
            if row is None:
                named = list(
                    await s.scalars(
                        select(AdminApiKey).where(AdminApiKey.name == which, AdminApiKey.revoked_at.is_(None))
                    )
                )
                if len(named) > 1:
                    raise AdminKeyError(
                        f"{len(named)} active keys are named {which!r}: give the id / "
                        "有多个同名密钥，请给出 id"
                    )
                if not named:
                    raise AdminKeyError(f"no key {which!r} / 没有密钥 {which!r}")
                row = named[0]
            if row.revoked_at is not None:
                return AdminKey.of(row)
            row.revoked_at, row.revoked_by = self._clock(), actor[:200]
            key = AdminKey.of(row)
        self._event("admin-api-key-revoked", ["deletion"], key, actor)
        return key

    # -- the API -------------------------------------------------------------------------------

    async def check(self, presented: str | None) -> KeyCheck:
        """Check a presented key (the bearer token). Constant time in the secret: the digest is
        computed and compared whether or not the id is known."""
        if not presented:
            return KeyCheck(None, KeyRefusal.MISSING)
        match = _KEY.fullmatch(presented)
        if match is None:
            return KeyCheck(None, KeyRefusal.MALFORMED)
        key_id, secret = match.group(1), match.group(2)
        async with self._sessions() as s:
            row = await s.get(AdminApiKey, key_id)
        expected = row.digest if row is not None else _DUMMY
        if not hmac.compare_digest(self._mac(key_id, secret).encode(), expected.encode()) or row is None:
            return KeyCheck(None, KeyRefusal.UNKNOWN if row is None else KeyRefusal.MISMATCH, key_id)
        key = AdminKey.of(row)
        now = self._clock()
        state = key.state(now)
        if state != "active":
            return KeyCheck(None, KeyRefusal.REVOKED if state == "revoked" else KeyRefusal.EXPIRED, key_id)
        if key.last_used_at is None or now - key.last_used_at >= _TOUCH_EVERY:
            async with self._sessions() as s, s.begin():
                await s.execute(update(AdminApiKey).where(AdminApiKey.id == key_id).values(last_used_at=now))
        return KeyCheck(key, None, key_id)

    def _event(self, action: str, types: list[str], key: AdminKey, actor: str) -> None:
        self._events.emit(
            Event(
                action=action,
                category=Category.IAM,
                outcome=Outcome.SUCCESS,
                dataset="onegate.admin",
                fields={
                    "event.type": types,
                    "labels.actor": actor[:200],
                    "onegate.admin.key_id": key.id,
                    "onegate.admin.key_name": key.name,
                },
            )
        )
