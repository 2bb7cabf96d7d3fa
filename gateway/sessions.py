"""Gateway sessions: who is signed in at one application host, in KV, read on every request.

A browser that finishes the OIDC sign-in at a host gets a session cookie for that host
(``<sid>.<secret>``; the store keeps only the SHA-256 of the secret, so a KV dump gives no
cookie). Every request reads its session afresh — that is what lets a revocation take effect
on the very next request — through a small in-process cache so the hot path does not wait on
Redis each time:

* an entry is used for at most :data:`CACHE_SECONDS` (1 s): with several gateway processes, a
  session revoked on one is refused on every other within that second even if the revocation
  message is lost;
* a revocation is also published on the KV channel :data:`REVOKED_CHANNEL`, and every process
  drops the entry at once when it arrives (:meth:`GatewaySessions.follow_revocations`).

Sessions are indexed by the IdP session they came from (``idp_sid``, the ID token's ``sid``)
and by the user (``sub``), so back-channel logout, an administrator or a SOC response can end
every gateway session of an IdP session or of a user. The idle timer is renewed at most once a
minute per session (one KV write), and a session never outlives ``absolute_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from core.flight import SingleFlight
from core.kv import KV, KVError
from core.logging import get_logger

__all__ = ["CACHE_SECONDS", "REVOKED_CHANNEL", "GatewaySession", "GatewaySessions", "digest"]

_log = get_logger("onegate.gateway.sessions")

CACHE_SECONDS = 1.0
REVOKED_CHANNEL = "gw:revoked"
_TOUCH_EVERY = 60.0
_CACHE_LIMIT = 100_000
_CAS_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class GatewaySession:
    sid: str  # public id: events, the assertion's ``sid``, revocation by an administrator
    host: str
    sub: str
    username: str
    name: str
    groups: tuple[str, ...]
    department: str | None
    departments: tuple[str, ...]
    roles: tuple[str, ...]
    acr: str
    amr: tuple[str, ...]
    auth_time: float
    idp_sid: str | None
    id_token: str  # the provider's ID token: the hint for a global logout
    created_at: float
    last_seen: float
    expires_at: float
    secret_hash: str
    ip: str = ""
    user_agent: str = ""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> GatewaySession:
        data: dict[str, Any] = json.loads(raw)
        for key in ("groups", "departments", "roles", "amr"):
            data[key] = tuple(data.get(key) or ())
        return cls(**data)


def digest(secret: str) -> str:
    """SHA-256 hex of a secret: what is stored in its place."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _key(sid: str) -> str:
    return f"gw:s:{sid}"


