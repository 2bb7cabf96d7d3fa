"""Every gateway process on the newest routes: :class:`RouteWatcher` follows the route store.

After a change the store publishes the new revision on the KV channel ``gateway:routes:changed``;
the watcher then builds a fresh table from the configuration and the added routes
(:meth:`RouteStore.table <gateway.route_store.RouteStore.table>`) and hands it to ``on_change``,
which swaps it into the gateway in one assignment: a request sees the old table or the new one,
never a mix. Publish-subscribe is not durable (a message sent while the watcher reconnects is
lost, and Redis may be down), so the watcher also reads the revision (a one-row query) every
``poll_interval`` seconds, whatever the state of the channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from core.kv import KV
from gateway.route_store import CHANNEL, RouteStore
from gateway.routes import RouteTable

__all__ = ["RouteWatcher"]

log = structlog.get_logger("onegate.gateway.routes")

# A lost channel is subscribed again after this long (the poll keeps reloading meanwhile).
_RESUBSCRIBE_AFTER = 1.0


def _end_if_cancelled(error: Exception) -> None:
    """Re-raise the cancellation of the current task when a client replaced it by an error of its
    own while cleaning up (redis-py does): a watcher being stopped must end."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from error


class RouteWatcher:
    """Keeps :attr:`table` on the newest revision of the routes and calls ``on_change`` with
    each new table (the gateway swaps it in). Until the store answers, the table is the
    configured routes alone; a store that cannot be read leaves the table in use."""

    def __init__(
        self,
        store: RouteStore,
        kv: KV,
        *,
        poll_interval: float = 5.0,
        on_change: Callable[[RouteTable], None] | None = None,
    ) -> None:
        self.table: RouteTable = store.config_table
        self.revision: int | None = None
        self._store = store
        self._kv = kv
        self._poll = poll_interval
        self._on_change = on_change
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Load the newest routes, then follow the channel and poll."""
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._listen(), name="route-watcher-listen"),
            asyncio.create_task(self._poll_loop(), name="route-watcher-poll"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def refresh(self) -> bool:
        """Load the routes unless their revision is the one in use; True when the table changed.
        Never raises: a problem is logged and the table in use stays."""
        async with self._lock:
            try:
                if self.revision is not None and await self._store.revision() == self.revision:
                    return False
                revision, table, left_out = await self._store.table()
            except Exception as e:  # the database is away: the poll tries again
                _end_if_cancelled(e)
                log.warning("gateway routes unreadable; keeping the routes in use", error=str(e))
                return False
            for app, why in left_out:
                log.warning("added gateway route left out", app=app, reason=why, revision=revision)
            self.table, self.revision = table, revision
        log.info("gateway routes loaded", revision=revision, hosts=len(table.hosts()))
        if self._on_change is not None:
            try:
                self._on_change(table)
            except Exception as e:
                log.error("gateway route reload callback failed", error=str(e))
        return True

    async def _listen(self) -> None:
        while True:
            try:
                async with self._kv.subscribe(CHANNEL) as subscription:
                    await self.refresh()  # a change made while (re)subscribing
                    while True:
                        if await subscription.get(timeout=self._poll) is not None:
                            await self.refresh()
            except Exception as e:  # KVUnavailable (Redis away), or the connection's own errors
                _end_if_cancelled(e)
                log.warning("gateway route channel lost; polling until it is back", error=str(e))
            await asyncio.sleep(_RESUBSCRIBE_AFTER)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            await self.refresh()
