"""The SQLite event store for the contract suite: a new database file in the test's own directory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from soc.stores.sqlite import SqliteEventStore


@contextlib.asynccontextmanager
async def open_store(tmp_path: Path) -> AsyncIterator[SqliteEventStore]:
    store = SqliteEventStore(tmp_path / "events.db")
    try:
        yield store
    finally:
        await store.close()
