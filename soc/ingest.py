"""Ingest: events in, on disk, then into the event store — in order, exactly once.

Every source (the in-process bus, the HTTP bulk endpoint, syslog) hands documents to
:meth:`Ingest.accept`, which checks and normalises them (flat ECS, ``@timestamp`` in UTC,
an ``event.id``), appends them to the durable spool and returns once they are on disk: that
return is the acknowledgement a source gets. A writer task (:meth:`Ingest.run`) takes the oldest
spooled documents in batches, writes them to the store and only then marks them consumed (while
one batch is written the next is read, run through the detections and prepared for the store;
it is written only after the one before is stored), so:

* a store that is down or slow only makes the spool grow (bounded: :class:`~soc.spool.SpoolFull`
  refuses new documents rather than losing old ones; the ``spool-filling`` event warns first);
  the writer retries with a growing pause (at most ``max_backoff`` seconds) and catches up in
  order when the store is back;
* a crash after a write but before the commit replays that batch, and the store's idempotency
  by ``event.id`` keeps every document once;
* a document the store refuses as malformed (it passed our checks, so this is a store-side
  limit) is set aside in ``refused.ndjson`` next to the spool, with an event, instead of
  blocking everything behind it.

Documents without an ``event.id`` get one derived from their content (SHA-256 of the
canonical JSON), so a source that resends the same batch after a timeout does not duplicate it.
Fields whose names say they hold a secret (``password``, ``token`` ...) are replaced by
``[redacted]`` before anything is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson

from core.events import Category, Event, EventEmitter, Outcome
from core.eventstore import EventStore, StoreUnavailable, WriteResult
from core.logging import get_logger
from soc.spool import Batch, Spool, SpoolCorrupt

if TYPE_CHECKING:
    from soc.detections.engine import Detector

__all__ = ["MAX_DOCUMENT_BYTES", "DocumentRefused", "Ingest", "normalise"]

_log = get_logger("onegate.soc.ingest")

MAX_DOCUMENT_BYTES = 64 * 1024
MAX_FIELDS = 512
_FIELD = re.compile(r"[A-Za-z0-9_@][A-Za-z0-9_@.\-]{0,127}")
_SECRET_WORDS = ("password", "passwd", "secret", "token", "authorization", "cookie", "private_key")
REDACTED = "[redacted]"
# Field names seen valid (and whether they name a secret), so each name is checked once; and
# those of them that name no secret, for the quick path's one set comparison.
_KNOWN_NAMES: dict[str, bool] = {}
_SAFE_NAMES: set[str] = set()
_MAX_KNOWN_NAMES = 20_000
_PLAIN_TYPES = frozenset((str, int, float, bool, type(None), list, tuple))


@runtime_checkable
class _WritesSpooled(Protocol):
    """A store that keeps the spool's JSON text of a document instead of encoding it again and
    whose write splits in two, so the writer prepares the next batch while the store writes the
    one before (:meth:`soc.stores.sqlite.SqliteEventStore.prepare_spooled`)."""

    def prepare_spooled(self, documents: Sequence[Mapping[str, Any]], texts: Sequence[str]) -> Any: ...

    async def write_prepared(self, prepared: Any) -> WriteResult: ...


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark the outcome of a commit seen once nobody waits for it (the writer was stopped)."""
    if not task.cancelled():
        task.exception()


