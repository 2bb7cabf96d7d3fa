"""The consumer side of the event transport: a Redis stream read with a consumer group.

Producers (gateway, IdP, custom ones) append to ``<prefix>onegate:events`` with
:class:`core.eventstream.StreamPublisher`; every SOC process runs a :class:`StreamSource` in the
group ``soc``, so the entries are shared out among them (https://redis.io/docs/latest/develop/
data-types/streams/#consumer-groups).

An entry is acknowledged (``XACK``) only after :meth:`~soc.ingest.Ingest.accept` returned, that
is once its event is in the spool on disk. What happens around a crash:

* killed between ``accept`` and ``XACK``: the entries stay pending for this consumer. On start
  the source first reads its own pending entries (``XREADGROUP ... 0``) and accepts them again;
  ingest keeps one document per ``event.id``, so nothing is stored twice. Give each process a
  stable consumer name (the pod or host name) for this to happen at once;
* a consumer that never comes back (a new host name, a scaled-down pod): its pending entries are
  taken over with ``XAUTOCLAIM`` by a live consumer once idle for ``claim_idle`` seconds;
* the spool is full (``SpoolFull``): nothing is acknowledged; the source waits and retries the
  same entries, and the stream holds the rest;
* an entry that is not a JSON object, or that ingest refuses (``DocumentRefused``): that entry
  alone is set aside on the dead-letter stream ``<stream>:refused`` (the original value, the
  reason, the entry id), logged and reported with a ``stream-entry-refused`` event; the others of
  the batch are accepted and everything is acknowledged;
* an entry trimmed away (``MAXLEN``) before it was accepted is lost: logged and reported with a
  ``stream-entry-lost`` event. Size ``maxlen`` for the longest outage of the SOC.

Events from several consumers arrive in the store in any order between consumers; each store
orders its searches by ``@timestamp``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.events import EventEmitter
from core.eventstream import DEFAULT_STREAM, FIELD
from core.logging import get_logger
from soc.ingest import DocumentRefused
from soc.sources.common import Acceptor, emit, loads_strict
from soc.spool import SpoolFull

__all__ = ["StreamSource", "default_consumer_name"]

_log = get_logger("onegate.soc.sources.streams")

_DEAD_LETTER_MAXLEN = 100_000


def default_consumer_name() -> str:
    """``host:pid`` — unique among live processes; a restarted process is a new consumer, whose
    predecessor's pending entries are claimed after ``claim_idle``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(response: Any) -> list[tuple[str, dict[Any, Any]]]:
    """XREADGROUP's answer for one stream, in the shape of either protocol (RESP2 list, RESP3 map)."""
    if not response:
        return []
    streams = response.items() if isinstance(response, Mapping) else response
    entries: list[tuple[str, dict[Any, Any]]] = []
    for _key, listed in streams:
        items = listed
        if items and isinstance(items[0], list) and (not items[0] or isinstance(items[0][0], list | tuple)):
            items = items[0]  # the RESP3 parser wraps the list once more
        entries.extend((_text(i), dict(f or {})) for i, f in items)
    return entries


def _order(entry_id: str) -> tuple[int, int]:
    millis, _, sequence = entry_id.partition("-")
    return int(millis), int(sequence or 0)


@dataclass
class _Batch:
    ids: list[str]  # everything to acknowledge, in stream order
    documents: list[dict[str, Any]]
    document_ids: list[str]  # the entry id of each document
    values: list[bytes]  # the entry's original value of each document
    refused: list[tuple[str, bytes, str]]  # (entry id, original value, reason)
    lost: list[str]


