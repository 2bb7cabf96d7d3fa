"""Tell the IdP processes that a deployment-owned client changed, so that they drop it from
their client cache at once instead of after its time-to-live.

The gateway changes its own registration at run time (its redirect URIs follow the routed hosts,
onegate.gateway_app); the IdP caches clients for a few seconds (idp.clients.services), so a sign-in
on a newly routed host could be refused meanwhile. After such a change the gateway publishes the
client id on the KV channel ``idp:clients:changed``; every IdP process follows it
(:class:`ClientCacheFollower`). Publish-subscribe is best effort: a lost message only means the
cache entry lives out its time-to-live.
"""

from __future__ import annotations

import asyncio
import contextlib

from core.kv import KV, KVError
from core.kv.follow import RESUBSCRIBE_AFTER, end_if_cancelled
from core.logging import get_logger
from idp.clients.services import ClientRegistry

__all__ = ["CHANNEL", "ClientCacheFollower", "announce"]

_log = get_logger("onegate.clients")

CHANNEL = "idp:clients:changed"


async def announce(kv: KV, client_id: str) -> None:
    """Publish that ``client_id`` changed (never raises)."""
    try:
        await kv.publish(CHANNEL, client_id.encode())
    except KVError as e:
        _log.warning("client change not published; IdP caches expire on their own", error=str(e))


class ClientCacheFollower:
    """Drops a client from ``registry``'s cache whenever its change is announced."""

    def __init__(self, registry: ClientRegistry, kv: KV) -> None:
        self._registry = registry
        self._kv = kv
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="client-cache-follower")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _follow(self) -> None:
        while True:
            try:
                async with self._kv.subscribe(CHANNEL) as subscription:
                    self.listening.set()
                    async for _channel, message in subscription:
                        self._registry.invalidate(message.decode("utf-8", "replace"))
            except Exception as e:  # Redis away: the cache's own time-to-live still applies
                end_if_cancelled(e)
                self.listening.clear()
                _log.warning("client change channel lost; subscribing again", error=str(e))
            await asyncio.sleep(RESUBSCRIBE_AFTER)
