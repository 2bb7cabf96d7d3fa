"""SOC ingest throughput: events per second through the spool into each event store.

The path measured is the product's: ``Ingest.accept`` (normalise, append to the spool with
fsync, acknowledge) in batches of ``BATCH`` events from a source task, while the writer task
reads the spool and writes to the store in batches of 1,000, committing after each write. The
figure is events acknowledged *and* stored (spool drained) per second of wall time, over
``EVENTS`` events shaped like a gateway access event (about 600 bytes, ids made as the gateway
makes them). One event loop on one core; the SQLite store's own thread and the spool's threads
run beside it.

* ``sqlite_ingest_eps``: into a new SQLite store file;
* ``opensearch_ingest_eps``: into OpenSearch (osmem-server, an in-memory server started here;
  null when the package is not installed).

Detection figures (``detect_p50_ms``, ``detect_p99_ms``, ``scheduled_rule_s_1m``) join when the
detections land.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.events import new_event_id
from core.eventstore import EventStore
from soc.ingest import Ingest
from soc.spool import Spool

EVENTS = int(os.environ.get("BENCH_SOC_EVENTS", "100000"))
BATCH = 500
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def _event(n: int) -> dict[str, Any]:
    return {
        "@timestamp": (T0 + timedelta(milliseconds=n * 7))
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z"),
        "event.id": new_event_id(),
        "event.kind": "event",
        "event.category": ["web"],
        "event.action": "access",
        "event.outcome": "success" if n % 9 else "failure",
        "event.dataset": "onegate.gateway",
        "user.name": f"user{n % 997}",
        "session.id": f"s{n % 4001:08d}",
        "source.ip": f"10.{n % 7}.{n % 251}.{n % 253}",
        "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/130.0",
        "url.path": f"/hr/payroll/{n % 300}",
        "http.request.method": "GET",
        "http.response.status_code": 200 if n % 9 else 403,
        "http.response.bytes": 5000 + n % 4096,
        "onegate.app": "hr",
        "onegate.decision": "allow" if n % 9 else "deny",
        "onegate.rule_ids": ["hr-staff"],
        "event.duration": 1_200_000 + n % 50_000,
    }


async def _through(store: EventStore, spool_dir: Path, events: list[dict[str, Any]]) -> float:
    async with Spool(spool_dir, max_bytes=1 << 30) as spool:
        ingest = Ingest(spool, store, batch_size=1000)
        writer = asyncio.create_task(ingest.run())
        started = time.perf_counter()
        for i in range(0, len(events), BATCH):
            await ingest.accept(events[i : i + BATCH])
        if not await ingest.drain(600):
            raise RuntimeError("the spool did not drain")
        elapsed = time.perf_counter() - started
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    if ingest.written != len(events):
        raise RuntimeError(f"{ingest.written} of {len(events)} events stored")
    return len(events) / elapsed


@contextlib.asynccontextmanager
async def _opensearch(work: Path) -> AsyncIterator[EventStore | None]:
    """The contract suite's OpenSearch store on an osmem-server started here (its indices
    removed afterwards), or None where the test helpers are not available."""
    try:
        from tests.soc import search_servers
        from tests.soc.backends.opensearch import open_store
    except ImportError:
        yield None
        return
    try:
        async with open_store(work) as store:
            yield store
    finally:
        search_servers.stop()


async def _run() -> dict[str, Any]:
    from soc.stores.sqlite import SqliteEventStore

    work = Path(tempfile.mkdtemp(prefix="onegate-bench-soc-"))
    try:
        events = [_event(n) for n in range(EVENTS)]
        store = SqliteEventStore(work / "events.db")
        try:
            sqlite_eps = await _through(store, work / "spool-sqlite", events)
        finally:
            await store.close()
        opensearch_eps = None
        async with _opensearch(work) as search:
            if search is not None:
                opensearch_eps = await _through(
                    search, work / "spool-opensearch", [_event(n) for n in range(EVENTS)]
                )
        return {
            "sqlite_ingest_eps": round(sqlite_eps),
            "opensearch_ingest_eps": round(opensearch_eps) if opensearch_eps else None,
            "events": EVENTS,
            "batch": BATCH,
            "cpus": os.cpu_count(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run() -> dict[str, Any]:
    return asyncio.run(_run())
