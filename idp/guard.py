"""Sign-in guard: per-account progressive lockout and per-source-address throttling.

Two independent brakes on password guessing (OWASP Authentication Cheat Sheet, "Protect
against automated attacks"; NIST SP 800-63B §5.2.2 "Rate Limiting (Throttling)"):

* **Per account** — failed sign-ins in a row are counted in the KV store
  (``login-fail:<user id>``, a window of ``lockout_seconds`` from the first failure). The
  ``lockout_threshold``-th failure locks the account: ``users.locked_until`` is set to
  ``now + lockout_seconds * 2**lockout_count`` (capped at ``lockout_max_seconds``) and
  ``users.lockout_count`` goes up by one, both in the database, so a restart keeps the lock
  and an administrator's ``onegate user unlock`` (another process) lifts it. While
  ``locked_until`` is in the future a sign-in fails even with the right password. A success
  clears the failure counter but not ``lockout_count``: the doubling would otherwise restart
  every time the owner signs in between two attacks. ``lockout_count`` *decays* instead: a
  lockout that starts more than ``lockout_decay_seconds`` (default one day) after the previous
  one ended starts again from ``lockout_seconds``. Automatic lockout never touches
  ``users.status`` (``locked`` there is an administrator's lock, lifted only by one).
* **Per source address** — sign-in attempts from one address (an IPv6 address counts with
  its whole /64, which one host can rotate through at will) are counted per
  ``ip_throttle_window``, whatever the username, known or not, so rotating usernames does
  not help. Each attempt is counted *before* its password is checked and given back when it
  succeeds, so the count is "failures plus attempts in flight": parallel requests cannot
  all pass a check made before they are counted. Beyond ``ip_throttle_limit`` every attempt
  from there is refused before any password is checked, until the window ends;
  ``ip-throttled`` is emitted once per window. A success gives back only its own attempt,
  never the earlier failures (one valid account must not launder a password spray).

Decisions are values (:class:`GuardDecision`), never exceptions; the caller turns them into
the one generic failure message (or a 429 for a throttled address).
"""

from __future__ import annotations

import enum
import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.events import EventEmitter
from core.kv import KV
from core.settings import IdpSettings
from idp.directory.models import User
from idp.events import auth_event

if TYPE_CHECKING:
    from idp.context import IdpContext

__all__ = ["LOCKOUT_DECAY_SECONDS", "GuardDecision", "GuardReason", "LoginGuard"]

LOCKOUT_DECAY_SECONDS = 86400
_IPV6_PREFIX = 64


class GuardReason(enum.StrEnum):
    """Why the guard refused (the ``onegate.reason`` of the ``user-login`` failure event)."""

    THROTTLED = "throttled"
    LOCKED = "locked"


@dataclass(frozen=True)
class GuardDecision:
    """The guard's verdict. ``retry_after``: whole seconds until it may change (0 when allowed)."""

    allowed: bool
    reason: GuardReason | None = None
    retry_after: int = 0
    locked_now: bool = False  # this failure locked the account

    @property
    def refused(self) -> bool:
        return not self.allowed


ALLOW = GuardDecision(allowed=True)


