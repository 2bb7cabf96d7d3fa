"""The OpenSearch store for the contract suite: opensearch-py against the session's osmem-server,
with an index prefix of its own (its indices and template removed afterwards)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from soc.stores.search import OpenSearchEventStore
from tests.soc import search_servers


@asynccontextmanager
async def open_store(tmp_path: Path) -> AsyncIterator[OpenSearchEventStore]:
    url = search_servers.osmem_url()
    store = OpenSearchEventStore(url, prefix=f"test-{secrets.token_hex(6)}")
    try:
        await store.open()
        yield store
    finally:
        await store.close()
        await search_servers.remove_opensearch_prefix(url, store.prefix)
