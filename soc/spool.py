"""The SOC's durable ingest spool: an event is on disk before ingest acknowledges it.

Ingest appends every batch it receives (from the bus, the HTTP bulk endpoint, syslog) and
answers the sender only when :meth:`Spool.append` has returned; the store writer reads the
oldest documents, writes them to the event store and commits them. While the store is down or
slow the documents wait here, on disk and bounded by ``max_bytes``, and they reach the store in
the order they came once it is back. A crash — SIGKILL or a power cut — loses nothing that was
acknowledged.

On disk, in a directory of its own (mode 0700: events carry user names and addresses):

* ``<20-digit number>.seg`` — segment files, appended to in order; a new one is started once the
  current one has reached ``segment_bytes``, and one is deleted once everything in it is
  committed;
* ``checkpoint`` — the committed position as JSON, replaced atomically (temporary file, fsync,
  rename, fsync of the directory);
* ``lock`` — held with ``flock`` while a spool is open, so two processes never share a directory.

Each append is one *frame*, so a batch is all or nothing after a crash::

    magic b"\\xa7OGS" | payload length u32 | documents u32 | payload CRC32 u32
    | header CRC32 u32 (of the 16 bytes before it) | payload

little-endian; the payload is the documents as compact JSON, one per line, in UTF-8 with every
control character escaped. A :class:`Position` is (segment,
offset of a frame, documents of that frame already consumed), so a reader may take part of a
batch and the rest later.

Decisions:

* Acknowledged means durable: the frame is written and ``fdatasync``-ed, and a new segment's
  directory entry is fsynced before anything in it is acknowledged. Appends that arrive while
  another is being written go to disk together with one fsync (group commit); each stays its own
  frame and each caller is answered only after that fsync.
* Capacity counts unconsumed frames (a partly consumed frame counts whole). An append that would
  take the spool past ``max_bytes`` raises :class:`SpoolFull` and writes nothing. The consumed
  head of the oldest segment stays on disk until that segment is done, so the directory may hold
  about one segment more than ``max_bytes``.
* Reading is at-least-once: :meth:`Spool.read` always starts at the committed position (two reads
  without a commit give the same documents) and only :meth:`Spool.commit` moves it, in order.
  Stores are idempotent by ``event.id``, which makes that exactly-once in the store.
* Recovery (:meth:`Spool.open`) checks every unconsumed frame. A bad frame at the end of the newest
  segment is the torn write of an append that was never acknowledged, and the file is truncated
  there — but only when no valid frame follows it anywhere in the file: if one does, a frame that
  was acknowledged has been damaged, and :class:`SpoolCorrupt` names the file and offset instead
  of skipping it. A bad frame anywhere else is corruption too. The magic may occur inside a
  payload (its first byte continues a UTF-8 character), but a frame header cannot: its document
  count is below 2**24, so its last byte is 0, which JSON text never holds unescaped; recovery
  checks both checksums of every candidate anyway.
* A failed write is cut off again (``ftruncate``), so the next append does not land behind a torn
  frame. After a failed fsync the page cache is in an unknown state (a retried fsync can report
  success for data that is gone), so the spool refuses appends until it is reopened and
  recovered: it fails closed.
* File work runs on two threads of the spool's own — one writes, one reads and commits — so an
  fsync blocks neither the event loop nor the store writer's reads; bookkeeping stays on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import struct
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import orjson

from core.files import fsync_directory, write_all
from core.logging import get_logger

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "Batch",
    "Position",
    "Spool",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolFull",
]

_log = get_logger("onegate.soc.spool")

DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024

_MAGIC = b"\xa7OGS"
_FIELDS = struct.Struct("<4sIII")  # magic, payload length, documents, payload CRC32
_HEADER = struct.Struct("<4sIIII")  # the same and the CRC32 of those 16 bytes
_MAX_PAYLOAD = 2**31 - 1
_MAX_DOCUMENTS = 2**24 - 1  # so that a frame header's last byte is 0 (module docstring)
_GROUP_BYTES = 8 * 1024 * 1024  # at most this much per write + fsync, unless one frame is larger
_READ_CHUNK = 1024 * 1024
DEFAULT_KEEP_RECENT = 32 * 1024 * 1024  # frames kept in memory after their write (see Spool)
_CHECKPOINT = "checkpoint"
_CHECKPOINT_TMP = "checkpoint.tmp"
_LOCK = "lock"
_SUFFIX = ".seg"

# check_circular=False halves the encoding time; a document that holds itself still fails, with
# RecursionError instead of ValueError (both refuse it, see _encode).
_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"), check_circular=False)


class SpoolError(Exception):
    """The spool cannot do the work (closed, in use, a write failed); nothing was acknowledged."""


class SpoolFull(SpoolError):
    """The batch would take the unconsumed data past ``max_bytes``; nothing was written."""


class SpoolCorrupt(SpoolError):
    """A frame that should be intact is not (or the checkpoint is unreadable): ``path`` and
    ``offset`` say where. The spool does not skip it; an operator decides."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path} at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """A place in the spool: the frame at ``offset`` in segment ``segment``, of which the first
    ``skip`` documents are already consumed."""

    segment: int
    offset: int
    skip: int = 0


@dataclass(frozen=True, slots=True)
class Batch:
    """Documents read from the spool, oldest first, and where they start and end; ``texts`` holds
    each document as the spool wrote it (compact JSON; non-ASCII characters escaped or not), so
    a store that keeps JSON text need not encode it again."""

    documents: tuple[dict[str, Any], ...]
    start: Position
    end: Position
    texts: tuple[str, ...] = ()


class _BadFrame(Exception):
    pass


def _segment_name(number: int) -> str:
    return f"{number:020d}{_SUFFIX}"


def _segment_number(name: str) -> int | None:
    stem = name.removesuffix(_SUFFIX)
    if stem == name or len(stem) != 20 or not stem.isdigit():
        return None
    return int(stem)


def _encode(
    documents: Sequence[Mapping[str, Any]],
    *,
    normalised: bool = False,
    lines: Sequence[bytes | None] | None = None,
) -> tuple[bytes, tuple[str, ...]]:
    """One frame holding ``documents``, and each document's line of it; a document that is not
    JSON is refused by its index. ``lines``: the documents' compact JSON, when the caller has it
    already (:meth:`Spool.append`). ``normalised`` documents (dicts of JSON values alone, as
    ingest makes them) are encoded by orjson, eight times faster than the standard library and
    without escaping non-ASCII text; the others, or a batch orjson refuses (an integer beyond
    64 bits, a lone surrogate), by the standard library, which also refuses NaN."""
    if len(documents) > _MAX_DOCUMENTS:
        raise ValueError(f"a batch is at most {_MAX_DOCUMENTS} documents")
    if normalised:
        try:
            if lines is not None and len(lines) == len(documents) and None not in lines:
                payload = b"\n".join(cast("Sequence[bytes]", lines))
            else:
                payload = b"\n".join([orjson.dumps(document) for document in documents])
        except orjson.JSONEncodeError:
            pass
        else:
            if len(payload) > _MAX_PAYLOAD:
                raise ValueError(f"the batch is {len(payload)} bytes; a batch is at most {_MAX_PAYLOAD}")
            return _frame(payload, len(documents)), tuple(payload.decode().split("\n"))
    encode = _ENCODER.encode
    try:
        # The common case at once: every document a dict that encodes.
        texts = [encode(document) for document in documents if type(document) is dict]
    except (TypeError, ValueError, RecursionError):
        texts = []
    if len(texts) != len(documents):  # find the culprit, or encode the other mappings
        texts = []
        for index, document in enumerate(documents):
            if not isinstance(document, Mapping):
                raise TypeError(f"document {index} is a {type(document).__name__}, not a mapping")
            try:
                texts.append(encode(document if type(document) is dict else dict(document)))
            except (TypeError, ValueError, RecursionError) as e:
                raise ValueError(f"document {index} cannot be written as JSON: {e}") from e
    payload = "\n".join(texts).encode("ascii")
    if len(payload) > _MAX_PAYLOAD:
        raise ValueError(f"the batch is {len(payload)} bytes; a batch is at most {_MAX_PAYLOAD}")
    return _frame(payload, len(texts)), tuple(texts)


def _frame(payload: bytes, count: int) -> bytes:
    fields = _FIELDS.pack(_MAGIC, len(payload), count, zlib.crc32(payload))
    return fields + struct.pack("<I", zlib.crc32(fields)) + payload


def _check_frame(data: bytes, at: int) -> tuple[int, int]:
    """The length and document count of the frame at ``at``, or :class:`_BadFrame` saying why."""
    if len(data) - at < _HEADER.size:
        raise _BadFrame("the frame header is incomplete")
    magic, length, count, payload_crc, header_crc = _HEADER.unpack_from(data, at)
    if magic != _MAGIC:
        raise _BadFrame("no frame starts here")
    if zlib.crc32(memoryview(data)[at : at + _FIELDS.size]) != header_crc:
        raise _BadFrame("the frame header checksum does not match")
    if count == 0 or length > _MAX_PAYLOAD:
        raise _BadFrame("the frame header is impossible")
    start = at + _HEADER.size
    end = start + length
    if end > len(data):
        raise _BadFrame("the frame is incomplete")
    if zlib.crc32(memoryview(data)[start:end]) != payload_crc:
        raise _BadFrame("the frame checksum does not match")
    if data.count(b"\n", start, end) + 1 != count:
        raise _BadFrame("the frame holds another number of documents than its header says")
    return _HEADER.size + length, count


def _valid_frame_after(data: bytes, at: int) -> int | None:
    """Where the first intact frame after offset ``at`` starts, if any does."""
    found = data.find(_MAGIC, at + 1)
    while found != -1:
        with contextlib.suppress(_BadFrame):
            _check_frame(data, found)
            return found
        found = data.find(_MAGIC, found + 1)
    return None


def _retrieve(done: asyncio.Future[int]) -> None:
    """Mark an append's outcome seen, for a caller that stopped waiting for it."""
    if not done.cancelled():
        done.exception()