class DocumentRefused(ValueError):
    """A document that cannot be ingested; ``index`` is its position in the batch."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"document {index}: {reason}")
        self.index = index
        self.reason = reason


def _flatten(value: Mapping[str, Any], prefix: str, out: dict[str, Any], index: int) -> None:
    for key, item in value.items():
        if not isinstance(key, str):
            raise DocumentRefused(index, "field names must be strings")
        name = f"{prefix}{key}"
        if isinstance(item, Mapping):
            _flatten(item, f"{name}.", out, index)
        else:
            out[name] = item


def _scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | int | bool)


def _checked(document: Any, index: int) -> dict[str, Any]:
    """Any document: flattened, names and values checked, secrets redacted."""
    if not isinstance(document, Mapping):
        raise DocumentRefused(index, "a document is a JSON object")
    flat: dict[str, Any] = {}
    _flatten(document, "", flat, index)
    if len(flat) > MAX_FIELDS:
        raise DocumentRefused(index, f"more than {MAX_FIELDS} fields")
    for name, value in list(flat.items()):
        secret = _KNOWN_NAMES.get(name)
        if secret is None:
            if not _FIELD.fullmatch(name):
                raise DocumentRefused(index, f"field name {name[:40]!r} is not an ECS-style name")
            secret = any(word in name.lower() for word in _SECRET_WORDS)
            if len(_KNOWN_NAMES) < _MAX_KNOWN_NAMES:
                _KNOWN_NAMES[name] = secret
                if not secret:
                    _SAFE_NAMES.add(name)
        if isinstance(value, list | tuple):
            if not all(_scalar(v) for v in value):
                raise DocumentRefused(index, f"{name}: a list holds only strings, numbers and booleans")
            flat[name] = list(value)
        elif not _scalar(value):
            raise DocumentRefused(index, f"{name}: not a JSON scalar")
        if secret:
            flat[name] = REDACTED
    return flat


def _plain(document: dict[str, Any]) -> dict[str, Any] | None:
    """The common case of :func:`_checked`, faster: a flat dict whose field names were all seen
    before and name no secret, holding strings, finite numbers, booleans, None and lists of
    those. None for anything else (a nested object, a new name, a secret): :func:`_checked`
    decides then. The names and the value types are checked by set operations, in C."""
    if len(document) > MAX_FIELDS or not document.keys() <= _SAFE_NAMES:
        return None
    types = set(map(type, document.values()))
    if not types <= _PLAIN_TYPES:
        return None
    flat = dict(document)
    if float in types or list in types or tuple in types:
        for name, value in flat.items():
            kind = type(value)
            if kind is float:
                if not math.isfinite(value):
                    return None
            elif kind is list or kind is tuple:
                for item in value:
                    if type(item) is not str and not _scalar(item):
                        return None
                flat[name] = list(value)  # a value replaced, no key added: the loop goes on
    return flat


_CANONICAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


# The second (first 20 characters, ``2026-11-02T09:00:00.``) of the last canonical time that
# _timestamp found to exist: events come in time order, so most share it.
_LAST_SECOND = [""]


def _timestamp(value: Any, index: int) -> str:
    if type(value) is str and len(value) == 27:
        fraction = value[20:26]
        if value[:20] == _LAST_SECOND[0] and fraction.isascii() and fraction.isdigit() and value[26] == "Z":
            return value
        if _CANONICAL_TIME.fullmatch(value):
            # Already as stored (UTC, microseconds, Z): only check that the moment exists.
            with contextlib.suppress(ValueError):
                datetime.fromisoformat(value[:26])
                _LAST_SECOND[0] = value[:20]
                return value
    if not isinstance(value, str):
        raise DocumentRefused(index, "@timestamp must be an RFC 3339 string")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise DocumentRefused(index, f"@timestamp {value[:40]!r} is not RFC 3339") from None
    if moment.tzinfo is None:
        raise DocumentRefused(index, "@timestamp needs a time zone (Z or an offset)")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def normalise(
    document: Mapping[str, Any], index: int = 0, *, received: datetime | None = None
) -> dict[str, Any]:
    """``document`` (flat or nested ECS) as the stores keep it, or :class:`DocumentRefused`.

    ``@timestamp`` is required unless ``received`` (the moment of receipt) stands in for it;
    ``event.id`` is derived from the content when missing; secret-named fields are redacted.
    The result is a new dict (lists copied too): later changes by the caller do not reach it."""
    return _normalise(document, index, received, None)[0]


def _normalise(
    document: Mapping[str, Any],
    index: int,
    received: datetime | None,
    tag: Callable[[Mapping[str, Any]], str | None] | None,
) -> tuple[dict[str, Any], bytes | None]:
    """:func:`normalise`, with the drill ``tag`` applied, and the document's compact JSON
    (orjson's, which gives the exact size; None where orjson cannot write it: an integer beyond
    64 bits, a lone surrogate)."""
    flat = _plain(document) if type(document) is dict else None
    if flat is None:
        flat = _checked(document, index)
    if "@timestamp" not in flat:
        if received is None:
            raise DocumentRefused(index, "@timestamp is missing")
        flat["@timestamp"] = received.isoformat()
    flat["@timestamp"] = _timestamp(flat["@timestamp"], index)
    event_id = flat.get("event.id")
    if event_id is None:
        canonical = json.dumps(flat, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        flat["event.id"] = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    elif not isinstance(event_id, str) or not 1 <= len(event_id) <= 128:
        raise DocumentRefused(index, "event.id must be a string of 1 to 128 characters")
    if tag is not None:
        drill = tag(flat)
        if drill is not None:
            flat["onegate.drill_id"] = drill
    line: bytes | None
    try:
        line = orjson.dumps(flat)
        size = len(line)
    except orjson.JSONEncodeError:
        line = None
        size = len(json.dumps(flat, separators=(",", ":")).encode())
    if size > MAX_DOCUMENT_BYTES:
        raise DocumentRefused(index, f"{size} bytes of JSON, more than {MAX_DOCUMENT_BYTES}")
    return flat, line


class Ingest:
    """One ingest pipeline: sources -> :meth:`accept` -> spool -> :meth:`run` -> store."""

    def __init__(
        self,
        spool: Spool,
        store: EventStore,
        *,
        events: EventEmitter | None = None,
        detector: Detector | None = None,
        tag: Callable[[Mapping[str, Any]], str | None] | None = None,
        batch_size: int = 5000,
        max_backoff: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spool = spool
        self._store = store
        self._spooled_store = store if isinstance(store, _WritesSpooled) else None
        self._events = events
        self._detector = detector
        self.tag = tag  # which drill a document belongs to (replaced as drills start and end)
        # How many documents after the committed position the detector has seen: a batch read
        # again after a failure is not detected twice.
        self._detected_ahead = 0
        self._committing: asyncio.Task[None] | None = None  # the last commit started
        self._batch_size = batch_size
        self._max_backoff = max_backoff
        self._clock = clock
        self._refused_path = Path(spool.directory) / "refused.ndjson"
        self._filling = False
        self.written = 0
        self.duplicates = 0
        self.refused = 0
        self.store_failures = 0
        self.store_down_since: float | None = None
        self.detection_failures = 0

    # -- sources ---------------------------------------------------------------------------------

    async def accept(
        self, documents: Sequence[Mapping[str, Any]], *, received: datetime | None = None
    ) -> int:
        """Check, normalise and spool ``documents``; returns how many once they are on disk.
        :class:`DocumentRefused` refuses the whole batch (nothing spooled); ``SpoolFull``
        passes through (the source keeps its events and retries)."""
        tag = self.tag
        checked = [_normalise(d, i, received, tag) for i, d in enumerate(documents)]
        if checked:
            # normalise made these dicts, and nothing here changes them after the append.
            flats, lines = zip(*checked, strict=True)
            await self._spool.append(flats, handed_over=True, lines=lines)
            self._watch_fill()
        return len(checked)

    async def handle(self, event: Event) -> None:
        """An event-bus subscriber: one event of this process, spooled."""
        await self.accept([event.flat()])

    async def handle_batch(self, events: list[Event]) -> None:
        """The event-bus batch subscriber (``EventBus.subscribe_batch``): the events that queued
        up, spooled with one disk flush."""
        await self.accept([event.flat() for event in events])

    # -- the writer ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Write spooled documents to the store until cancelled.

        One batch is written while the next is read, goes through the detections and is
        prepared for the store, so the store's work (much of it outside the interpreter lock,
        and its fsync) overlaps with ours; the next batch is written only once the one before
        is stored (its commit runs beside the next write, commits in order), so batches reach
        the store in order and a failed write is retried from the committed position with
        nothing after it written."""
        pause = 0.0
        corrupt = False
        writing: tuple[Batch, asyncio.Task[None]] | None = None
        try:
            while True:
                if writing is None and self._committing is not None:
                    # A read from the committed position comes after the commit under way.
                    committing, self._committing = self._committing, None
                    await committing
                try:
                    batch = await self._spool.read(self._batch_size, after=writing[0] if writing else None)
                except SpoolCorrupt as e:
                    if writing is not None:  # what was read before the damage is written first
                        stored, writing = await self._finish(writing), None
                        if stored:
                            pause = 0.0
                            continue
                    # Nothing behind a damaged record can be written in order: say so once,
                    # loudly, and keep trying (an operator repairs or moves the spool aside).
                    if not corrupt:
                        _log.error("ingest spool damaged; events wait behind it", error=str(e))
                        self._emit("spool-corrupt", Outcome.FAILURE, {"error.message": str(e)[:500]})
                    corrupt = True
                    await asyncio.sleep(self._max_backoff)
                    continue
                corrupt = False
                if batch is None:
                    if writing is None:
                        await self._spool.wait_for_data(1.0)
                        continue
                    stored, writing = await self._finish(writing), None
                else:
                    ahead = len(writing[0].documents) if writing is not None else 0
                    detected = self._detector is None or await self._detect(batch.documents, ahead)
                    prepared = self._prepare(batch) if detected else None
                    stored = True
                    if writing is not None:
                        stored, writing = await self._finish(writing), None
                    if stored and detected:
                        writing = (batch, asyncio.create_task(self._write(batch.documents, prepared)))
                        continue
                    stored = stored and detected
                if stored:
                    pause = 0.0
                    continue
                # The store or the detections failed: read again from the committed position.
                pause = min(self._max_backoff, max(0.05, pause * 2))
                await asyncio.sleep(pause)
        finally:
            if writing is not None and not writing[1].done():
                writing[1].cancel()  # the write finishes in its thread; uncommitted, it is replayed
            if self._committing is not None:
                self._committing.add_done_callback(_retrieve)

    async def _finish(self, writing: tuple[Batch, asyncio.Task[None]]) -> bool:
        """Wait for the store write of a batch and start its commit (it runs beside the next
        write; commits go in order, and a read from the committed position waits for them);
        False when the store was unavailable (the batch stays in the spool)."""
        batch, task = writing
        try:
            await task
        except StoreUnavailable as e:
            self.store_failures += 1
            if self.store_down_since is None:
                self.store_down_since = self._clock()
                _log.warning("event store unavailable; events wait in the spool", error=str(e))
            return False
        if self._committing is not None:
            committing, self._committing = self._committing, None
            await committing  # the commit before, in order; a failure of it surfaces here
        self._committing = asyncio.create_task(self._spool.commit(batch))
        self._detected_ahead = max(0, self._detected_ahead - len(batch.documents))
        self._watch_fill()
        if self.store_down_since is not None:
            _log.info("event store back", down_seconds=round(self._clock() - self.store_down_since, 1))
            self.store_down_since = None
        return True

    async def _detect(self, documents: Sequence[dict[str, Any]], ahead: int) -> bool:
        """Streaming detections over the documents not yet seen of a batch that starts ``ahead``
        documents after the committed position; False when the detector could not finish (its KV
        or the alert store is down): the batch waits, as it would for the event store, and
        alerts come late rather than never."""
        assert self._detector is not None  # noqa: S101 - checked by the caller
        seen = max(0, self._detected_ahead - ahead)
        if seen >= len(documents):
            return True
        try:
            await self._detector.process(documents[seen:])
        except Exception as e:  # any failure of a dependency: retry the batch later
            self.detection_failures += 1
            if self.detection_failures == 1 or self.detection_failures % 100 == 0:
                _log.warning(
                    "detections failed; the batch waits", error=str(e)[:300], failures=self.detection_failures
                )
            return False
        self._detected_ahead = ahead + len(documents)
        return True

    def _prepare(self, batch: Batch) -> Any:
        """The store's work on ``batch`` that can be done ahead (on this thread, while its own
        thread writes the batch before); None when the store has none or refuses a document
        (then the batch is written document by document)."""
        if self._spooled_store is None or len(batch.texts) != len(batch.documents):
            return None
        try:
            return self._spooled_store.prepare_spooled(batch.documents, batch.texts)
        except ValueError:
            return None

    async def _write(self, documents: Sequence[dict[str, Any]], prepared: Any = None) -> None:
        try:
            if self._spooled_store is not None and prepared is not None:
                result = await self._spooled_store.write_prepared(prepared)
            else:
                result = await self._store.write(documents)
        except ValueError:
            # The store refused something our checks let through: write one by one and set
            # the refused ones aside rather than stop everything behind them.
            for document in documents:
                try:
                    single = await self._store.write([document])
                except ValueError as e:
                    self._set_aside(document, str(e))
                    continue
                self.written += single.written
                self.duplicates += single.duplicates
            return
        self.written += result.written
        self.duplicates += result.duplicates

    def _set_aside(self, document: Mapping[str, Any], reason: str) -> None:
        self.refused += 1
        with self._refused_path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"reason": reason[:500], "document": document}, ensure_ascii=False) + "\n")
        _log.error(
            "event refused by the store; set aside", event_id=document.get("event.id"), reason=reason[:200]
        )
        self._emit("event-refused", Outcome.FAILURE, {"labels.event_id": str(document.get("event.id"))[:128]})

    def _watch_fill(self) -> None:
        filling = self._spool.filling
        if filling and not self._filling:
            _log.warning("ingest spool filling", fill_ratio=round(self._spool.fill_ratio, 3))
            self._emit(
                "spool-filling", Outcome.FAILURE, {"labels.fill_ratio": f"{self._spool.fill_ratio:.3f}"}
            )
        elif self._filling and not filling:
            self._emit(
                "spool-recovered", Outcome.SUCCESS, {"labels.fill_ratio": f"{self._spool.fill_ratio:.3f}"}
            )
        self._filling = filling

    def _emit(self, action: str, outcome: Outcome, fields: dict[str, Any]) -> None:
        if self._events is not None:
            self._events.emit(
                Event(
                    action=action,
                    category=Category.CONFIGURATION,
                    outcome=outcome,
                    dataset="onegate.soc",
                    fields=fields,
                )
            )

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until the spool is empty (everything in the store); False at the timeout."""
        deadline = self._clock() + timeout
        while self._spool.backlog_documents:
            if self._clock() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True
