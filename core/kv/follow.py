"""Keep a process's copy of shared state current: :class:`ChannelFollower` calls ``refresh``
whenever a change is announced on a KV channel, and every ``poll`` seconds whatever the state of
the channel — publish-subscribe is not durable (a message sent while the follower reconnects is
lost, and Redis may be down), so the poll bounds how stale the copy can get.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from core.kv.interfaces import KV

__all__ = ["RESUBSCRIBE_AFTER", "ChannelFollower", "end_if_cancelled"]

log = structlog.get_logger("onegate.kv")

# A lost channel is subscribed again after this long (the poll keeps refreshing meanwhile).
RESUBSCRIBE_AFTER = 1.0


def end_if_cancelled(error: Exception) -> None:
    """Re-raise the cancellation of the current task when a client replaced it by an error of
    its own while cleaning up (redis-py does, failing to unsubscribe from a lost connection):
    a follower being stopped must end, whatever state Redis or the database is in."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from error


class ChannelFollower:
    """Runs ``refresh`` on every message on ``channel`` (and once after each (re)subscription,
    for a change made meanwhile) and every ``poll`` seconds. ``refresh`` must not raise."""

    def __init__(
        self, kv: KV, channel: str, refresh: Callable[[], Awaitable[object]], *, poll: float, name: str
    ) -> None:
        self._kv = kv
        self._channel = channel
        self._refresh = refresh
        self._poll = poll
        self._name = name
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name=f"{self._name}-listen"),
            asyncio.create_task(self._poll_loop(), name=f"{self._name}-poll"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _listen(self) -> None:
        while True:
            try:
                async with self._kv.subscribe(self._channel) as subscription:
                    await self._refresh()  # a change made while (re)subscribing
                    while True:
                        if await subscription.get(timeout=self._poll) is not None:
                            await self._refresh()
            except Exception as e:  # KVUnavailable (Redis away), or the connection's own errors
                end_if_cancelled(e)
                log.warning(
                    "change channel lost; polling until it is back", channel=self._channel, error=str(e)
                )
            await asyncio.sleep(RESUBSCRIBE_AFTER)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            await self._refresh()
