"""The embedded key-value store: one process, no dependency, the default for small sites.

Operations never await between reading and writing, so each one is atomic with respect
to other coroutines of the same event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from core.kv.interfaces import WINDOW_BUCKETS, Message, WindowCount

__all__ = ["MemoryKV"]

# Expired keys are removed lazily on access and by a sweep every this many writes.
_SWEEP_EVERY = 1024


class _QueueSubscription:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            yield await self.queue.get()

    async def get(self, timeout: float | None = None) -> Message | None:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None


class MemoryKV:
    """In-process implementation of :class:`core.kv.KV`."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._subscribers: dict[str, set[_QueueSubscription]] = {}
        self._writes = 0
        # Windows: key -> (member or bucket -> time or amount, wall-clock expiry).
        self._windows: dict[str, tuple[dict[str, float], float]] = {}
        self._sums: dict[str, tuple[dict[int, int], float]] = {}

    def __repr__(self) -> str:
        return f"MemoryKV(keys={len(self._data)})"

    def _live(self, key: str) -> tuple[bytes, float | None] | None:
        item = self._data.get(key)
        if item is not None and item[1] is not None and item[1] <= self._clock():
            del self._data[key]
            return None
        return item

    def _expiry(self, ttl: float | None) -> float | None:
        if ttl is None:
            return None
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        return self._clock() + ttl

    def _write(self, key: str, value: bytes, expires: float | None) -> None:
        if not isinstance(value, bytes):
            raise TypeError("values are bytes")
        self._data[key] = (value, expires)
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            now = self._clock()
            for k in [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]:
                del self._data[k]

    async def get(self, key: str) -> bytes | None:
        item = self._live(key)
        return None if item is None else item[0]

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        if only_if_absent and self._live(key) is not None:
            return False
        self._write(key, value, self._expiry(ttl))
        return True

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        item = self._live(key)
        current, expires = (0, None) if item is None else (int(item[0]), item[1])
        if expires is None:
            expires = self._expiry(ttl)
        self._write(key, str(current + amount).encode(), expires)
        return current + amount

    async def delete(self, *keys: str) -> int:
        removed = 0
        for key in keys:
            if self._live(key) is not None:
                del self._data[key]
                removed += 1
        return removed

    async def get_and_delete(self, key: str) -> bytes | None:
        item = self._live(key)
        if item is None:
            return None
        del self._data[key]
        return item[0]

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None, *, ttl: float | None = None
    ) -> bool:
        item = self._live(key)
        current = None if item is None else item[0]
        if current != expected:
            return False
        if new is None:
            self._data.pop(key, None)
        else:
            self._write(key, new, self._expiry(ttl))
        return True

    async def ttl(self, key: str) -> float | None:
        item = self._live(key)
        if item is None or item[1] is None:
            return None
        return item[1] - self._clock()

    def _sweep_windows(self) -> None:
        now = self._clock()
        for table in (self._windows, self._sums):
            for key in [k for k, (_, expires) in table.items() if expires <= now]:
                del table[key]

    async def window_add(self, key: str, member: str | None, *, at: float, span: float) -> WindowCount:
        if span <= 0:
            raise ValueError("span must be positive")
        if member == "":
            raise ValueError("a window member is a non-empty string")
        held = self._windows.get(key)
        members = {} if held is None or held[1] <= self._clock() else held[0]
        start = at - span
        new = False
        if member is not None:
            previous = members.get(member)
            new = previous is None or previous < start
            if previous is None or previous < at:
                members[member] = at
            self._writes += 1
            if self._writes % _SWEEP_EVERY == 0:
                self._sweep_windows()
            self._windows[key] = (members, self._clock() + span)
        for old in [m for m, seen in members.items() if seen < start]:
            del members[old]
        return WindowCount(len(members), new)

    async def window_members(self, key: str, *, at: float, span: float, limit: int = 100) -> list[str]:
        held = self._windows.get(key)
        if held is None or held[1] <= self._clock() or limit < 1:
            return []
        start = at - span
        inside = sorted((seen, member) for member, seen in held[0].items() if start <= seen <= at)
        return [member for _, member in inside[-limit:]]

    async def window_sum(self, key: str, amount: int, *, at: float, span: float) -> int:
        if span <= 0:
            raise ValueError("span must be positive")
        width = span / WINDOW_BUCKETS
        held = self._sums.get(key)
        buckets = {} if held is None or held[1] <= self._clock() else held[0]
        if amount:
            bucket = int(at // width)
            buckets[bucket] = buckets.get(bucket, 0) + amount
            self._sums[key] = (buckets, self._clock() + span)
        first = int((at - span) // width)
        for old in [b for b in buckets if b < first]:
            del buckets[old]
        last = int(at // width)
        return sum(amount for bucket, amount in buckets.items() if bucket <= last)

    async def publish(self, channel: str, message: bytes) -> int:
        subscribers = self._subscribers.get(channel, set())
        for subscription in subscribers:
            subscription.queue.put_nowait((channel, message))
        return len(subscribers)

    @asynccontextmanager
    async def subscribe(self, *channels: str) -> AsyncIterator[_QueueSubscription]:
        subscription = _QueueSubscription()
        for channel in channels:
            self._subscribers.setdefault(channel, set()).add(subscription)
        try:
            yield subscription
        finally:
            for channel in channels:
                self._subscribers[channel].discard(subscription)
                if not self._subscribers[channel]:
                    del self._subscribers[channel]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
