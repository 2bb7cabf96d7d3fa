"""SSO sessions: server-side in the KV store, referenced by a host-only cookie.

The cookie holds ``<sid>.<secret>``: ``sid`` is the session's public id (the ``sid`` claim of
tokens, events, the SOC's revocation handle) and only a SHA-256 of the 256-bit ``secret`` is
stored, so neither the KV store nor an event reveals a usable cookie.

A session records who signed in, how (``amr``, ``acr``), when (``auth_time``), from where,
and which clients received tokens from it (for back-channel logout). It ends when idle for
``idle_timeout`` seconds, ``absolute_timeout`` seconds after sign-in, or when revoked — by
the user, an administrator or the SOC — which takes effect on the very next request, since
every request reads the session afresh.

Keys: ``sso:<sid>`` (the session, TTL = time left) and ``sso-user:<user_id>`` (the user's
session ids, for "sign out everywhere" and revocation per user). Revocations are also
published on the ``sessions.revoked`` channel for caches elsewhere (the gateway).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace

from core.kv import KV
from mfa.levels import acr_for, combine

__all__ = ["COOKIE_NAME", "REVOKED_CHANNEL", "SSOSession", "SessionStore"]

COOKIE_NAME = "onegate_sso"
REVOKED_CHANNEL = "sessions.revoked"
_CAS_ATTEMPTS = 20


@dataclass(frozen=True)
class SSOSession:
    sid: str
    user_id: int
    username: str
    auth_time: float
    amr: tuple[str, ...]
    acr: str
    created_at: float
    last_seen: float
    expires_at: float  # absolute end, whatever the activity
    ip: str = ""
    user_agent: str = ""
    clients: tuple[str, ...] = field(default=())
    secret_hash: str = ""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> SSOSession:
        data = json.loads(raw)
        data["amr"] = tuple(data["amr"])
        data["clients"] = tuple(data["clients"])
        return cls(**data)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class SessionStore:
    """Create, read (with idle-timeout renewal), list and revoke SSO sessions."""

    def __init__(
        self,
        kv: KV,
        *,
        idle_timeout: float,
        absolute_timeout: float,
        clock: Callable[[], float] = time.time,
        token_urlsafe: Callable[[int], str] = secrets.token_urlsafe,
    ) -> None:
        self._kv = kv
        self._idle = idle_timeout
        self._absolute = absolute_timeout
        self._clock = clock
        self._token = token_urlsafe

    def _ttl(self, session: SSOSession, now: float) -> float:
        return min(self._idle, session.expires_at - now)

    async def create(
        self,
        *,
        user_id: int,
        username: str,
        amr: tuple[str, ...],
        acr: str,
        ip: str = "",
        user_agent: str = "",
    ) -> tuple[SSOSession, str]:
        """A new session and its cookie value, both fresh (never reuse a pre-sign-in id: fixation)."""
        now = self._clock()
        secret = self._token(32)
        session = SSOSession(
            sid=self._token(16),
            user_id=user_id,
            username=username,
            auth_time=now,
            amr=amr,
            acr=acr,
            created_at=now,
            last_seen=now,
            expires_at=now + self._absolute,
            ip=ip[:64],
            user_agent=user_agent[:256],
            secret_hash=_digest(secret),
        )
        await self._kv.set(f"sso:{session.sid}", session.to_json(), ttl=self._ttl(session, now))
        await self._update_index(user_id, add=session.sid)
        return session, f"{session.sid}.{secret}"

    async def from_cookie(self, cookie: str | None, *, touch: bool = True) -> SSOSession | None:
        """The live session the cookie value names, if its secret matches."""
        if not cookie or len(cookie) > 256 or cookie.count(".") != 1:
            return None
        sid, secret = cookie.split(".")
        session = await self.get(sid, touch=False)
        if session is None or not hmac.compare_digest(session.secret_hash, _digest(secret)):
            return None
        return await self.get(sid, touch=touch) if touch else session

    async def get(self, sid: str | None, *, touch: bool = True) -> SSOSession | None:
        """The live session ``sid`` (by public id: for administrators and the SOC, never for a
        browser — browsers go through :meth:`from_cookie`); with ``touch`` its idle timer restarts."""
        if not sid or len(sid) > 128:
            return None
        raw = await self._kv.get(f"sso:{sid}")
        if raw is None:
            return None
        session = SSOSession.from_json(raw)
        now = self._clock()
        if now >= session.expires_at or now - session.last_seen >= self._idle:
            await self._kv.delete(f"sso:{sid}")
            return None
        if touch:
            session = replace(session, last_seen=now)
            # Best effort: a concurrent update (a client added) wins; the timer restarts next time.
            await self._kv.compare_and_set(f"sso:{sid}", raw, session.to_json(), ttl=self._ttl(session, now))
        return session

    async def upgrade(self, sid: str, methods: Iterable[str]) -> tuple[SSOSession, str] | None:
        """Step-up in place: add the methods of a further authentication to the session.

        ``amr`` becomes the union (``mfa.levels.combine``), ``acr`` is derived afresh from it and
        ``auth_time`` is now (an authentication just happened, which is what ``max_age`` asks
        about). The session keeps its ``sid`` (tokens and back-channel logout refer to it) but
        gets a new cookie secret: the privilege changed, so a cookie value seen before the
        step-up is worth nothing after it. None when the session has ended meanwhile.
        """
        for _ in range(_CAS_ATTEMPTS):
            raw = await self._kv.get(f"sso:{sid}")
            if raw is None:
                return None
            session = SSOSession.from_json(raw)
            now = self._clock()
            if now >= session.expires_at or now - session.last_seen >= self._idle:
                return None  # ended by a timeout: a step-up cannot revive it
            amr = combine(session.amr, methods)
            secret = self._token(32)
            updated = replace(
                session,
                amr=amr,
                acr=acr_for(amr),
                auth_time=now,
                last_seen=now,
                secret_hash=_digest(secret),
            )
            ttl = self._ttl(updated, now)
            if ttl <= 0:
                return None
            if await self._kv.compare_and_set(f"sso:{sid}", raw, updated.to_json(), ttl=ttl):
                return updated, f"{sid}.{secret}"
        return None

    async def add_client(self, sid: str, client_id: str) -> None:
        """Remember that ``client_id`` received tokens from this session (for back-channel logout)."""
        for _ in range(_CAS_ATTEMPTS):
            raw = await self._kv.get(f"sso:{sid}")
            if raw is None:
                return
            session = SSOSession.from_json(raw)
            if client_id in session.clients:
                return
            updated = replace(session, clients=(*session.clients, client_id))
            ttl = self._ttl(updated, self._clock())
            if ttl <= 0 or await self._kv.compare_and_set(f"sso:{sid}", raw, updated.to_json(), ttl=ttl):
                return

    async def list_for_user(self, user_id: int) -> list[SSOSession]:
        """The user's live sessions, newest first."""
        sessions = []
        for sid in await self._index(user_id):
            session = await self.get(sid, touch=False)
            if session is not None:
                sessions.append(session)
        return sorted(sessions, key=lambda s: s.created_at, reverse=True)

    async def revoke(self, sid: str) -> SSOSession | None:
        """End one session now; the session as it was, or None if it had already ended."""
        raw = await self._kv.get_and_delete(f"sso:{sid}")
        if raw is None:
            return None
        session = SSOSession.from_json(raw)
        await self._update_index(session.user_id, remove=sid)
        await self._kv.publish(REVOKED_CHANNEL, sid.encode())
        return session

    async def revoke_user(self, user_id: int) -> list[SSOSession]:
        """End every session of the user ("sign out everywhere", or the SOC's response action)."""
        ended = []
        for sid in await self._index(user_id):
            session = await self.revoke(sid)
            if session is not None:
                ended.append(session)
        await self._kv.delete(f"sso-user:{user_id}")
        return ended

    async def _index(self, user_id: int) -> list[str]:
        raw = await self._kv.get(f"sso-user:{user_id}")
        return list(json.loads(raw)) if raw else []

    async def _update_index(self, user_id: int, *, add: str | None = None, remove: str | None = None) -> None:
        key = f"sso-user:{user_id}"
        for _ in range(_CAS_ATTEMPTS):
            raw = await self._kv.get(key)
            sids = [s for s in (json.loads(raw) if raw else []) if s != remove]
            if add is not None:
                sids.append(add)
            # Drop ids whose sessions have ended, so the index does not grow without bound.
            live = [s for s in sids if s == add or await self._kv.get(f"sso:{s}") is not None]
            new = json.dumps(live).encode() if live else None
            ttl = self._absolute if new is not None else None
            if await self._kv.compare_and_set(key, raw, new, ttl=ttl):
                return
