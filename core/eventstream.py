"""The producer side of the event transport between processes: events onto a Redis stream.

When the gateway, the IdP and the SOC run as separate processes (DESIGN.md, "event transport"),
each producer puts its events on one Redis stream and the SOC reads them with a consumer group
(``soc.sources.streams``). This module is in ``core`` so that any process can publish without
importing ``soc``::

    publisher = StreamPublisher(settings.kv.url, prefix=settings.kv.prefix)
    bus.subscribe_batch("stream", publisher.publish)

The stream layout (a contract with the consumer and with custom producers): the key is
``<prefix><stream>`` (``onegate:events`` by default), and each entry has one field, ``event``,
holding the event's flat ECS JSON (:meth:`core.events.Event.flat`, UTF-8). The stream is
trimmed to about ``maxlen`` entries (``MAXLEN ~``, https://redis.io/commands/xadd): an entry
older than that which the SOC has not read yet is gone, so ``maxlen`` bounds how long the SOC
may be away.

Where events go when Redis is down: :meth:`StreamPublisher.publish` raises
:class:`StreamUnavailable`; the bus retries the batch once and then hands every event of it to
its ``on_failure`` callback, which the role processes point at a :class:`FallbackFile` (one JSON
line per event, flushed to disk); :meth:`FallbackFile.replay` publishes the file once Redis is
back — nothing is dropped.
A batch that failed half-way may be partly on the stream already; the retry adds those entries
again, and the SOC stores each ``event.id`` once. Redis itself keeps an acknowledged entry
across its own crash only with ``appendonly yes`` (``appendfsync always`` for every write;
``everysec`` may lose the last second).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.events import Event
from core.kv.interfaces import KVError, KVUnavailable

__all__ = [
    "DEFAULT_MAXLEN",
    "DEFAULT_STREAM",
    "FIELD",
    "FallbackFile",
    "StreamError",
    "StreamPublisher",
    "StreamUnavailable",
]

DEFAULT_STREAM = "onegate:events"
DEFAULT_MAXLEN = 1_000_000
FIELD = "event"
"""The one field of a stream entry: the event's flat ECS JSON."""


class StreamError(KVError):
    """Redis refused a stream command (a wrong type at the key, out of memory ...)."""


class StreamUnavailable(StreamError, KVUnavailable):
    """Redis cannot be reached; the message names the server (never its password)."""


def _where(url: str | None) -> str:
    return "redis" if url is None else f"redis at {url.rpartition('@')[2]}"


def encode(document: dict[str, Any]) -> bytes:
    """An entry's ``event`` value: compact JSON, UTF-8, no NaN (the consumer's parser refuses it)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class StreamPublisher:
    """Publishes events to ``<prefix><stream>``; an :class:`~core.events.EventBus` batch subscriber.

    ``redis`` is a URL (the publisher then owns the connection pool and :meth:`close` releases it)
    or a ``redis.asyncio.Redis`` client shared with other code (left open)."""

    def __init__(
        self,
        redis: str | aioredis.Redis,
        *,
        stream: str = DEFAULT_STREAM,
        prefix: str = "",
        maxlen: int | None = DEFAULT_MAXLEN,
        connect_timeout: float = 5.0,
    ) -> None:
        if maxlen is not None and maxlen < 1:
            raise ValueError("maxlen must be at least 1 (or None for no trimming)")
        if isinstance(redis, str):
            self._url: str | None = redis
            self._client = aioredis.Redis.from_url(
                redis,
                socket_connect_timeout=connect_timeout,
                socket_timeout=connect_timeout,
                health_check_interval=30,
            )
            self._owned = True
        else:
            self._url = None
            self._client = redis
            self._owned = False
        self.key = prefix + stream
        self._maxlen = maxlen
        self.published = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"StreamPublisher({_where(self._url)!r}, key={self.key!r})"

    async def publish(self, events: Sequence[Event]) -> None:
        """Append ``events`` in order, one entry each, in one round trip. Returns once Redis has
        them; raises :class:`StreamUnavailable` (or :class:`StreamError`) otherwise."""
        await self.publish_documents([event.flat() for event in events])

    async def publish_documents(self, documents: Sequence[dict[str, Any]]) -> list[str]:
        """Append flat ECS documents (a custom producer's, or replayed ones); their entry ids."""
        if not documents:
            return []
        pipe = self._client.pipeline(transaction=False)
        for document in documents:
            pipe.xadd(
                self.key,
                {FIELD: encode(document)},
                maxlen=self._maxlen,
                approximate=True,  # trim whole radix-tree nodes: cheap, and never below maxlen
            )
        try:
            ids = await pipe.execute(raise_on_error=True)
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            self.failures += 1
            raise StreamUnavailable(
                f"{_where(self._url)} is unreachable; {len(documents)} events not published: {e}"
            ) from e
        except RedisError as e:
            self.failures += 1
            raise StreamError(f"{_where(self._url)} refused XADD to {self.key!r}: {e}") from e
        finally:
            await pipe.reset()  # type: ignore[no-untyped-call]
        self.published += len(documents)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def ping(self) -> None:
        """Raise :class:`StreamUnavailable` unless Redis answers (for ``/readyz``)."""
        try:
            await self._client.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            raise StreamUnavailable(f"{_where(self._url)} is unreachable: {e}") from e

    async def close(self) -> None:
        if self._owned:
            await self._client.aclose()


class FallbackFile:
    """Events a publisher could not hand to Redis, kept on disk until it can.

    :meth:`keep` appends the event's flat JSON as one line and flushes it to disk (an outage is
    rare; durability matters more than speed then). :meth:`replay` publishes what the file
    holds and removes it: the file is first renamed, so events kept during a replay start a new
    file, and a replay cut short by a crash is published again at the next one (the SOC stores
    each ``event.id`` once)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._replaying = self.path.with_name(self.path.name + ".replaying")
        self.kept = 0

    def keep(self, event: Event) -> None:
        line = encode(event.flat()) + b"\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as out:
            if out.tell():  # after a line cut short by a crash, start a new one
                out.seek(-1, os.SEEK_END)
                if out.read(1) != b"\n":
                    out.write(b"\n")
            out.write(line)
            out.flush()
            os.fsync(out.fileno())
        self.kept += 1

    @property
    def pending(self) -> bool:
        return self.path.exists() or self._replaying.exists()

    async def replay(self, publisher: StreamPublisher, *, batch: int = 500) -> int:
        """Publish the kept events, oldest first; how many. Raises what the publisher raises
        (what is not published stays for the next attempt)."""
        published = 0
        while self.pending:
            if not self._replaying.exists():
                os.replace(self.path, self._replaying)
            documents: list[dict[str, Any]] = []
            with self._replaying.open("rb") as lines:
                for line in lines:
                    if line.strip():
                        try:
                            documents.append(json.loads(line))
                        except ValueError:
                            continue  # a line cut by a crash while being kept: nothing to publish
            for start in range(0, len(documents), batch):
                await publisher.publish_documents(documents[start : start + batch])
            self._replaying.unlink()
            published += len(documents)
        return published
