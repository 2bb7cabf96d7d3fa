"""Search servers for the test session: osmem-server, and a header-rewriting hop for the
``elasticsearch`` client.

No Elasticsearch or OpenSearch can be installed on these machines; the ``osmem-server`` package
bundles an in-memory OpenSearch-compatible server that answers opensearch-py. One runs for the
whole session on a free loopback port, started on first use (:func:`osmem_url`) and stopped by
:func:`stop` (the session fixture in tests/soc/conftest.py); it also exits with this process, since
it watches our pid and its stdin. Stores get a fresh index prefix each, so they share it.

The official ``elasticsearch`` client cannot talk to osmem directly: it sends
``application/vnd.elasticsearch+json; compatible-with=N`` (and ``+x-ndjson``) media types, which
osmem answers with 406, and it checks for ``X-Elastic-Product: Elasticsearch`` on every answer
(osmem sends it today; the hop sets it anyway). :class:`HeaderHop` is a small aiohttp proxy, run on
a thread of its own, that rewrites those headers both ways and changes nothing else, so the real
client and its real requests reach osmem.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
from typing import Any

import aiohttp
from aiohttp import web
from osmem_server import OsmemServer

__all__ = [
    "HeaderHop",
    "elasticsearch_url",
    "free_port",
    "osmem_url",
    "remove_elasticsearch_prefix",
    "remove_opensearch_prefix",
    "start_osmem",
    "stop",
    "stop_osmem",
]

_COMPAT = re.compile(r"application/vnd\.elasticsearch\+([\w-]+)\s*;\s*compatible-with=\d+", re.IGNORECASE)
# Hop-by-hop headers (RFC 9110, section 7.6.1) and those aiohttp sets itself.
_NOT_FORWARDED = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade"}

_lock = threading.Lock()
_osmem: OsmemServer | None = None
_hop: HeaderHop | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_osmem(port: int | None = None) -> OsmemServer:
    """A new osmem-server on ``port`` (a free one when None); the caller stops it with
    :func:`stop_osmem`."""
    return OsmemServer.start(japanese=False, addr=f"127.0.0.1:{port or 0}", startup_timeout=30.0)


def stop_osmem(server: OsmemServer, *, kill: bool = False) -> None:
    """Stop ``server``: gracefully (its stdin closed), or at once with ``kill``."""
    if kill and server.process.poll() is None:
        server.process.kill()
        server.process.wait(10)
    server.close()
    for pipe in (server.process.stdin, server.process.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def osmem_url() -> str:
    """The session's osmem-server, started on first use."""
    global _osmem
    with _lock:
        if _osmem is None or _osmem.process.poll() is not None:
            if _osmem is not None:
                stop_osmem(_osmem)
            _osmem = start_osmem()
        return _osmem.url


def elasticsearch_url() -> str:
    """The session's header hop in front of the session's osmem-server."""
    global _hop
    target = osmem_url()
    with _lock:
        if _hop is None or _hop.target != target:
            if _hop is not None:
                _hop.close()
            _hop = HeaderHop(target)
        return _hop.url


def stop() -> None:
    """Stop what :func:`osmem_url` and :func:`elasticsearch_url` started."""
    global _osmem, _hop
    with _lock:
        if _hop is not None:
            _hop.close()
            _hop = None
        if _osmem is not None:
            stop_osmem(_osmem)
            _osmem = None


def _to_plain(value: str) -> str:
    return _COMPAT.sub(r"application/\1", value)


class HeaderHop:
    """An HTTP hop on a free loopback port in front of ``target``: Elasticsearch's compatibility
    media types become plain ones on the way in, and answers get ``X-Elastic-Product``."""

    def __init__(self, target: str, *, port: int = 0) -> None:
        self.target = target.rstrip("/")
        self._ready = threading.Event()
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="es-header-hop", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the header hop did not start")
        if self._error is not None:
            raise RuntimeError(f"the header hop did not start: {self._error}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def close(self) -> None:
        if self._loop is not None and self._stopped is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported to the starting thread
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        async with aiohttp.ClientSession(auto_decompress=False) as self._session:
            app = web.Application(client_max_size=256 * 1024 * 1024)
            app.router.add_route("*", "/{path:.*}", self._forward)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            try:
                site = web.TCPSite(runner, "127.0.0.1", self._port)
                await site.start()
                server = site._server
                assert isinstance(server, asyncio.Server)
                self._port = int(server.sockets[0].getsockname()[1])
                self._ready.set()
                await self._stopped.wait()
            finally:
                await runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: _to_plain(v) for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        body = await request.read()
        url = self.target + request.rel_url.raw_path_qs
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=body or None, allow_redirects=False
            ) as upstream:
                content = await upstream.read()
                answer: dict[str, Any] = {
                    k: v for k, v in upstream.headers.items() if k.lower() not in _NOT_FORWARDED
                }
                status = upstream.status
        except aiohttp.ClientError:
            return web.Response(status=502, text="upstream unreachable")
        answer["X-Elastic-Product"] = "Elasticsearch"
        return web.Response(status=status, body=content, headers=answer)


async def remove_opensearch_prefix(url: str, prefix: str) -> None:
    """Delete the indices and the index template of a store's ``prefix`` (opensearch-py)."""
    from opensearchpy import AsyncOpenSearch, NotFoundError

    client = AsyncOpenSearch(hosts=[url], max_retries=0)
    try:
        rows = await client.cat.indices(index=f"{prefix}-events-*", params={"format": "json", "h": "index"})
        names = [row["index"] for row in rows]
        if names:
            await client.indices.delete(index=",".join(names), params={"ignore_unavailable": "true"})
        with contextlib.suppress(NotFoundError):
            await client.indices.delete_index_template(name=f"{prefix}-events")
    finally:
        await client.close()


async def remove_elasticsearch_prefix(
    url: str, prefix: str, *, api_key: str | None = None, ca_certs: str | None = None
) -> None:
    """Delete the indices and the index template of a store's ``prefix`` (the official client;
    index names are spelt out, since a real Elasticsearch refuses wildcard deletes)."""
    from elasticsearch import AsyncElasticsearch, NotFoundError

    client = AsyncElasticsearch(hosts=[url], api_key=api_key, ca_certs=ca_certs, max_retries=0)
    try:
        rows = (await client.cat.indices(index=f"{prefix}-events-*", format="json", h="index")).body
        names = [row["index"] for row in rows]
        if names:
            await client.indices.delete(index=",".join(names), ignore_unavailable=True)
        with contextlib.suppress(NotFoundError):
            await client.indices.delete_index_template(name=f"{prefix}-events")
    finally:
        await client.close()