class GatewaySessions:
    """Create, read (cached for at most a second), renew and revoke gateway sessions."""

    def __init__(
        self,
        kv: KV,
        *,
        idle_timeout: float,
        absolute_timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kv = kv
        self._idle = idle_timeout
        self._absolute = absolute_timeout
        self._clock = clock
        self._cache: dict[str, tuple[float, GatewaySession]] = {}
        self._reads: SingleFlight[str, GatewaySession | None] = SingleFlight()
        self._follower: asyncio.Task[None] | None = None

    # -- creating ----------------------------------------------------------------------------

    async def create(
        self,
        *,
        host: str,
        sub: str,
        username: str,
        name: str,
        groups: Iterable[str],
        department: str | None,
        departments: Iterable[str],
        roles: Iterable[str] = (),
        acr: str,
        amr: Iterable[str],
        auth_time: float,
        idp_sid: str | None,
        id_token: str,
        ip: str = "",
        user_agent: str = "",
    ) -> tuple[GatewaySession, str]:
        """A new session for ``host`` and its cookie value (always a fresh id: no fixation)."""
        now = self._clock()
        secret = secrets.token_urlsafe(32)
        session = GatewaySession(
            sid=secrets.token_urlsafe(16),
            host=host,
            sub=sub,
            username=username,
            name=name,
            groups=tuple(groups),
            department=department,
            departments=tuple(departments),
            roles=tuple(roles),
            acr=acr,
            amr=tuple(amr),
            auth_time=auth_time,
            idp_sid=idp_sid,
            id_token=id_token,
            created_at=now,
            last_seen=now,
            expires_at=now + self._absolute,
            secret_hash=digest(secret),
            ip=ip[:64],
            user_agent=user_agent[:256],
        )
        await self._kv.set(_key(session.sid), session.to_json(), ttl=self._ttl(session, now))
        await self._index(f"gw:user:{sub}", add=session.sid)
        if idp_sid:
            await self._index(f"gw:idp:{idp_sid}", add=session.sid)
        return session, f"{session.sid}.{secret}"

    def _ttl(self, session: GatewaySession, now: float) -> float:
        return max(1.0, min(self._idle, session.expires_at - now))

    # -- reading -----------------------------------------------------------------------------

    async def from_cookie(self, cookie: str | None, host: str) -> GatewaySession | None:
        """The live session the cookie names, if its secret matches and it was made for
        ``host`` (a cookie carried to another host is worth nothing there)."""
        if not cookie or len(cookie) > 200:
            return None
        sid, dot, secret = cookie.partition(".")
        if not dot or not sid or not secret:
            return None
        session = await self.get(sid)
        if session is None or session.host != host:
            return None
        if not hmac.compare_digest(session.secret_hash, digest(secret)):
            return None
        return session

    def peek(self, cookie: str | None, host: str) -> GatewaySession | Literal[False] | None:
        """:meth:`from_cookie` answered from this process's cache alone; False when the store
        must be read (not cached within the last second, or due to be renewed)."""
        if not cookie or len(cookie) > 200:
            return None
        sid, dot, secret = cookie.partition(".")
        if not dot or not sid or not secret:
            return None
        cached = self._cache.get(sid)
        if cached is None:
            return False
        now = self._clock()
        session = cached[1]
        if (
            now - cached[0] >= CACHE_SECONDS
            or now >= session.expires_at
            or now - session.last_seen >= min(self._idle, _TOUCH_EVERY)
        ):
            return False
        if session.host != host or not hmac.compare_digest(session.secret_hash, digest(secret)):
            return None
        return session

    async def get(self, sid: str) -> GatewaySession | None:
        """The live session ``sid``: from the cache when read within the last second."""
        now = self._clock()
        cached = self._cache.get(sid)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            session: GatewaySession | None = cached[1]
        else:
            session = await self._reads.run(sid, lambda: self._read(sid, now))
        if session is None:
            return None
        if now >= session.expires_at or now - session.last_seen >= self._idle:
            self._cache.pop(sid, None)
            return None
        if now - session.last_seen >= _TOUCH_EVERY:
            session = await self._touch(session, now)
        return session

    async def _read(self, sid: str, now: float) -> GatewaySession | None:
        """Read ``sid`` from the store into the cache (once for all the requests that want it)."""
        raw = await self._kv.get(_key(sid)) if len(sid) <= 64 else None
        # A revocation that arrived while the store was read makes this read stale: answered to
        # the requests that were already waiting, never cached for the ones after it.
        current = self._reads.current(sid) is asyncio.current_task()
        if raw is None:
            if current:
                self._cache.pop(sid, None)
            return None
        session = GatewaySession.from_json(raw)
        if current:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[sid] = (now, session)
        return session

    def _drop(self, sid: str) -> None:
        """Forget ``sid`` here: the next request reads the store afresh."""
        self._cache.pop(sid, None)
        self._reads.forget(sid)

    async def _touch(self, session: GatewaySession, now: float) -> GatewaySession:
        touched = replace(session, last_seen=now)
        self._cache[session.sid] = (now, touched)
        try:
            await self._kv.set(_key(session.sid), touched.to_json(), ttl=self._ttl(touched, now))
        except KVError as e:  # the session stays valid until its stored timer runs out
            _log.warning("gateway session not renewed", sid=session.sid, error=str(e))
        return touched

    async def replace_identity(self, session: GatewaySession, **changes: Any) -> GatewaySession:
        """Store ``session`` with ``changes`` (e.g. a step-up's new acr); the cookie stays."""
        updated = replace(session, **changes)
        now = self._clock()
        await self._kv.set(_key(session.sid), updated.to_json(), ttl=self._ttl(updated, now))
        self._cache[session.sid] = (now, updated)
        return updated

    # -- revoking ----------------------------------------------------------------------------

    async def revoke(self, sid: str) -> GatewaySession | None:
        """End one session everywhere; the ended session, or None when there was none."""
        raw = await self._kv.get(_key(sid))
        await self._kv.delete(_key(sid))
        self._drop(sid)
        await self._announce([sid])
        if raw is None:
            return None
        session = GatewaySession.from_json(raw)
        await self._index(f"gw:user:{session.sub}", remove=session.sid)
        if session.idp_sid:
            await self._index(f"gw:idp:{session.idp_sid}", remove=session.sid)
        return session

    async def revoke_idp_session(self, idp_sid: str) -> list[GatewaySession]:
        """End every gateway session that came from one IdP session (back-channel logout)."""
        return await self._revoke_all(f"gw:idp:{idp_sid}")

    async def revoke_user(self, sub: str) -> list[GatewaySession]:
        """End every gateway session of a user (account locked, SOC response)."""
        return await self._revoke_all(f"gw:user:{sub}")

    async def _revoke_all(self, index: str) -> list[GatewaySession]:
        ended = []
        for sid in await self._members(index):
            session = await self.revoke(sid)
            if session is not None:
                ended.append(session)
        await self._kv.delete(index)
        return ended

    async def _announce(self, sids: list[str]) -> None:
        try:
            await self._kv.publish(REVOKED_CHANNEL, json.dumps(sids).encode())
        except KVError as e:  # the other processes' caches expire within a second anyway
            _log.warning("session revocation not published", error=str(e))

    async def follow_revocations(self) -> None:
        """Drop revoked sessions from this process's cache as the announcements arrive (runs
        until cancelled; a lost connection is subscribed again)."""
        while True:
            try:
                async with self._kv.subscribe(REVOKED_CHANNEL) as messages:
                    async for _channel, payload in messages:
                        with contextlib.suppress(ValueError, TypeError):
                            for sid in json.loads(payload):
                                self._drop(str(sid))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure of the channel: subscribe again
                _log.warning("revocation channel lost; subscribing again", error=str(e))
            await asyncio.sleep(1.0)

    def start(self) -> None:
        if self._follower is None:
            self._follower = asyncio.create_task(self.follow_revocations(), name="gateway-revocations")

    async def stop(self) -> None:
        task, self._follower = self._follower, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- indexes -----------------------------------------------------------------------------

    async def _members(self, index: str) -> list[str]:
        raw = await self._kv.get(index)
        return list(json.loads(raw)) if raw else []

    async def _index(self, index: str, *, add: str | None = None, remove: str | None = None) -> None:
        for _ in range(_CAS_ATTEMPTS):
            raw = await self._kv.get(index)
            members = [m for m in (json.loads(raw) if raw else []) if m != remove]
            # Keep the index short: drop members whose session has ended on its own.
            if add is not None:
                members = [m for m in members if await self._kv.get(_key(m)) is not None]
                members.append(add)
            new = json.dumps(members).encode() if members else None
            if await self._kv.compare_and_set(index, raw, new, ttl=self._absolute):
                return
        _log.warning("gateway session index not updated", index=index.split(":", 2)[1])
