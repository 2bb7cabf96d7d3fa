"""The Elasticsearch store for the contract suite: the official client, through the header hop,
against the session's osmem-server, with an index prefix of its own (removed afterwards)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from soc.stores.search import ElasticsearchEventStore
from tests.soc import search_servers


@asynccontextmanager
async def open_store(tmp_path: Path) -> AsyncIterator[ElasticsearchEventStore]:
    url = search_servers.elasticsearch_url()
    store = ElasticsearchEventStore(url, prefix=f"test-{secrets.token_hex(6)}")
    try:
        await store.open()
        yield store
    finally:
        await store.close()
        await search_servers.remove_elasticsearch_prefix(url, store.prefix)