def _fail(done: asyncio.Future[int], error: SpoolError) -> None:
    if not done.done():
        done.set_exception(error)


class _NotHeld(Exception):
    """A frame that is not held in memory: read the disk instead."""


# documents, their JSON lines, frame length, frame's document count
_Taken = tuple[Sequence[dict[str, Any]], Sequence[str], int, int]
_Frame = Callable[[int, int, int, int], _Taken]


def _walk(start: Position, sizes: list[tuple[int, int]], limit: int, frame: _Frame) -> Batch:
    """Up to ``limit`` documents from ``start`` on, frame after frame across the segments
    ``sizes`` ((number, size), ascending); ``frame(number, offset, skip, want)`` gives a frame's
    documents ``skip`` .. ``skip + want`` and their JSON lines, its length in bytes and how many
    documents it holds."""
    documents: list[dict[str, Any]] = []
    texts: list[str] = []
    index = 0
    number, offset, skip = start.segment, start.offset, start.skip
    while len(documents) < limit:
        size = sizes[index][1]
        if offset >= size:
            if index + 1 == len(sizes):
                break
            index += 1
            number, offset, skip = sizes[index][0], 0, 0
            continue
        taken, lines, length, count = frame(number, offset, skip, limit - len(documents))
        documents.extend(taken)
        texts.extend(lines)
        skip += len(taken)
        if skip == count:
            offset, skip = offset + length, 0
    return Batch(tuple(documents), start, Position(number, offset, skip), tuple(texts))


