"""Sign-in transactions: the password was right, a second factor is still owed.

``POST /login`` makes no SSO session for a user who has a second factor or needs one; it keeps
a *sign-in transaction* in the KV store instead (``mfa-login:<id>``, five minutes): the user,
the methods proved so far (``("pwd",)``), the pending authorization request's id, the address
and the browser. The browser holds ``<id>.<secret>`` in the host-only, HttpOnly, SameSite=Lax
cookie ``onegate_mfa`` (``__Host-onegate_mfa`` on https); only a SHA-256 of the 256-bit secret
is stored, as for SSO sessions (``idp.sessions``), so neither the store nor a log line holds a
usable cookie, and a transaction id seen elsewhere (an event, a URL) is worth nothing without it.

A transaction is single use: :meth:`TransactionStore.finish` takes it out of the store
atomically (``get_and_delete``), so of two concurrent completions (a code in one tab, a passkey
in another) exactly one makes a session, and a completed transaction cannot be replayed.
Methods proved on the way (a code before a passkey is set up) are added with a compare-and-set.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace

from starlette.requests import HTTPConnection
from starlette.responses import Response

from core.kv import KV
from mfa.levels import combine

__all__ = ["COOKIE_NAME", "TRANSACTION_TTL", "SignInTransaction", "TransactionStore"]

COOKIE_NAME = "onegate_mfa"
TRANSACTION_TTL = 300.0  # five minutes: long enough to find the phone, short for a stolen cookie
_CAS_ATTEMPTS = 20
_COOKIE_MAX = 256


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class SignInTransaction:
    """A sign-in waiting for its second factor (see the module docstring)."""

    id: str
    user_id: int
    methods: tuple[str, ...]  # RFC 8176 amr values proved so far, e.g. ("pwd",)
    req: str | None  # the pending authorization request to resume, as it was at /login
    ip: str
    user_agent: str
    created_at: float
    secret_hash: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> SignInTransaction:
        data = json.loads(raw)
        data["methods"] = tuple(data["methods"])
        return cls(**data)


class TransactionStore:
    """Begin, read (by cookie), extend and finish sign-in transactions."""

    def __init__(
        self,
        kv: KV,
        *,
        https: bool,
        ttl: float = TRANSACTION_TTL,
        clock: Callable[[], float] = time.time,
        token_urlsafe: Callable[[int], str] = secrets.token_urlsafe,
    ) -> None:
        self._kv = kv
        self._https = https
        self._ttl = ttl
        self._clock = clock
        self._token = token_urlsafe

    @staticmethod
    def _key(transaction_id: str) -> str:
        return f"mfa-login:{transaction_id}"

    @property
    def cookie_name(self) -> str:
        # As for the SSO cookie: __Host- makes browsers insist on Secure, host-only and Path=/.
        return f"__Host-{COOKIE_NAME}" if self._https else COOKIE_NAME

    async def begin(
        self,
        *,
        user_id: int,
        methods: Iterable[str],
        req: str | None,
        ip: str,
        user_agent: str,
    ) -> tuple[SignInTransaction, str]:
        """A new transaction and its cookie value."""
        secret = self._token(32)
        transaction = SignInTransaction(
            id=self._token(16),
            user_id=user_id,
            methods=combine(methods),
            req=req,
            ip=ip[:64],
            user_agent=user_agent[:256],
            created_at=self._clock(),
            secret_hash=_digest(secret),
        )
        await self._kv.set(self._key(transaction.id), transaction.to_json(), ttl=self._ttl)
        return transaction, f"{transaction.id}.{secret}"

    async def from_cookie(self, cookie: str | None) -> SignInTransaction | None:
        """The live transaction the cookie value names, if its secret matches."""
        if not cookie or len(cookie) > _COOKIE_MAX or cookie.count(".") != 1:
            return None
        transaction_id, secret = cookie.split(".")
        if not transaction_id or not secret:
            return None
        raw = await self._kv.get(self._key(transaction_id))
        if raw is None:
            return None
        transaction = SignInTransaction.from_json(raw)
        if not hmac.compare_digest(transaction.secret_hash, _digest(secret)):
            return None
        return transaction

    async def of(self, connection: HTTPConnection) -> SignInTransaction | None:
        """The browser's live transaction, or None."""
        return await self.from_cookie(connection.cookies.get(self.cookie_name))

    async def add_methods(
        self, transaction: SignInTransaction, methods: Iterable[str]
    ) -> SignInTransaction | None:
        """Record further methods proved (keeping the time left); None when the transaction is over."""
        key = self._key(transaction.id)
        added = tuple(methods)
        for _ in range(_CAS_ATTEMPTS):
            raw = await self._kv.get(key)
            if raw is None:
                return None
            current = SignInTransaction.from_json(raw)
            if current.secret_hash != transaction.secret_hash:
                return None
            updated = replace(current, methods=combine(current.methods, added))
            left = await self._kv.ttl(key)
            ttl = left if left is not None else self._ttl
            if ttl <= 0:
                return None
            if await self._kv.compare_and_set(key, raw, updated.to_json(), ttl=ttl):
                return updated
        return None

    async def finish(self, transaction: SignInTransaction) -> SignInTransaction | None:
        """Take the transaction out of the store (single use); None when it is already over."""
        raw = await self._kv.get_and_delete(self._key(transaction.id))
        if raw is None:
            return None
        current = SignInTransaction.from_json(raw)
        if current.secret_hash != transaction.secret_hash:  # not the browser's: put nothing back
            return None
        return current

    async def discard(self, transaction: SignInTransaction) -> None:
        await self._kv.delete(self._key(transaction.id))

    def set_cookie(self, response: Response, value: str) -> None:
        response.set_cookie(
            self.cookie_name,
            value,
            max_age=math.ceil(self._ttl),
            path="/",
            secure=self._https,
            httponly=True,
            samesite="lax",
        )

    def clear_cookie(self, response: Response) -> None:
        response.delete_cookie(self.cookie_name, path="/", secure=self._https, httponly=True, samesite="lax")
