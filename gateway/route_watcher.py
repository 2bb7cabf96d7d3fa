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
from core.kv.follow import ChannelFollower, end_if_cancelled
from gateway.route_store import CHANNEL, RouteStore
from gateway.routes import RouteTable

__all__ = ["RouteWatcher"]

log = structlog.get_logger("onegate.gateway.routes")


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
        self._on_change = on_change
        self._follower = ChannelFollower(kv, CHANNEL, self.refresh, poll=poll_interval, name="route-watcher")
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Load the newest routes, then follow the channel and poll."""
        await self.refresh()
        self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    async def refresh(self) -> bool:
        """Load the routes unless their revision is the one in use; True when the table changed.
        Never raises: a problem is logged and the table in use stays."""
        async with self._lock:
            try:
                if self.revision is not None and await self._store.revision() == self.revision:
                    return False
                revision, table, left_out = await self._store.table()
            except Exception as e:  # the database is away: the poll tries again
                end_if_cancelled(e)
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