@dataclass(slots=True)
class _Pending:
    frame: bytes
    count: int
    done: asyncio.Future[int]
    documents: tuple[dict[str, Any], ...] = ()
    texts: tuple[str, ...] = ()


def _copy(document: Mapping[str, Any]) -> dict[str, Any]:
    """A copy the caller's later changes cannot reach (values are JSON scalars or lists)."""
    return {k: list(v) if isinstance(v, list | tuple) else v for k, v in document.items()}


@dataclass(slots=True)
class _Recovered:
    committed: Position
    segments: dict[int, int]  # number -> size, ascending
    documents: int  # unconsumed


class Spool:
    """A durable FIFO of ECS documents in ``directory``. Open it, append batches, read and
    commit them; see the module docstring for the guarantees.

    ``max_bytes`` bounds the unconsumed data; ``segment_bytes`` is the size at which a new
    segment file is started; ``fsync=False`` skips every fsync (only for tests of speed: an
    acknowledgement then survives a crashed process but not a crashed machine);
    ``filling_threshold`` is the fill ratio at which :attr:`filling` turns True; ``keep_recent``
    bytes of the frames this process wrote stay in memory until consumed, so a reader that keeps
    up with the appends gets them without reading the disk or decoding JSON (a copy of each
    document is kept, so later changes by the caller do not reach it, unless the caller hands the
    documents over: see :meth:`append`). What was written before an
    open, or did not fit, is read from disk — where damage is found and reported.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = True,
        filling_threshold: float = 0.8,
        keep_recent: int = DEFAULT_KEEP_RECENT,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive number of bytes, not {max_bytes!r}")
        if isinstance(segment_bytes, bool) or not isinstance(segment_bytes, int) or segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be a positive number of bytes, not {segment_bytes!r}")
        if isinstance(keep_recent, bool) or not isinstance(keep_recent, int) or keep_recent < 0:
            raise ValueError(f"keep_recent must be a number of bytes (0: none), not {keep_recent!r}")
        if not 0.0 < filling_threshold <= 1.0:
            raise ValueError(f"filling_threshold must be in (0, 1], not {filling_threshold!r}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.filling_threshold = filling_threshold
        self.keep_recent = keep_recent

        self._state: Literal["new", "open", "closing", "closed"] = "new"
        self._broken: SpoolError | None = None
        # Bookkeeping, touched only on the event loop.
        self._segments: dict[int, int] = {}
        self._total_bytes = 0  # sum of self._segments
        self._active = 0
        self._committed = Position(1, 0, 0)
        self._documents = 0  # unconsumed
        self._queue: deque[_Pending] = deque()
        self._queued_bytes = 0
        self._flusher: asyncio.Task[None] | None = None
        self._commits: set[asyncio.Task[None]] = set()
        self._reading = asyncio.Lock()
        self._data = asyncio.Event()
        # Frames written by this process and not yet consumed, by (segment, offset): a reader
        # that keeps up with the appends gets them without reading the disk and decoding JSON.
        self._recent: dict[tuple[int, int], tuple[tuple[dict[str, Any], ...], tuple[str, ...], int]] = {}
        self._recent_bytes = 0
        # File handles, each touched only on its own thread.
        self._writer: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._lock_fd = -1
        self._write_fd = -1  # writer thread
        self._read_fds: dict[int, int] = {}  # reader thread
        self._read_buffer: tuple[int, int, bytes] = (0, 0, b"")  # reader thread: segment, offset, bytes

    # -- gauges -----------------------------------------------------------------------------------

    @property
    def backlog_documents(self) -> int:
        """Documents appended and not yet committed."""
        return self._documents

    @property
    def backlog_bytes(self) -> int:
        """Bytes of unconsumed frames on disk (a partly consumed frame counts whole)."""
        return self._total_bytes - self._committed.offset

    @property
    def fill_ratio(self) -> float:
        """``backlog_bytes / max_bytes``."""
        return self.backlog_bytes / self.max_bytes

    @property
    def filling(self) -> bool:
        """True at or above ``filling_threshold``: ingest raises an alert on it."""
        return self.fill_ratio >= self.filling_threshold

    # -- life cycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Take the directory and recover its state: after a clean close, a crash or SIGKILL.
        Raises :class:`SpoolCorrupt` for damage it must not repair, :class:`SpoolError` when
        another process holds the directory."""
        if self._state != "new":
            raise SpoolError("a spool is opened once; make a new Spool to reopen the directory")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="spool-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="spool-reader")
        try:
            recovered = await asyncio.get_running_loop().run_in_executor(self._writer, self._recover)
        except BaseException:
            await self._stop_threads()
            self._state = "closed"
            raise
        self._committed = recovered.committed
        self._segments = recovered.segments
        self._total_bytes = sum(recovered.segments.values())
        self._active = max(recovered.segments)
        self._documents = recovered.documents
        if self._documents:
            self._data.set()
        self._state = "open"

    async def close(self) -> None:
        """Finish the appends and commits under way, then release the directory."""
        if self._state != "open":
            return
        self._state = "closing"
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._commits:
            await asyncio.gather(*self._commits, return_exceptions=True)
        async with self._reading:  # a read under way finishes first
            await self._stop_threads()
        self._state = "closed"
        self._data.set()  # waiters wake up and see the spool closed

    async def __aenter__(self) -> Spool:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _stop_threads(self) -> None:
        loop = asyncio.get_running_loop()
        if self._reader is not None:
            await loop.run_in_executor(self._reader, self._close_reader)
            self._reader.shutdown(wait=False)
        if self._writer is not None:
            await loop.run_in_executor(self._writer, self._close_writer)
            self._writer.shutdown(wait=False)

    def _require_open(self) -> None:
        if self._state != "open":
            raise SpoolError(f"the spool in {self.directory} is not open")

    # -- appending --------------------------------------------------------------------------------

    async def append(
        self,
        documents: Sequence[Mapping[str, Any]],
        *,
        handed_over: bool = False,
        lines: Sequence[bytes | None] | None = None,
    ) -> int:
        """Write ``documents`` durably, after every earlier append; return how many were written.
        The return is the acknowledgement. Raises :class:`SpoolFull` (nothing written), ValueError
        or TypeError for a document that is not a JSON object, :class:`SpoolError` when the write
        failed.

        ``handed_over=True`` is the caller's promise that the documents are dicts of JSON values
        alone (strings, finite numbers, booleans, None, lists of those) that nobody changes any
        more, as ingest's ``normalise`` makes them: the spool then keeps them in memory as they
        are instead of copying them, and encodes them the fast way (:func:`_encode`). ``lines``
        may hand over each document's compact JSON already made (orjson's, or None where there
        is none), so it is not made twice."""
        self._require_open()
        if isinstance(documents, str | bytes) or not isinstance(documents, Sequence):
            raise TypeError("documents must be a sequence of mappings")
        if not documents:
            return 0
        frame, texts = _encode(documents, normalised=handed_over, lines=lines)
        if len(frame) > self.max_bytes:
            raise ValueError(f"the batch is {len(frame)} bytes, more than the whole spool ({self.max_bytes})")
        if self._broken is not None:
            raise SpoolError(str(self._broken))
        backlog = self.backlog_bytes + self._queued_bytes
        if backlog + len(frame) > self.max_bytes:
            raise SpoolFull(
                f"the spool holds {backlog} of {self.max_bytes} bytes; a batch of {len(frame)} does not fit"
            )
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieve)
        if handed_over:
            kept = tuple(d if type(d) is dict else _copy(d) for d in documents)
        else:
            kept = tuple(_copy(d) for d in documents)
        self._queue.append(_Pending(frame, len(documents), done, kept, texts))
        self._queued_bytes += len(frame)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        # A caller that gives up waiting does not withdraw the frame: it is written anyway.
        return await asyncio.shield(done)

    async def _flush(self) -> None:
        """Write queued frames in order, as many as fit in one group per write and fsync."""
        loop = asyncio.get_running_loop()
        while self._queue:
            group = [self._queue.popleft()]
            size = len(group[0].frame)
            while self._queue and size + len(self._queue[0].frame) <= _GROUP_BYTES:
                group.append(self._queue.popleft())
                size += len(group[-1].frame)
            self._queued_bytes -= size
            try:
                if self._broken is not None:
                    raise SpoolError(str(self._broken))
                if self._segments[self._active] >= self.segment_bytes:
                    await loop.run_in_executor(self._writer, self._roll, self._active + 1)
                    self._active += 1
                    self._segments[self._active] = 0
                data = b"".join(pending.frame for pending in group)
                where = self._segments[self._active]
                await loop.run_in_executor(self._writer, self._write, data, where)
            except asyncio.CancelledError:
                # The write may go on in its thread without being counted here: appends stop.
                self._broken = SpoolError("an append was interrupted; reopen the spool")
                for pending in [*group, *self._queue]:
                    _fail(pending.done, self._broken)
                self._queue.clear()
                self._queued_bytes = 0
                raise
            except Exception as e:
                error = e if isinstance(e, SpoolError) else SpoolError(f"writing to the spool failed: {e}")
                for pending in group:
                    _fail(pending.done, error)
                continue
            for pending in group:
                if self._recent_bytes + len(pending.frame) <= self.keep_recent:
                    self._recent[(self._active, where)] = (
                        pending.documents,
                        pending.texts,
                        len(pending.frame),
                    )
                    self._recent_bytes += len(pending.frame)
                pending.documents = ()
                pending.texts = ()
                where += len(pending.frame)
            self._segments[self._active] += size
            self._total_bytes += size
            self._documents += sum(pending.count for pending in group)
            self._data.set()
            for pending in group:
                if not pending.done.done():
                    pending.done.set_result(pending.count)

    def _roll(self, number: int) -> None:  # writer thread
        path = self.directory / _segment_name(number)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise SpoolError(f"cannot start segment {path}: {e}") from e
        try:
            if self.fsync:
                fsync_directory(self.directory)  # the name must outlive a crash before its data does
        except OSError as e:
            os.close(fd)
            self._broken = SpoolError(f"fsync of {self.directory} failed ({e}); reopen the spool")
            raise self._broken from e
        os.close(self._write_fd)
        self._write_fd = fd

    def _write(self, data: bytes, size_before: int) -> None:  # writer thread
        try:
            write_all(self._write_fd, data)
        except OSError as e:
            try:
                os.ftruncate(self._write_fd, size_before)
            except OSError as e2:
                self._broken = SpoolError(f"a failed write could not be cut off ({e2}); reopen the spool")
                raise self._broken from e
            raise SpoolError(f"writing to the spool failed: {e}") from e
        if self.fsync:
            try:
                os.fdatasync(self._write_fd)
            except OSError as e:
                self._broken = SpoolError(f"fsync of the spool failed ({e}); reopen the spool")
                raise self._broken from e

    # -- reading ----------------------------------------------------------------------------------

    async def wait_for_data(self, timeout: float | None = None) -> bool:
        """True as soon as there is something to read; False after ``timeout`` seconds without,
        or when the spool is closed meanwhile."""
        self._require_open()
        if self._documents:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._data.wait()
        except TimeoutError:
            return False
        return self._state == "open" and self._documents > 0

    async def read(self, max_documents: int, *, after: Batch | None = None) -> Batch | None:
        """Up to ``max_documents`` of the oldest unconsumed documents, in order; None when there
        are none. Starts at the committed position every time: what is not committed is read
        again. Raises :class:`SpoolCorrupt` for a damaged frame.

        ``after``, a batch read before and not committed yet, reads the documents that follow it
        instead, so a reader can take the next batch while the previous one is being written
        (commits still go in order, and a read without ``after`` starts at the committed position
        again)."""
        if isinstance(max_documents, bool) or not isinstance(max_documents, int) or max_documents < 1:
            raise ValueError(f"max_documents must be a positive integer, not {max_documents!r}")
        self._require_open()
        async with self._reading:
            self._require_open()
            if not self._documents:
                return None
            start = self._committed
            if after is not None:
                if after.start < start or after.end < after.start:
                    raise ValueError("the batch to read after is committed already or not of this spool")
                start = after.end
                if (
                    start.skip == 0
                    and start.offset == self._segments.get(start.segment)
                    and start.segment != self._active
                ):
                    start = Position(start.segment + 1, 0, 0)  # as the commit of ``after`` will put it
            sizes = [(number, size) for number, size in self._segments.items() if number >= start.segment]
            if not sizes or (start.segment == sizes[-1][0] and start.offset >= sizes[-1][1]):
                return None  # nothing after it yet
            batch = self._read_recent(start, sizes, max_documents)
            if batch is None:
                loop = asyncio.get_running_loop()
                batch = await loop.run_in_executor(self._reader, self._read, start, sizes, max_documents)
            return batch if batch.documents else None

    def _read_recent(self, start: Position, sizes: list[tuple[int, int]], limit: int) -> Batch | None:
        """The batch :meth:`_read` would read, from the frames held in memory; None when one of
        them is not held (then the disk is read)."""
        try:
            return _walk(start, sizes, limit, self._held_frame)
        except _NotHeld:
            return None

    def _held_frame(self, number: int, offset: int, skip: int, want: int) -> _Taken:
        held = self._recent.get((number, offset))
        if held is None:
            raise _NotHeld
        documents, texts, length = held
        return documents[skip : skip + want], texts[skip : skip + want], length, len(documents)

    def _forget_recent(self, before: Position) -> None:
        """Drop the frames held in memory that end at or before ``before`` (consumed)."""
        for key in [key for key in self._recent if key < (before.segment, before.offset)]:
            self._recent_bytes -= self._recent.pop(key)[2]

    def _read(self, start: Position, sizes: list[tuple[int, int]], limit: int) -> Batch:  # reader thread
        segment_size = dict(sizes)

        def frame(number: int, offset: int, skip: int, want: int) -> _Taken:
            buffer, at = self._frame_bytes(number, offset, segment_size[number])
            try:
                length, count = _check_frame(buffer, at)
            except _BadFrame as e:
                raise SpoolCorrupt(self.directory / _segment_name(number), offset, str(e)) from None
            try:
                lines = buffer[at + _HEADER.size : at + length].decode().split("\n")[skip : skip + want]
                return [json.loads(line) for line in lines], lines, length, count
            except ValueError as e:
                raise SpoolCorrupt(self.directory / _segment_name(number), offset, f"bad JSON: {e}") from None

        return _walk(start, sizes, limit, frame)

    def _frame_bytes(self, number: int, offset: int, size: int) -> tuple[bytes, int]:  # reader thread
        """A buffer holding the whole frame at ``offset`` and where in it the frame starts."""
        held_number, held_offset, held = self._read_buffer
        if held_number == number and held_offset <= offset:
            at = offset - held_offset
            if len(held) - at >= _HEADER.size:
                length = _HEADER.size + _HEADER.unpack_from(held, at)[1]
                if len(held) - at >= length:
                    return held, at
        fd = self._read_fds.get(number)
        if fd is None:
            path = self.directory / _segment_name(number)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise SpoolError(f"cannot read {path}: {e}") from e
            self._read_fds[number] = fd
        want = min(size - offset, _READ_CHUNK)
        data = os.pread(fd, want, offset)
        if len(data) >= _HEADER.size:
            length = _HEADER.size + _HEADER.unpack_from(data, 0)[1]
            if length > len(data) and offset + length <= size:
                data = os.pread(fd, length, offset)
        self._read_buffer = (number, offset, data)
        return data, 0

    async def commit(self, batch: Batch) -> None:
        """Mark ``batch`` consumed, durably: after a crash, reading resumes after it. Batches are
        committed in the order they were read; a batch committed twice is refused (ValueError)."""
        self._require_open()
        task = asyncio.create_task(self._commit(batch))
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)
        # Once the checkpoint is being written, the bookkeeping must follow it even if the caller
        # stops waiting: the segments behind it are deleted.
        await asyncio.shield(task)

    async def _commit(self, batch: Batch) -> None:
        async with self._reading:
            if batch.start != self._committed:
                raise ValueError(
                    "the batch does not start at the committed position: it was committed already "
                    "or was read before another commit"
                )
            end = batch.end
            size = self._segments.get(end.segment)
            if end < batch.start or size is None or end.offset > size:
                raise ValueError("the batch does not end inside this spool")
            if end.skip == 0 and end.offset == size and end.segment != self._active:
                end = Position(end.segment + 1, 0, 0)  # segments are numbered without gaps
            done = [number for number in self._segments if number < end.segment]
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._reader, self._write_checkpoint, end, done)
            self._committed = end
            self._forget_recent(end)
            for number in done:
                self._total_bytes -= self._segments.pop(number)
            self._documents -= len(batch.documents)
            if not self._documents:
                self._data.clear()

    def _write_checkpoint(self, position: Position, done: list[int]) -> None:  # reader thread
        text = json.dumps({"segment": position.segment, "offset": position.offset, "skip": position.skip})
        temporary = self.directory / _CHECKPOINT_TMP
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                write_all(fd, text.encode())
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.directory / _CHECKPOINT)
            if self.fsync:
                fsync_directory(self.directory)
        except OSError as e:
            raise SpoolError(f"writing the spool checkpoint failed: {e}") from e
        for number in done:
            fd = self._read_fds.pop(number, -1)
            if fd >= 0:
                os.close(fd)
            if self._read_buffer[0] == number:
                self._read_buffer = (0, 0, b"")
            # A segment left behind by a failed unlink is removed again by the next open.
            with contextlib.suppress(OSError):
                os.unlink(self.directory / _segment_name(number))

    def _close_reader(self) -> None:  # reader thread
        for fd in self._read_fds.values():
            os.close(fd)
        self._read_fds.clear()
        self._read_buffer = (0, 0, b"")

    # -- recovery ---------------------------------------------------------------------------------

    def _recover(self) -> _Recovered:  # writer thread
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise SpoolError(f"the spool in {self.directory} is already open (its lock is held)") from None
        try:
            return self._recover_locked()
        except BaseException:
            self._close_writer()
            raise

    def _recover_locked(self) -> _Recovered:  # writer thread
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.directory / _CHECKPOINT_TMP)
        numbers = sorted(
            n for n in (_segment_number(p.name) for p in self.directory.iterdir()) if n is not None
        )
        committed = self._read_checkpoint()
        checkpoint = self.directory / _CHECKPOINT
        if committed is None:
            committed = Position(numbers[0] if numbers else 1, 0, 0)
        elif committed.segment not in numbers:
            # The committed segment is deleted only after the checkpoint has moved past it.
            raise SpoolCorrupt(
                checkpoint, 0, f"segment {committed.segment} of the committed position is missing"
            )
        for number in [n for n in numbers if n < committed.segment]:
            os.unlink(self.directory / _segment_name(number))  # consumed; a crash came before its deletion
            numbers.remove(number)
        if not numbers:
            self._write_fd = os.open(
                self.directory / _segment_name(committed.segment),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                0o600,
            )
            if self.fsync:
                fsync_directory(self.directory)
            return _Recovered(committed, {committed.segment: 0}, 0)
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            raise SpoolCorrupt(
                self.directory, 0, f"segments are missing between {numbers[0]} and {numbers[-1]}"
            )

        segments: dict[int, int] = {}
        documents = 0
        for number in numbers:
            # The consumed head of the committed segment is neither read nor checked.
            start = committed.offset if number == committed.segment else 0
            started = number == committed.segment and committed.skip > 0
            frames, size = self._scan(number, start, last=number == numbers[-1], started=started)
            segments[number] = size
            documents += sum(frames.values())
            if number == committed.segment and committed.skip:
                if committed.skip >= frames.get(start, 0):
                    raise SpoolCorrupt(
                        checkpoint, 0, f"the committed position {committed} is not in the data"
                    )
                documents -= committed.skip
        self._write_fd = os.open(
            self.directory / _segment_name(numbers[-1]), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        )
        return _Recovered(committed, segments, documents)

    def _read_checkpoint(self) -> Position | None:  # writer thread
        path = self.directory / _CHECKPOINT
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
            values = [data["segment"], data["offset"], data["skip"]]
        except (ValueError, TypeError, KeyError) as e:
            raise SpoolCorrupt(path, 0, f"unreadable checkpoint: {e}") from None
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values) or values[0] == 0:
            raise SpoolCorrupt(path, 0, "unreadable checkpoint: the position is not three whole numbers")
        return Position(*values)

    def _scan(
        self, number: int, start: int, *, last: bool, started: bool = False
    ) -> tuple[dict[int, int], int]:  # writer thread
        """Check every frame of a segment from ``start``: the document count of each frame by
        offset, and the segment's size. A torn tail of the newest segment is truncated away,
        unless it is the frame at ``start`` and that one was ``started`` (partly consumed, so it
        was acknowledged)."""
        path = self.directory / _segment_name(number)
        with path.open("rb") as file:
            if os.fstat(file.fileno()).st_size < start:
                raise SpoolCorrupt(path, start, "the committed position is past the end of the segment")
            file.seek(start)
            data = file.read()
        frames: dict[int, int] = {}
        at = 0
        while at < len(data):
            try:
                length, count = _check_frame(data, at)
            except _BadFrame as e:
                following = _valid_frame_after(data, at)
                if not last or following is not None or (at == 0 and started):
                    reason = (
                        str(e)
                        if following is None
                        else f"{e}; an intact frame follows at {start + following}"
                    )
                    raise SpoolCorrupt(path, start + at, reason) from None
                self._truncate(path, start + at, start + len(data), str(e))
                break
            frames[start + at] = count
            at += length
        return frames, start + at

    def _truncate(self, path: Path, at: int, size: int, reason: str) -> None:  # writer thread
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, at)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        # A torn tail is what a crash during an append leaves; it was never acknowledged.
        _log.warning(
            "spool torn tail cut off", file=str(path), offset=at, dropped_bytes=size - at, reason=reason
        )

    def _close_writer(self) -> None:  # writer thread
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1
