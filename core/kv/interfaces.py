"""The key-value store contract shared by the embedded and the Redis implementation.

Used for SSO sessions, one-time codes, refresh-token families, rate-limit counters,
revocations and cache invalidation. Values are bytes; callers encode their own JSON.
TTLs are in seconds (float); ``None`` means "no expiry".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

__all__ = ["KV", "KVError", "KVUnavailable", "Message", "Subscription"]


class KVError(Exception):
    """A key-value store operation failed."""


class KVUnavailable(KVError):
    """The store cannot be reached; the message is safe to show operators."""


Message = tuple[str, bytes]
"""A published message: (channel, payload)."""


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