class StreamSource:
    """Reads ``<prefix><stream>`` as ``consumer`` of ``group`` into ``ingest`` until cancelled.

    Gauges for /metrics: ``pending`` (entries delivered to the group and not acknowledged),
    ``lag`` (entries not yet delivered to the group; None before Redis 7), refreshed every
    ``claim_every`` seconds; counters ``acknowledged``, ``replayed`` (own pending entries read
    again after a restart), ``claimed`` (taken from other consumers), ``refused``, ``lost``,
    ``spool_full_waits``, ``redis_failures``."""

    def __init__(
        self,
        redis: str | aioredis.Redis,
        ingest: Acceptor,
        *,
        stream: str = DEFAULT_STREAM,
        prefix: str = "",
        group: str = "soc",
        consumer: str | None = None,
        count: int = 1000,
        block: float = 1.0,
        claim_idle: float = 60.0,
        claim_every: float = 10.0,
        max_pause: float = 5.0,
        events: EventEmitter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        if isinstance(redis, str):
            self._client: aioredis.Redis = aioredis.Redis.from_url(
                redis, socket_connect_timeout=5.0, socket_timeout=block + 10.0, health_check_interval=30
            )
            self._owned = True
        else:
            self._client = redis
            self._owned = False
        self._ingest = ingest
        self.key = prefix + stream
        self.dead_letter_key = self.key + ":refused"
        self.group = group
        self.consumer = consumer or default_consumer_name()
        self._count = count
        self._block_ms = max(1, int(block * 1000))
        self._claim_idle_ms = max(0, int(claim_idle * 1000))
        self._claim_every = claim_every
        self._max_pause = max_pause
        self._events = events
        self._clock = clock
        self._claim_cursor = "0-0"
        self.pending: int | None = None
        self.lag: int | None = None
        self.acknowledged = 0
        self.replayed = 0
        self.claimed = 0
        self.refused = 0
        self.lost = 0
        self.spool_full_waits = 0
        self.redis_failures = 0

    def __repr__(self) -> str:
        return f"StreamSource(key={self.key!r}, group={self.group!r}, consumer={self.consumer!r})"

    # -- the loop ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until cancelled: own pending entries first, then new ones, claiming idle
        entries of other consumers every ``claim_every`` seconds. A Redis outage pauses the loop
        (with a growing pause) and reading resumes with the pending entries."""
        pause = 0.0
        ready = False
        own_pending: str | None = "0"  # the cursor over this consumer's pending entries
        next_claim = self._clock()
        while True:
            try:
                if not ready:
                    await self.create_group()
                    ready = True
                if own_pending is not None:
                    own_pending = await self._read_own_pending(own_pending)
                    continue
                if self._clock() >= next_claim:
                    await self.claim()
                    await self.refresh()
                    next_claim = self._clock() + self._claim_every
                await self._read_new()
                if pause:
                    _log.info("redis stream readable again", key=self.key)
                pause = 0.0
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                self.redis_failures += 1
                if not pause:
                    _log.warning("redis stream unreachable; retrying", key=self.key, error=str(e)[:300])
                own_pending = "0"  # an acknowledgement may have been lost with the connection
                pause = min(self._max_pause, max(0.1, pause * 2))
                await asyncio.sleep(pause)
            except ResponseError as e:
                if "NOGROUP" in str(e):
                    # The stream (and its group) was deleted under us: make them again.
                    _log.warning("consumer group missing; creating it again", key=self.key, group=self.group)
                    ready = False
                    continue
                pause = await self._failed(e, pause)
                own_pending = "0"
            except Exception as e:  # a fault of ingest or ours: keep consuming, unacknowledged first
                pause = await self._failed(e, pause)
                own_pending = "0"

    async def _failed(self, error: Exception, pause: float) -> float:
        _log.error(
            "stream source failed; retrying", key=self.key, error=f"{type(error).__name__}: {error}"[:300]
        )
        pause = min(self._max_pause, max(0.1, pause * 2))
        await asyncio.sleep(pause)
        return pause

    async def create_group(self) -> None:
        """``XGROUP CREATE ... 0 MKSTREAM`` unless the group exists: a new group starts at the
        beginning of the stream, so events published before the first SOC start are read too."""
        try:
            await self._client.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _read_own_pending(self, cursor: str) -> str | None:
        """One batch of this consumer's pending entries after ``cursor``; the next cursor, or None
        when there are no more."""
        response = await self._client.xreadgroup(
            self.group, self.consumer, {self.key: cursor}, count=self._count
        )
        entries = _entries(response)
        if not entries:
            return None
        self.replayed += len(entries)
        _log.info("re-reading entries pending for this consumer", key=self.key, entries=len(entries))
        await self._handle(entries)
        return entries[-1][0]

    async def _read_new(self) -> int:
        response = await self._client.xreadgroup(
            self.group, self.consumer, {self.key: ">"}, count=self._count, block=self._block_ms
        )
        entries = _entries(response)
        if entries:
            await self._handle(entries)
        return len(entries)

    async def claim(self, *, rounds: int = 10) -> int:
        """Take over entries pending for longer than ``claim_idle`` (their consumer died) and
        ingest them; how many were claimed. Walks the pending list at most ``rounds`` batches at
        a time and goes on from there next time."""
        claimed = 0
        for _ in range(rounds):
            response = await self._client.xautoclaim(
                self.key,
                self.group,
                self.consumer,
                self._claim_idle_ms,
                self._claim_cursor,
                count=self._count,
            )
            cursor, items = _text(response[0]), response[1]
            deleted = [_text(i) for i in response[2]] if len(response) > 2 else []
            entries = [(_text(i), dict(f or {})) for i, f in items if i is not None]
            if deleted:
                self._lost(deleted)  # trimmed while pending; XAUTOCLAIM already dropped them
            if entries:
                claimed += len(entries)
                self.claimed += len(entries)
                _log.info("claimed entries of a silent consumer", key=self.key, entries=len(entries))
                await self._handle(entries)
            self._claim_cursor = cursor
            if cursor == "0-0":
                break
        return claimed

    async def refresh(self) -> None:
        """Update ``pending`` and ``lag`` from ``XINFO GROUPS``."""
        for info in await self._client.xinfo_groups(self.key):
            if _text(info.get("name")) == self.group:
                self.pending = int(info.get("pending") or 0)
                lag = info.get("lag")
                self.lag = None if lag is None else int(lag)

    async def close(self) -> None:
        if self._owned:
            await self._client.aclose()

    # -- one batch -----------------------------------------------------------------------------------

    def _decode(self, entries: Sequence[tuple[str, dict[Any, Any]]]) -> _Batch:
        batch = _Batch([], [], [], [], [], [])
        for entry_id, fields in entries:
            batch.ids.append(entry_id)
            if not fields:  # a pending entry trimmed away: only its id is left
                batch.lost.append(entry_id)
                continue
            raw = fields.get(FIELD.encode(), fields.get(FIELD))
            if raw is None:
                batch.refused.append((entry_id, b"", f"the entry has no {FIELD!r} field"))
                continue
            value = raw if isinstance(raw, bytes) else str(raw).encode()
            try:
                document = loads_strict(value)
            except ValueError as e:
                batch.refused.append((entry_id, value, f"not JSON: {e}"))
                continue
            if not isinstance(document, dict):
                batch.refused.append((entry_id, value, "not a JSON object"))
                continue
            if "@timestamp" not in document:
                # The entry id's milliseconds: the same on every replay, unlike the time of reading.
                millis = int(entry_id.partition("-")[0])
                document["@timestamp"] = datetime.fromtimestamp(millis / 1000, UTC).isoformat()
            batch.documents.append(document)
            batch.document_ids.append(entry_id)
            batch.values.append(value)
        return batch

    async def _handle(self, entries: Sequence[tuple[str, dict[Any, Any]]]) -> None:
        batch = self._decode(entries)
        await self._accept(batch)
        # Only now, with the events on disk: set the refused ones aside and acknowledge all, in
        # one transaction (a crash leaves both undone, and the entries are read again).
        batch.refused.sort(key=lambda refused: _order(refused[0]))
        pipe = self._client.pipeline(transaction=True)
        for entry_id, value, reason in batch.refused:
            pipe.xadd(
                self.dead_letter_key,
                {"id": entry_id, FIELD: value, "reason": reason[:1000]},
                maxlen=_DEAD_LETTER_MAXLEN,
                approximate=True,
            )
        pipe.xack(self.key, self.group, *batch.ids)
        try:
            await pipe.execute()
        finally:
            await pipe.reset()  # type: ignore[no-untyped-call]
        self.acknowledged += len(batch.ids)
        for entry_id, _value, reason in batch.refused:
            self.refused += 1
            _log.error(
                "stream entry refused; set aside", key=self.key, entry_id=entry_id, reason=reason[:300]
            )
            emit(
                self._events,
                "stream-entry-refused",
                {
                    "labels.stream_entry": entry_id,
                    "labels.stream": self.key[:200],
                    "error.message": reason[:500],
                },
            )
        if batch.lost:
            self._lost(batch.lost)

    async def _accept(self, batch: _Batch) -> None:
        """Accept the documents, setting aside each one ingest refuses; wait while the spool is full."""
        pause = 0.0
        while batch.documents:
            try:
                await self._ingest.accept(batch.documents)
                return
            except DocumentRefused as e:
                index = e.index if 0 <= e.index < len(batch.documents) else 0
                del batch.documents[index]
                batch.refused.append((batch.document_ids.pop(index), batch.values.pop(index), e.reason))
            except SpoolFull:
                self.spool_full_waits += 1
                if not pause:
                    _log.warning("ingest spool full; stream entries wait unacknowledged", key=self.key)
                pause = min(self._max_pause, max(0.05, pause * 2))
                await asyncio.sleep(pause)

    def _lost(self, ids: Sequence[str]) -> None:
        self.lost += len(ids)
        _log.error(
            "stream entries trimmed before they were ingested (raise the stream's maxlen)",
            key=self.key,
            entries=len(ids),
            first=ids[0],
        )
        emit(
            self._events,
            "stream-entry-lost",
            {"labels.stream_entry": ids[0], "labels.stream": self.key[:200], "labels.count": str(len(ids))},
        )
