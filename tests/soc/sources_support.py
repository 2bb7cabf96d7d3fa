"""What the source tests share: a real spool + SQLite store pipeline, and waiting for it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from core.events import RecordingEmitter
from core.eventstore import Query
from soc.ingest import Ingest
from soc.spool import Spool
from soc.stores.sqlite import SqliteEventStore


class Pipeline:
    """Ingest into a spool and the SQLite store, with its writer running."""

    def __init__(self, root: Path, *, max_bytes: int = 64 << 20) -> None:
        self.spool = Spool(root / "spool", max_bytes=max_bytes, segment_bytes=64 << 10)
        self.store = SqliteEventStore(root / "events.db")
        self.emitted = RecordingEmitter()
        self.ingest = Ingest(self.spool, self.store, events=self.emitted, batch_size=200, max_backoff=0.2)
        self.writer: asyncio.Task[None] | None = None

    async def start(self, *, writer: bool = True) -> Pipeline:
        await self.spool.open()
        if writer:
            self.writer = asyncio.create_task(self.ingest.run())
        return self

    async def stop(self) -> None:
        if self.writer is not None:
            self.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.writer
        await self.spool.close()
        await self.store.close()

    async def stored(self) -> list[dict[str, Any]]:
        """Every stored document, oldest first."""
        hits: list[dict[str, Any]] = []
        after = None
        while True:
            page = await self.store.search(Query(size=1000, ascending=True, after=after))
            hits += page.hits
            if len(page.hits) < 1000:
                return hits
            after = page.cursor

    async def stored_ids(self) -> list[str]:
        return [h["event.id"] for h in await self.stored()]

    async def wait_stored(self, count: int, timeout: float = 20.0) -> list[str]:
        """The stored ids once there are at least ``count`` (and the spool is drained)."""
        deadline = time.monotonic() + timeout
        while True:
            assert await self.ingest.drain(timeout)
            ids = await self.stored_ids()
            if len(ids) >= count:
                return ids
            assert time.monotonic() < deadline, f"{len(ids)} of {count} stored"
            await asyncio.sleep(0.05)


async def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


class Recording:
    """An acceptor in front of ingest that records what was accepted, and can hold a call
    before (``hold_before``) or after (``hold_after``) the real accept, like a crash there."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.accepted: list[str] = []
        self.calls = 0
        self.hold_before = False
        self.hold_after = False
        self.held = asyncio.Event()

    async def accept(
        self, documents: Sequence[Mapping[str, Any]], *, received: datetime | None = None
    ) -> int:
        self.calls += 1
        if self.hold_before:
            self.held.set()
            await asyncio.Event().wait()  # until cancelled
        n = await self.ingest.accept(documents, received=received)
        self.accepted += [str(d.get("event.id")) for d in documents]
        if self.hold_after:
            self.held.set()
            await asyncio.Event().wait()
        return n
