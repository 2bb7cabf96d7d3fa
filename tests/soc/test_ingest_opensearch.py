"""Ingest into OpenSearch through a store outage (issue 7, acceptance 2): osmem-server killed
mid-stream, ingest keeps acknowledging, and after a new server comes up on the same address every
event acknowledged meanwhile is stored exactly once, in order.

osmem-server keeps its indices in memory, so what it held before the kill dies with it; the
test checks the events the spool had to carry through the outage, and that nothing is doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.eventstore import Query
from soc.ingest import Ingest
from soc.spool import Spool
from soc.stores.search import OpenSearchEventStore
from tests.soc.search_servers import free_port, start_osmem, stop_osmem

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def event(n: int) -> dict[str, Any]:
    return {
        "@timestamp": (T0 + timedelta(milliseconds=n)).isoformat().replace("+00:00", "Z"),
        "event.id": f"os{n:05d}",
        "event.action": "access",
        "user.name": f"user{n % 7}",
    }


async def _stored(store: OpenSearchEventStore) -> list[str]:
    ids: list[str] = []
    after = None
    while True:
        page = await store.search(Query(size=500, ascending=True, after=after))
        ids += [hit["event.id"] for hit in page.hits]
        if len(page.hits) < 500:
            return ids
        after = page.cursor


async def test_a_killed_search_server_delays_everything_and_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    port = free_port()
    server = start_osmem(port)
    spool = Spool(tmp_path / "spool", max_bytes=64 << 20, segment_bytes=256 << 10)
    await spool.open()
    store = OpenSearchEventStore(server.url, prefix="outage")
    ingest = Ingest(spool, store, batch_size=200, max_backoff=0.2)
    writer = asyncio.create_task(ingest.run())
    try:
        await ingest.accept([event(n) for n in range(300)])
        assert await ingest.drain(20)
        stop_osmem(server, kill=True)  # mid-stream: the store is gone
        for start in range(300, 1500, 100):
            assert await ingest.accept([event(n) for n in range(start, start + 100)]) == 100
        deadline = time.monotonic() + 10
        while ingest.store_failures < 2:
            assert time.monotonic() < deadline, "the writer never met the outage"
            await asyncio.sleep(0.05)
        assert spool.backlog_documents == 1200  # acknowledged, on disk, waiting
        server = start_osmem(port)  # back, on the same address (empty: osmem keeps no files)
        assert await ingest.drain(60)
        assert ingest.store_down_since is None
        ids = await _stored(store)
        assert ids == [f"os{n:05d}" for n in range(300, 1500)]  # each once, in order
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await spool.close()
        await store.close()
        stop_osmem(server)
