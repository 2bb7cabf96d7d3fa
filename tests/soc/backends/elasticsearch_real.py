"""The Elasticsearch store against a real Elasticsearch, when ``ELASTICSEARCH_URL`` names one
(``https://user:password@host:9200``; ``ELASTICSEARCH_API_KEY`` and ``ELASTICSEARCH_CA_CERTS``
optional). Each store has an index prefix of its own; its indices and template are removed
afterwards. The contract suite lists this backend only when the variable is set."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from soc.stores.search import ElasticsearchEventStore
from tests.soc import search_servers


@asynccontextmanager
async def open_store(tmp_path: Path) -> AsyncIterator[ElasticsearchEventStore]:
    url = os.environ["ELASTICSEARCH_URL"]
    api_key = os.environ.get("ELASTICSEARCH_API_KEY") or None
    ca_certs = os.environ.get("ELASTICSEARCH_CA_CERTS") or None
    store = ElasticsearchEventStore(
        url, prefix=f"onegate-test-{secrets.token_hex(6)}", api_key=api_key, ca_certs=ca_certs
    )
    try:
        await store.open()
        yield store
    finally:
        await store.close()
        await search_servers.remove_elasticsearch_prefix(
            url, store.prefix, api_key=api_key, ca_certs=ca_certs
        )
