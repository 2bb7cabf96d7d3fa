"""One run of a piece of work for all the callers that want it at the same moment.

A per-process cache in front of KV (sessions, risk scores) expires for every request at once:
without this, each request in flight at that moment reads the same key again, a burst of
identical round trips that grows with the load. :class:`SingleFlight` runs the read once per
key; the callers that arrive while it runs wait for the same result (or exception). The read
runs as a task of its own, so a caller that goes away (a client disconnect cancels its request)
neither cancels it for the others nor leaves them waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[V]] = {}

    def current(self, key: K) -> asyncio.Future[V] | None:
        """The run that a caller for ``key`` would join now (inside the work: whether it is
        still that run, ``current(key) is asyncio.current_task()``)."""
        return self._running.get(key)

    def forget(self, key: K) -> None:
        """Callers from now on start a new run; the one under way still answers its callers."""
        self._running.pop(key, None)

    async def run(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        """``work()``'s result, shared with every other caller for ``key`` while it runs."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._running[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: K, task: asyncio.Future[V]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # seen here: no "never retrieved" warning when every caller left