def source_key(ip: str) -> str:
    """The throttling key of an address: IPv4 as is, IPv6 by its /64 network."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:64] or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is the IPv4 address a.b.c.d
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, _IPV6_PREFIX), strict=False))
    return str(address)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes for timezone-aware columns; they were written in UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _event_ip(ip: str) -> str | None:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return None


class LoginGuard:
    """Counts failed sign-ins and decides whether an attempt may be checked at all."""

    def __init__(
        self,
        *,
        kv: KV,
        db: async_sessionmaker[Any],
        settings: IdpSettings,
        events: EventEmitter,
        clock: Callable[[], float] = time.time,
        lockout_decay_seconds: float = LOCKOUT_DECAY_SECONDS,
    ) -> None:
        self._kv = kv
        self._db = db
        self._settings = settings
        self._events = events
        self._clock = clock
        self._decay = lockout_decay_seconds

    @classmethod
    def for_context(cls, ctx: IdpContext) -> LoginGuard:
        """The guard over the context's KV store, database, settings, events and clock."""
        return cls(kv=ctx.kv, db=ctx.db, settings=ctx.settings, events=ctx.events, clock=ctx.clock)

    # -- per source address ------------------------------------------------------------------

    async def begin_attempt(self, ip: str, *, username: str | None = None) -> GuardDecision:
        """Count a sign-in attempt from ``ip`` before any password is checked.

        The attempt is counted up front and given back by :meth:`record_success`, so
        concurrent attempts cannot all slip under the limit between check and count: at most
        ``ip_throttle_limit`` attempts per window are failures or in flight. Refused
        (``throttled``) once that is exceeded; the first refusal of a window emits
        ``ip-throttled``. ``username`` (as typed) only goes into that event.
        """
        window = self._settings.ip_throttle_window
        key = f"login-ip:{source_key(ip)}"
        count = await self._kv.incr(key, ttl=window)
        limit = self._settings.ip_throttle_limit
        if count <= limit:
            return ALLOW
        if count == limit + 1:  # exactly one attempt sees this count: one event per window
            labels: dict[str, Any] = {"labels__last_username": username[:64]} if username else {}
            self._events.emit(
                auth_event(
                    "ip-throttled",
                    success=True,
                    reason="too_many_failures",
                    source_ip=_event_ip(ip),
                    labels__source_key=source_key(ip),
                    labels__limit=str(limit),
                    labels__window_seconds=str(window),
                    **labels,
                )
            )
        left = await self._kv.ttl(key)
        retry_after = max(1, math.ceil(left if left is not None else window))
        return GuardDecision(allowed=False, reason=GuardReason.THROTTLED, retry_after=retry_after)

    # -- per account -------------------------------------------------------------------------

    def check_account(self, user: User) -> GuardDecision:
        """Refuse (``locked``) while the automatic lockout of ``user`` lasts (its row as just read)."""
        locked_until = _utc(user.locked_until)
        if locked_until is None:
            return ALLOW
        left = locked_until.timestamp() - self._clock()
        if left <= 0:
            return ALLOW
        return GuardDecision(allowed=False, reason=GuardReason.LOCKED, retry_after=math.ceil(left))

    async def record_failure(self, *, ip: str, user: User | None) -> GuardDecision:
        """Count a failed password against ``user`` (the attempt from ``ip`` is already counted
        by :meth:`begin_attempt`). Pass ``user=None`` for attempts that must not count against
        an account: unknown usernames, disabled accounts, and attempts refused for a lockout
        already in force (counting those would let an attacker stretch it). The decision says
        whether this very failure locked the account (``locked_now``)."""
        if user is None:
            return ALLOW
        key = f"login-fail:{user.id}"
        failures = await self._kv.incr(key, ttl=self._settings.lockout_seconds)
        # Exactly one failure sees the threshold (the increment is atomic), so a burst of
        # parallel failures locks once; the counter starts again after the lockout.
        if failures != self._settings.lockout_threshold:
            return ALLOW
        await self._kv.delete(key)
        return await self._lock(user, ip)

    async def record_success(self, *, ip: str, user: User) -> None:
        """A sign-in succeeded: its attempt is given back to the address, and the account's
        failures in a row start again from zero (``lockout_count`` stays: module docs)."""
        # Should the window have ended meanwhile, this starts the next one at -1: one spare
        # attempt at most, cheaper than a read-modify-write loop on every success.
        await self._kv.incr(f"login-ip:{source_key(ip)}", -1, ttl=self._settings.ip_throttle_window)
        await self._kv.delete(f"login-fail:{user.id}")

    async def _lock(self, user: User, ip: str) -> GuardDecision:
        settings = self._settings
        now = self._clock()
        async with self._db() as s, s.begin():
            row: User | None = (
                await s.execute(select(User).where(User.id == user.id).with_for_update())
            ).scalar_one_or_none()
            if row is None:  # deleted meanwhile: nothing to lock
                return ALLOW
            previous_end = _utc(row.locked_until)
            if previous_end is not None and previous_end.timestamp() > now:
                # Already locked (a concurrent failure got here first): one lockout, not two.
                left = math.ceil(previous_end.timestamp() - now)
                return GuardDecision(allowed=False, reason=GuardReason.LOCKED, retry_after=left)
            count = row.lockout_count
            if previous_end is not None and now - previous_end.timestamp() > self._decay:
                count = 0  # a quiet day since the last lockout ended: start over (module docs)
            seconds = min(settings.lockout_seconds * 2**count, settings.lockout_max_seconds)
            row.locked_until = datetime.fromtimestamp(now + seconds, UTC)
            row.lockout_count = count + 1
        self._events.emit(
            auth_event(
                "user-locked",
                success=True,
                reason="too_many_failures",
                username=user.username,
                user_id=user.id,
                source_ip=_event_ip(ip),
                labels__lockout_seconds=str(seconds),
                labels__lockout_count=str(count + 1),
            )
        )
        return GuardDecision(allowed=False, reason=GuardReason.LOCKED, retry_after=seconds, locked_now=True)
