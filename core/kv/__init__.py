"""Key-value store: one contract (:class:`KV`), an embedded and a Redis implementation."""

from __future__ import annotations

from core.kv.interfaces import KV, KVError, KVUnavailable, Message, Subscription, WindowCount
from core.kv.memory import MemoryKV
from core.kv.redis import RedisKV
from core.settings import KVSettings

__all__ = [
    "KV",
    "KVError",
    "KVUnavailable",
    "MemoryKV",
    "Message",
    "RedisKV",
    "Subscription",
    "WindowCount",
    "open_kv",
]


def open_kv(settings: KVSettings) -> KV:
    """The store the settings name (not yet connected: call ``ping`` to check it)."""
    if settings.backend == "redis":
        return RedisKV(settings.url, prefix=settings.prefix, connect_timeout=settings.connect_timeout)
    return MemoryKV()
