"""Users' risk scores as the policy sees them (``min_risk`` / ``max_risk`` conditions).

The SOC raises a user's score (a response action, or a detection's risk score) with
:meth:`RiskScores.set`; every gateway process reads it on the user's next request and the
policy decides again — a step-up or a deny, as the rules say. Scores live in KV under
``risk:user:<username>`` with an expiry (a raised score decays back to 0 when it ends), and are
cached in-process for at most :data:`CACHE_SECONDS`, like sessions.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from core.flight import SingleFlight
from core.kv import KV, KVError
from core.logging import get_logger

__all__ = ["CACHE_SECONDS", "RiskScores"]

_log = get_logger("onegate.gateway.risk")
CACHE_SECONDS = 1.0
_CACHE_LIMIT = 100_000


def _key(username: str) -> str:
    return f"risk:user:{username}"


class RiskScores:
    def __init__(self, kv: KV, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._kv = kv
        self._clock = clock
        self._cache: dict[str, tuple[float, int]] = {}
        self._reads: SingleFlight[str, int] = SingleFlight()

    def cached(self, username: str) -> int | None:
        """The score as read within the last second, or None (then :meth:`score` reads it)."""
        cached = self._cache.get(username)
        if cached is not None and self._clock() - cached[0] < CACHE_SECONDS:
            return cached[1]
        return None

    async def score(self, username: str) -> int:
        """The user's current score, 0-100 (0 when none is set). A store that cannot be read
        gives 100: fail closed, the policy's risk ceilings then refuse."""
        now = self._clock()
        cached = self._cache.get(username)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        return await self._reads.run(username, lambda: self._read(username, now))

    async def _read(self, username: str, now: float) -> int:
        """Read a score from the store into the cache (once for all the requests that want it)."""
        try:
            raw = await self._kv.get(_key(username))
        except KVError as e:
            _log.warning("risk score unreadable; treating it as the highest", error=str(e))
            return 100
        value = 0
        if raw is not None:
            try:
                value = max(0, min(100, int(raw)))
            except ValueError:
                value = 100
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[username] = (now, value)
        return value

    async def set(self, username: str, score: int, *, ttl: float | None = 86400.0) -> None:
        """Set a user's score (0-100) for ``ttl`` seconds; 0 removes it."""
        if not 0 <= score <= 100:
            raise ValueError("a risk score is 0-100")
        if score == 0:
            await self._kv.delete(_key(username))
        else:
            await self._kv.set(_key(username), str(score).encode(), ttl=ttl)
        self._cache.pop(username, None)
