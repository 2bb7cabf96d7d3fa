"""A process that ingests batches until killed: ``python -m tests.soc.ingest_child DIR``.

Each batch is accepted (spooled) and its ids printed, one line per batch, once ``accept``
returned — that is the acknowledgement. The writer runs alongside into the SQLite store."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from soc.ingest import Ingest
from soc.spool import Spool
from soc.stores.sqlite import SqliteEventStore

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


async def main(directory: Path) -> None:
    async with Spool(directory / "spool", max_bytes=256 << 20) as spool:
        store = SqliteEventStore(directory / "events.db")
        ingest = Ingest(spool, store, batch_size=50)
        writer = asyncio.create_task(ingest.run())
        n = 0
        while True:
            batch = []
            for _ in range(20):
                n += 1
                batch.append(
                    {
                        "@timestamp": (T0 + timedelta(milliseconds=n)).isoformat(),
                        "event.id": f"k{n:07d}",
                        "event.action": "sign-in",
                        "user.name": f"user{n % 7}",
                    }
                )
            await ingest.accept(batch)
            print(" ".join(d["event.id"] for d in batch), flush=True)
            await asyncio.sleep(0)
        writer.cancel()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
