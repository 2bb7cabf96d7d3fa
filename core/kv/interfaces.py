"""The key-value store contract shared by the embedded and the Redis implementation.

Used for SSO sessions, one-time codes, refresh-token families, rate-limit counters,
revocations and cache invalidation. Values are bytes; callers encode their own JSON.
TTLs are in seconds (float); ``None`` means "no expiry".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["KV", "KVError", "KVUnavailable", "Message", "Subscription", "WindowCount"]

WINDOW_BUCKETS = 16
"""A summing window (:meth:`KV.window_sum`) keeps this many buckets per span."""


class KVError(Exception):
    """A key-value store operation failed."""


class KVUnavailable(KVError):
    """The store cannot be reached; the message is safe to show operators."""


Message = tuple[str, bytes]
"""A published message: (channel, payload)."""


@dataclass(frozen=True, slots=True)
class WindowCount:
    """What :meth:`KV.window_add` left: ``count`` distinct members in the window, and whether
    the member added was ``new`` to it (absent, or last seen before the window began)."""

    count: int
    new: bool


@runtime_checkable
class Subscription(Protocol):
    """Messages on the subscribed channels, in publication order, from subscription on."""

    def __aiter__(self) -> AsyncIterator[Message]: ...

    async def get(self, timeout: float | None = None) -> Message | None:
        """The next message, or None when ``timeout`` seconds pass without one."""
        ...


@runtime_checkable
class KV(Protocol):
    """Async key-value store with TTLs, atomic one-time reads, CAS and pub/sub."""

    async def get(self, key: str) -> bytes | None:
        """The value, or None when absent or expired."""
        ...

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        """Store ``value``; with ``only_if_absent`` only when the key does not exist. True if stored."""
        ...

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Add ``amount`` (creating the key at 0) and return the new value.

        ``ttl`` is applied only when the key has no expiry yet (a fixed window that starts
        with the first increment, as rate limits need); later increments do not extend it.
        """
        ...

    async def delete(self, *keys: str) -> int:
        """Remove the keys; the number that existed."""
        ...

    async def get_and_delete(self, key: str) -> bytes | None:
        """Atomically read and remove: of two concurrent callers only one gets the value."""
        ...

    async def compare_and_set(
        self, key: str, expected: bytes | None, new: bytes | None, *, ttl: float | None = None
    ) -> bool:
        """Atomically replace the value when it equals ``expected`` (None: key absent).

        ``new`` None deletes the key. True when the swap happened.
        """
        ...

    async def ttl(self, key: str) -> float | None:
        """Seconds left before the key expires; None when absent or without expiry."""
        ...

    async def window_add(self, key: str, member: str | None, *, at: float, span: float) -> WindowCount:
        """A sliding window of distinct members over *event* time (detections count failures per
        account, accounts per address, addresses per session ...).

        Puts ``member`` in the window at time ``at`` (a member already there keeps the later of
        its two times), forgets members older than ``at - span`` and answers how many are left.
        ``member`` None only counts. The key expires ``span`` seconds (wall clock) after the
        last add. Atomic.
        """
        ...

    async def window_members(self, key: str, *, at: float, span: float, limit: int = 100) -> list[str]:
        """The members of the sliding window ``key`` within ``[at - span, at]``, most recent last,
        at most ``limit`` of them (the most recent): what a detection lists as its evidence."""
        ...

    async def window_sum(self, key: str, amount: int, *, at: float, span: float) -> int:
        """The sum of the amounts added over ``[at - span, at]`` (event time), ``amount`` included.

        Kept in :data:`WINDOW_BUCKETS` buckets per span, so an amount counts until its bucket
        leaves the window (up to a bucket's width late). ``amount`` 0 only sums. Atomic.
        """
        ...

    async def publish(self, channel: str, message: bytes) -> int:
        """Send ``message`` to current subscribers of ``channel``; the number reached (best effort)."""
        ...

    def subscribe(self, *channels: str) -> AbstractAsyncContextManager[Subscription]:
        """Subscribe; inside the context every later publication to ``channels`` is received."""
        ...

    async def ping(self) -> None:
        """Raise :class:`KVUnavailable` unless the store answers."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
