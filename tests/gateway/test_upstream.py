"""gateway.upstream against real servers on 127.0.0.1.

``serve(app)`` runs a Starlette app under uvicorn in the test's own event loop (the normal
cases); ``RawServer`` is a tiny asyncio server whose every byte the test writes (framing
cases, stale connections, slow heads, HEAD / 1xx / 204 / 304 ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.upstream import Origin, UpstreamError, UpstreamPool, UpstreamResponse

MiB = 1024 * 1024
BLOCK = b"\xa5" * MiB

# -- servers -------------------------------------------------------------------------------


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[Origin]:
    """``app`` under uvicorn (httptools) on a free port, in this event loop."""
    sock = _listener()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", http="httptools", ws="none")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        yield Origin("http", "127.0.0.1", port)
    finally:
        server.should_exit = True
        await task
        sock.close()


def starlette_app() -> tuple[Starlette, dict[str, Any]]:
    """Echo, sized bodies, downloads and uploads; ``seen["ports"]`` counts client connections."""
    seen: dict[str, Any] = {"ports": set(), "requests": 0}

    def note(request: Request) -> None:
        assert request.client is not None
        seen["ports"].add(request.client.port)
        seen["requests"] += 1

    async def echo(request: Request) -> Response:
        note(request)
        digest, size = hashlib.sha256(), 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        assert request.client is not None
        return JSONResponse(
            {
                "method": request.method,
                "target": request.scope["raw_path"].decode()
                + ("?" + request.scope["query_string"].decode() if request.scope["query_string"] else ""),
                "headers": [[k.decode(), v.decode()] for k, v in request.headers.raw],
                "size": size,
                "sha256": digest.hexdigest(),
                "port": request.client.port,
            }
        )

    async def sized(request: Request) -> Response:
        note(request)
        size = int(request.query_params["size"])
        body = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        if request.query_params.get("chunked"):

            async def parts() -> AsyncIterator[bytes]:
                for i in range(0, size, 1000):
                    yield body[i : i + 1000]

            return StreamingResponse(parts(), media_type="application/octet-stream")
        return Response(body, media_type="application/octet-stream")

    async def download(request: Request) -> Response:
        note(request)
        size = int(request.query_params["size"])

        async def blocks() -> AsyncIterator[bytes]:
            for _ in range(size // MiB):
                yield BLOCK

        return StreamingResponse(blocks(), headers={"content-length": str(size)})

    methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]
    app = Starlette(
        routes=[
            Route("/sized", sized),
            Route("/download", download),
            Route("/{path:path}", echo, methods=methods),
        ]
    )
    return app, seen


Handler = Callable[["Peer"], Awaitable[None]]


class Peer:
    """One connection of a :class:`RawServer`, seen from the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        self.reader = reader
        self.writer = writer
        self.number = number
        self.eof = asyncio.Event()

    async def request(self) -> tuple[bytes, dict[bytes, bytes], bytes] | None:
        """The next request: (head, headers by lower-case name, de-framed body); None at EOF."""
        try:
            return await self._request()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eof.set()
            return None

    async def _request(self) -> tuple[bytes, dict[bytes, bytes], bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        headers: dict[bytes, bytes] = {}
        for line in head.split(b"\r\n")[1:-2]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            body = await self.reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                body += await self.reader.readexactly(size)
                assert await self.reader.readexactly(2) == b"\r\n"
        else:
            body = b""
        return head, headers, body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_eof(self) -> None:
        """Read (and drop) whatever comes until the client closes."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass
        self.eof.set()

    async def closed(self, timeout: float = 2.0) -> bool:
        """Whether the client closed this connection within ``timeout`` seconds (as seen by
        the handler reading it)."""
        try:
            async with asyncio.timeout(timeout):
                await self.eof.wait()
        except TimeoutError:
            return False
        return True


class RawServer:
    """An asyncio server on 127.0.0.1 running ``handler`` for each connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.peers: list[Peer] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self.origin = Origin("http", "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for peer in self.peers:
            peer.writer.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        peer = Peer(reader, writer, self.connections)
        self.peers.append(peer)
        task = asyncio.create_task(self.handler(peer))  # ours to cancel when the server stops
        self.tasks.append(task)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            await task
        writer.close()


def respond_with(*responses: bytes, then: str = "serve") -> Handler:
    """A handler answering each request of a connection with the next of ``responses`` (the
    last one repeated); ``then="hold"`` keeps the connection open after the last one until the
    client closes, ``"close"`` closes it."""

    async def handler(peer: Peer) -> None:
        index = 0
        while await peer.request() is not None:
            await peer.send(responses[min(index, len(responses) - 1)])
            index += 1
            if index >= len(responses) and then != "serve":
                if then == "hold":
                    await peer.until_eof()
                return

    return handler


async def fetch(  # noqa: PLR0917 - reads like the request line it sends
    pool: UpstreamPool,
    origin: Origin,
    method: str = "GET",
    target: bytes = b"/",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: Any = None,
    *,
    idempotent: bool = True,
) -> tuple[UpstreamResponse, bytes]:
    response = await pool.send(origin, method, target, headers or [], body, idempotent=idempotent)
    try:
        data = b"".join([chunk async for chunk in response.chunks()])
    finally:
        await response.aclose()
    return response, data


async def blocks(count: int, block: bytes = BLOCK) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield block


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    upstream = UpstreamPool(connect_timeout=2, read_timeout=5)
    yield upstream
    await upstream.close()


# -- Origin --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:9001", Origin("http", "127.0.0.1", 9001)),
        ("http://HR.Example.gov/", Origin("http", "hr.example.gov", 80)),
        ("https://hr.example.gov", Origin("https", "hr.example.gov", 443)),
        ("http://[::1]:8080", Origin("http", "::1", 8080)),
        ("http://app_1:8000", Origin("http", "app_1", 8000)),
    ],
)
def test_origin_parse(url: str, expected: Origin) -> None:
    assert Origin.parse(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "required"),
        ("ftp://127.0.0.1", "scheme"),
        ("127.0.0.1:9001", "scheme"),
        ("http://user:pw@127.0.0.1", "credentials"),
        ("http://127.0.0.1:9001/app", "origin only"),
        ("http://127.0.0.1:9001?x=1", "origin only"),
        ("http://127.0.0.1:99999", "valid URL"),
        ("http://127.0.0.1:0", "port"),
        ("http://", "host is required"),
        ("http://exa mple:80", "host name"),
        ("http://[::g]:80", "valid"),
    ],
)
def test_origin_parse_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Origin.parse(url)


def test_origin_authority_and_str() -> None:
    assert Origin.parse("http://[::1]:8080").authority == "[::1]:8080"
    assert str(Origin.parse("https://hr.example.gov")) == "https://hr.example.gov:443"


# -- keep-alive ----------------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection(pool: UpstreamPool) -> None:
    app, seen = starlette_app()
    async with serve(app) as origin:
        for i in range(5):
            response, data = await fetch(pool, origin, target=f"/n/{i}?q=1".encode())
            assert response.status == 200
            assert json.loads(data)["target"] == f"/n/{i}?q=1"
    assert seen["requests"] == 5
    assert len(seen["ports"]) == 1
    assert pool.stats()["created"] == 1
    assert pool.stats()["reused"] == 4


async def test_concurrent_requests_then_lifo_reuse(pool: UpstreamPool) -> None:
    app, seen = starlette_app()
    async with serve(app) as origin:
        first = await pool.send(origin, "GET", b"/a", [], idempotent=True)
        second = await pool.send(origin, "GET", b"/b", [], idempotent=True)
        ports = []
        for response in (first, second):
            ports.append(json.loads(b"".join([c async for c in response.chunks()]))["port"])
            await response.aclose()
        assert ports[0] != ports[1]
        assert pool.stats()["idle"] == 2
        _, data = await fetch(pool, origin, target=b"/c")
        assert json.loads(data)["port"] == ports[1]  # the last one given back
        results = await asyncio.gather(*(fetch(pool, origin, target=b"/d") for _ in range(20)))
        assert 2 <= pool.stats()["open"] == pool.stats()["idle"] <= 20
    assert all(r.status == 200 for r, _ in results)
    assert len(seen["ports"]) <= 20


async def test_max_idle_per_origin_closes_the_surplus() -> None:
    async def slow(peer: Peer) -> None:
        while await peer.request() is not None:
            await asyncio.sleep(0.05)
            await peer.send(OK)

    upstream = UpstreamPool(max_idle_per_origin=2)
    async with RawServer(slow) as server:
        await asyncio.gather(*(fetch(upstream, server.origin) for _ in range(4)))
        assert server.connections == 4
        assert upstream.stats()["idle"] == 2
        await asyncio.sleep(0.05)
        assert upstream.stats()["open"] == 2
        assert sum([await p.closed(0.2) for p in server.peers]) == 2
        await upstream.close()


async def test_idle_connections_expire() -> None:
    upstream = UpstreamPool(idle_timeout=0.2)
    async with RawServer(respond_with(OK)) as server:
        await fetch(upstream, server.origin)
        assert upstream.stats()["idle"] == 1
        assert await server.peers[0].closed(2.0)  # the sweeper closed it
        assert (upstream.stats()["open"], upstream.stats()["idle"]) == (0, 0)
        await fetch(upstream, server.origin)
        assert server.connections == 2
        await upstream.close()


async def test_expired_idle_connection_is_not_taken() -> None:
    upstream = UpstreamPool(idle_timeout=10)
    async with RawServer(respond_with(OK)) as server:
        await fetch(upstream, server.origin)
        upstream.idle_timeout = 0.05  # as if much time had passed, before the sweeper ran
        await asyncio.sleep(0.1)
        await fetch(upstream, server.origin)
        assert server.connections == 2
        assert upstream.stats()["reused"] == 0
        await upstream.close()


@pytest.mark.parametrize(
    ("response", "why"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", "connection close"),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok", "close token"),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", "HTTP/1.0"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", "bytes beyond the body"),
        (b"HTTP/1.1 204 No Content\r\n\r\nEXTRA", "bytes after a body-less response"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", "101"),
    ],
)
async def test_connection_not_reused(pool: UpstreamPool, response: bytes, why: str) -> None:
    async with RawServer(respond_with(response, then="hold")) as server:
        await fetch(pool, server.origin)
        assert await server.peers[0].closed(2.0), why
        await fetch(pool, server.origin)
        assert server.connections == 2, why
        assert pool.stats()["reused"] == 0


async def test_body_until_close_is_read_and_connection_dropped(pool: UpstreamPool) -> None:
    async with RawServer(respond_with(b"HTTP/1.1 200 OK\r\n\r\nto the end", then="close")) as server:
        response, data = await fetch(pool, server.origin)
    assert data == b"to the end"
    assert response.content_length is None
    assert pool.stats()["open"] == 0


async def test_unread_body_closes_the_connection(pool: UpstreamPool) -> None:
    app, seen = starlette_app()
    async with serve(app) as origin:
        response = await pool.send(origin, "GET", b"/download?size=8388608", [], idempotent=True)
        first = await anext(aiter(response.chunks()))
        assert first
        await response.aclose()
        assert pool.stats()["open"] == 0
        await fetch(pool, origin, target=b"/x")
    assert len(seen["ports"]) == 2


async def test_data_on_an_idle_connection_closes_it(pool: UpstreamPool) -> None:
    async def chatty(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        await asyncio.sleep(0.05)
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsneaky")
        await peer.until_eof()

    async with RawServer(chatty) as server:
        await fetch(pool, server.origin)
        assert await server.peers[0].closed(2.0)
        assert pool.stats()["idle"] == 0
        _, data = await fetch(pool, server.origin)
        assert data == b"ok"  # from a new connection, not the unsolicited response
        assert server.connections == 2


# -- bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("size", [0, 1, 5000, 300_000])
async def test_response_bodies(pool: UpstreamPool, size: int, chunked: bool) -> None:
    app, _ = starlette_app()
    target = f"/sized?size={size}{'&chunked=1' if chunked else ''}".encode()
    async with serve(app) as origin:
        response, data = await fetch(pool, origin, target=target)
        again, _ = await fetch(pool, origin, target=target)
    expected = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert response.status == 200
    assert data == expected
    names = [name for name, _ in response.headers]
    assert b"transfer-encoding" not in names
    if chunked:
        assert response.content_length is None
    else:
        assert response.content_length == size
        assert (b"content-length", str(size).encode()) in response.headers
    assert again.status == 200
    assert pool.stats()["created"] == 1


async def test_chunked_response_details_accepted(pool: UpstreamPool) -> None:
    response = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nX-Up: 1\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b"A \r\n, world!!!\r\n"
        b"0\r\nX-Trailer: dropped\r\nX-Other: too\r\n\r\n"
    )
    async with RawServer(respond_with(response)) as server:
        first, data = await fetch(pool, server.origin)
        await fetch(pool, server.origin)
    assert data == b"hello, world!!!"
    assert first.headers == [(b"x-up", b"1")]
    assert server.connections == 1


async def test_response_arriving_byte_by_byte(pool: UpstreamPool) -> None:
    wire = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
        b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: x\r\n\r\n"
    )

    async def dribble(peer: Peer) -> None:
        while await peer.request() is not None:
            for i in range(len(wire)):
                await peer.send(wire[i : i + 1])
                await asyncio.sleep(0)

    async with RawServer(dribble) as server:
        response, data = await fetch(pool, server.origin)
        _, data2 = await fetch(pool, server.origin)
    assert (response.status, data) == (200, b"abc0123456789abcdef")
    assert response.headers == [(b"content-type", b"text/plain")]
    assert data2 == data
    assert server.connections == 1


@pytest.mark.parametrize(
    ("method", "response", "content_length"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"1000"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", None),
        ("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", None),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n", None),
        ("GET", b"HTTP/1.1 304 Not Modified\r\n\r\n", None),
    ],
)
async def test_responses_without_body(
    pool: UpstreamPool, method: str, response: bytes, content_length: bytes | None
) -> None:
    async with RawServer(respond_with(response)) as server:
        first, data = await fetch(pool, server.origin, method)
        assert data == b""
        assert first.content_length == 0
        assert dict(first.headers).get(b"content-length") == content_length
        _, data = await fetch(pool, server.origin, method)
        assert data == b""
        assert server.connections == 1  # nothing was left on the wire


async def test_interim_responses_are_skipped(pool: UpstreamPool) -> None:
    response = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone"
    )
    async with RawServer(respond_with(response)) as server:
        first, data = await fetch(pool, server.origin, "POST", body=b"x")
    assert (first.status, first.reason, data) == (201, b"Created", b"done")
    assert first.headers == [(b"content-length", b"4")]


async def test_switching_protocols_is_returned() -> None:
    upstream = UpstreamPool()
    response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
    async with RawServer(respond_with(response, then="hold")) as server:
        first, data = await fetch(upstream, server.origin)
        assert (first.status, data) == (101, b"")
        assert upstream.stats()["open"] == 0
    await upstream.close()


@pytest.mark.parametrize("declared", [False, True])
async def test_streamed_request_bodies(pool: UpstreamPool, declared: bool) -> None:
    app, seen = starlette_app()
    parts = [b"alpha", b"", b"x" * 100_000, b"omega"]  # the empty part must not end the body

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            await asyncio.sleep(0)
            yield part

    total = sum(map(len, parts))
    headers = [(b"content-length", str(total).encode())] if declared else []
    async with serve(app) as origin:
        response, data = await fetch(pool, origin, "PUT", b"/up", headers, body(), idempotent=True)
        _, again = await fetch(pool, origin, "POST", b"/up", [], b"bytes body", idempotent=False)
    echoed = json.loads(data)
    sent = dict((k, v) for k, v in echoed["headers"])
    assert response.status == 200
    assert echoed["size"] == total
    assert echoed["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    if declared:
        assert sent["content-length"] == str(total)
        assert "transfer-encoding" not in sent
    else:
        assert sent["transfer-encoding"] == "chunked"
        assert "content-length" not in sent
    assert json.loads(again)["size"] == len(b"bytes body")
    assert len(seen["ports"]) == 1


async def test_request_head_framing_and_host(pool: UpstreamPool) -> None:
    heads: list[bytes] = []

    async def record(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            heads.append(request[0])
            await peer.send(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n" if request[0][:4] == b"HEAD" else OK
            )

    async with RawServer(record) as server:
        port = server.port
        await fetch(pool, server.origin, "GET", b"/a?b=c", [(b"accept", b"*/*"), (b"x-one", b"1")])
        await fetch(pool, server.origin, "HEAD", b"/h", [(b"Host", b"hr.example.gov")])
        await fetch(pool, server.origin, "POST", b"/p", [(b"transfer-encoding", b"chunked")], None)
        await fetch(pool, server.origin, "GET", b"/g", [(b"content-length", b"0")], b"")
        await fetch(pool, server.origin, "DELETE", b"/d", [(b"content-length", b"3")], b"abc")
    assert heads == [
        f"GET /a?b=c HTTP/1.1\r\naccept: */*\r\nx-one: 1\r\nhost: 127.0.0.1:{port}\r\n\r\n".encode(),
        b"HEAD /h HTTP/1.1\r\nHost: hr.example.gov\r\n\r\n",
        f"POST /p HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-length: 0\r\n\r\n".encode(),
        f"GET /g HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-length: 0\r\n\r\n".encode(),
        f"DELETE /d HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-length: 3\r\n\r\n".encode(),
    ]
    assert server.connections == 1


@pytest.mark.parametrize(
    ("method", "target", "headers", "body"),
    [
        ("GET", b"/", [(b"x-evil", b"a\r\nGET /admin HTTP/1.1")], None),
        ("GET", b"/", [(b"x-evil", b"a\nb")], None),
        ("GET", b"/", [(b"x-evil", b"a\rb")], None),
        ("GET", b"/", [(b"x-evil\r\nx-more", b"1")], None),
        ("GET", b"/", [(b"x-nul", b"a\x00b")], None),
        ("GET", b"/a b", [], None),
        ("GET", b"/a\r\nHost: x", [], None),
        ("GET", b"", [], None),
        ("GE T", b"/", [], None),
        ("POST", b"/", [(b"content-length", b"5")], b"abc"),
        ("POST", b"/", [(b"content-length", b"-1")], b""),
        ("POST", b"/", [(b"content-length", b"1"), (b"content-length", b"1")], b"a"),
    ],
)
async def test_bad_requests_are_refused_before_sending(
    pool: UpstreamPool, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes | None
) -> None:
    async with RawServer(respond_with(OK)) as server:
        with pytest.raises(UpstreamError) as caught:
            await fetch(pool, server.origin, method, target, headers, body)
        await asyncio.sleep(0.01)
        assert server.connections == 0
    assert caught.value.kind == "protocol"
    assert "\r" not in str(caught.value) and "admin" not in str(caught.value)


@pytest.mark.parametrize(("declared", "sent"), [(10, 11), (10, 9)])
async def test_streamed_body_must_match_its_content_length(
    pool: UpstreamPool, declared: int, sent: int
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"x" * (sent - 1)
        yield b"x"

    async with RawServer(respond_with(OK, then="hold")) as server:
        with pytest.raises(UpstreamError, match="Content-Length") as caught:
            await fetch(
                pool, server.origin, "PUT", b"/", [(b"content-length", str(declared).encode())], body()
            )
        assert await server.peers[0].closed(2.0)
    assert caught.value.kind == "protocol"
    assert pool.stats()["open"] == 0


async def test_body_iterator_exception_propagates(pool: UpstreamPool) -> None:
    class Refused(Exception):
        pass

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        raise Refused

    async with RawServer(respond_with(OK, then="hold")) as server:
        with pytest.raises(Refused):
            await fetch(pool, server.origin, "POST", b"/", [], body(), idempotent=False)
        assert await server.peers[0].closed(2.0)
    assert pool.stats()["open"] == 0


async def test_early_response_stops_the_upload(pool: UpstreamPool) -> None:
    produced = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced
        while True:
            produced += len(BLOCK)
            yield BLOCK

    async def refuse(peer: Peer) -> None:
        await peer.reader.readuntil(b"\r\n\r\n")
        await peer.send(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\n\r\ntoo big!")
        await asyncio.sleep(0.2)  # reads nothing more
        await peer.until_eof()

    async with RawServer(refuse) as server:
        response, data = await fetch(pool, server.origin, "POST", b"/", [], endless(), idempotent=False)
        assert await server.peers[0].closed(2.0)
    assert (response.status, data) == (413, b"too big!")
    assert produced < 64 * MiB
    assert pool.stats()["open"] == 0


# -- memory and backpressure ---------------------------------------------------------------


async def test_256_mib_download_streams_in_bounded_memory(pool: UpstreamPool) -> None:
    app, _ = starlette_app()
    size = 256 * MiB
    async with serve(app) as origin:
        await fetch(pool, origin, target=b"/warm")
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            response = await pool.send(origin, "GET", f"/download?size={size}".encode(), [], idempotent=True)
            total = 0
            async for chunk in response.chunks():
                total += len(chunk)
            await response.aclose()
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    assert total == size
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert pool.stats()["reused"] == 1


async def test_256_mib_upload_streams_in_bounded_memory(pool: UpstreamPool) -> None:
    app, _ = starlette_app()
    size = 256 * MiB
    async with serve(app) as origin:
        await fetch(pool, origin, target=b"/warm")
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            _, data = await fetch(pool, origin, "PUT", b"/upload", [], blocks(size // MiB))
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    digest = hashlib.sha256()
    for _ in range(size // MiB):
        digest.update(BLOCK)
    assert json.loads(data)["size"] == size
    assert json.loads(data)["sha256"] == digest.hexdigest()
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"


async def test_reading_pauses_while_the_body_is_not_consumed(pool: UpstreamPool) -> None:
    size = 64 * MiB
    written = 0

    async def flood(peer: Peer) -> None:
        nonlocal written
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // MiB):
            await peer.send(BLOCK)
            written += MiB
        await peer.until_eof()

    async with RawServer(flood) as server:
        response = await pool.send(server.origin, "GET", b"/", [], idempotent=True)
        await asyncio.sleep(0.3)
        stalled_at = written
        await asyncio.sleep(0.2)
        assert written == stalled_at  # the server is blocked: nobody reads
        assert written < 24 * MiB  # socket buffers and our 256 KiB at most
        total = 0
        async for chunk in response.chunks():
            total += len(chunk)
        await response.aclose()
        assert server.connections == 1
        assert pool.stats()["idle"] == 1
    assert total == size
    assert written == size


async def test_upload_waits_for_the_upstream_to_read(pool: UpstreamPool) -> None:
    produced = 0
    go = asyncio.Event()

    async def counted(count: int) -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(count):
            produced += MiB
            yield BLOCK

    async def late_reader(peer: Peer) -> None:
        await peer.reader.readuntil(b"\r\n\r\n")
        await go.wait()
        received = 0
        while received < 64 * MiB:
            received += len(await peer.reader.read(MiB))
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(received)), received))
        await peer.until_eof()

    headers = [(b"content-length", str(64 * MiB).encode())]
    async with RawServer(late_reader) as server:
        task = asyncio.create_task(fetch(pool, server.origin, "PUT", b"/", headers, counted(64)))
        await asyncio.sleep(0.3)
        held = produced
        assert held < 24 * MiB
        go.set()
        response, data = await task
    assert (response.status, data) == (200, str(64 * MiB).encode())


# -- framing refusals ----------------------------------------------------------------------

HEAD_200 = b"HTTP/1.1 200 OK\r\n"
BAD_RESPONSES = {
    "cl-and-te": HEAD_200 + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-and-cl": HEAD_200 + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "two-content-lengths": HEAD_200 + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "same-content-length-twice": HEAD_200 + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "content-length-list": HEAD_200 + b"Content-Length: 5, 5\r\n\r\nhello",
    "content-length-signed": HEAD_200 + b"Content-Length: +5\r\n\r\nhello",
    "content-length-word": HEAD_200 + b"Content-Length: five\r\n\r\nhello",
    "content-length-huge": HEAD_200 + b"Content-Length: 99999999999999999999999\r\n\r\nhello",
    "te-gzip": HEAD_200 + b"Transfer-Encoding: gzip\r\n\r\nhello",
    "te-gzip-chunked": HEAD_200 + b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-twice": HEAD_200 + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunk-size-not-hex": HEAD_200 + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk-size-0x": HEAD_200 + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-negative": HEAD_200 + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-empty": HEAD_200 + b"Transfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n",
    "chunk-size-overflow": HEAD_200 + b"Transfer-Encoding: chunked\r\n\r\n" + b"1" * 17 + b"\r\nhello",
    "chunk-line-too-long": HEAD_200 + b"Transfer-Encoding: chunked\r\n\r\n5;" + b"e" * 5000 + b"\r\nhello",
    "chunk-line-never-ends": HEAD_200 + b"Transfer-Encoding: chunked\r\n\r\n5" + b" " * 5000,
    "chunk-without-crlf": HEAD_200 + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    "chunk-bare-lf": HEAD_200 + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    "trailers-too-large": HEAD_200 + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX: " + b"t" * 70_000 + b"\r\n",
    "head-too-large": HEAD_200 + b"X-Big: " + b"h" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n",
    "too-many-headers": HEAD_200 + b"X-A: 1\r\n" * 200 + b"Content-Length: 0\r\n\r\n",
    "bare-lf-head": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    "obs-fold": HEAD_200 + b"X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "space-in-name": HEAD_200 + b"Bad Name: x\r\nContent-Length: 0\r\n\r\n",
    "space-before-colon": HEAD_200 + b"Content-Length : 5\r\n\r\nhello",
    "status-not-a-number": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    "http-2-status-line": b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    "not-http": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    "too-many-interim": b"HTTP/1.1 100 Continue\r\n\r\n" * 20 + HEAD_200 + b"Content-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(BAD_RESPONSES))
async def test_framing_refusals(pool: UpstreamPool, case: str) -> None:
    async with RawServer(respond_with(BAD_RESPONSES[case], then="hold")) as server:
        with pytest.raises(UpstreamError) as caught:
            await fetch(pool, server.origin)
        assert await server.peers[0].closed(2.0)  # the connection was closed, not reused
    assert caught.value.kind == "protocol", str(caught.value)
    assert pool.stats()["open"] == 0
    assert b"hello" not in str(caught.value).encode()


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (HEAD_200 + b"Content-Length: 10\r\n\r\nabc", "closed"),
        (HEAD_200 + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhel", "closed"),
        (HEAD_200 + b"Content-Le", "protocol"),
        (b"", "closed"),
    ],
)
async def test_cut_off_responses(pool: UpstreamPool, response: bytes, kind: str) -> None:
    async with RawServer(respond_with(response, then="close")) as server:
        with pytest.raises(UpstreamError) as caught:
            await fetch(pool, server.origin)
    assert caught.value.kind == kind
    assert server.connections == 1  # a fresh connection is never retried


# -- timeouts ------------------------------------------------------------------------------


async def test_connect_refused() -> None:
    sock = _listener()
    port = sock.getsockname()[1]
    sock.close()
    upstream = UpstreamPool()
    with pytest.raises(UpstreamError) as caught:
        await upstream.send(Origin("http", "127.0.0.1", port), "GET", b"/", [], idempotent=True)
    assert caught.value.kind == "connect"
    assert str(port) in str(caught.value)
    await upstream.close()


async def test_connect_timeout() -> None:
    listener = _listener()
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the accept queue: further connection attempts hang
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    upstream = UpstreamPool(connect_timeout=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamError) as caught:
            await upstream.send(Origin("http", "127.0.0.1", port), "GET", b"/", [], idempotent=True)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
        await upstream.close()
    assert caught.value.kind == "timeout"
    assert 0.25 < time.monotonic() - started < 2


async def test_read_timeout_waiting_for_the_head() -> None:
    async def silent(peer: Peer) -> None:
        await peer.request()
        await peer.until_eof()

    upstream = UpstreamPool(read_timeout=0.3)
    async with RawServer(silent) as server:
        started = time.monotonic()
        with pytest.raises(UpstreamError) as caught:
            await fetch(upstream, server.origin)
        assert 0.25 < time.monotonic() - started < 2
        assert await server.peers[0].closed(2.0)
    assert caught.value.kind == "timeout"
    await upstream.close()


async def test_read_timeout_between_body_reads() -> None:
    async def stall(peer: Peer) -> None:
        await peer.request()
        await peer.send(HEAD_200 + b"Content-Length: 10\r\n\r\nabcde")
        await peer.until_eof()

    upstream = UpstreamPool(read_timeout=0.3)
    async with RawServer(stall) as server:
        response = await upstream.send(server.origin, "GET", b"/", [], idempotent=True)
        received = []
        with pytest.raises(UpstreamError) as caught:
            async for chunk in response.chunks():
                received.append(chunk)
        await response.aclose()
        assert await server.peers[0].closed(2.0)
    assert caught.value.kind == "timeout"
    assert b"".join(received) == b"abcde"
    await upstream.close()


async def test_upload_stalled_by_the_upstream_times_out() -> None:
    async def never_reads(peer: Peer) -> None:
        await asyncio.sleep(10)  # cancelled when the server stops

    upstream = UpstreamPool(read_timeout=0.3)
    async with RawServer(never_reads) as server:
        with pytest.raises(UpstreamError) as caught:
            await fetch(upstream, server.origin, "PUT", b"/", [], blocks(1024))
    assert caught.value.kind == "timeout"
    assert "request body" in str(caught.value)
    await upstream.close()


# -- retries -------------------------------------------------------------------------------


def stale_after_first() -> Handler:
    """Answers the first request of each connection; drops the connection at the second, as
    an upstream closing an idle connection just as it is reused would."""

    async def handler(peer: Peer) -> None:
        if await peer.request() is None:
            return
        await peer.send(OK)
        await peer.request()  # the next one is not answered

    return handler


async def test_idempotent_request_is_retried_once_on_a_stale_connection(pool: UpstreamPool) -> None:
    async with RawServer(stale_after_first()) as server:
        await fetch(pool, server.origin)
        response, data = await fetch(pool, server.origin, "PUT", b"/", [], b"payload", idempotent=True)
    assert (response.status, data) == (200, b"ok")
    assert server.connections == 2
    assert pool.stats()["retried"] == 1


@pytest.mark.parametrize("streamed", [False, True])
async def test_non_replayable_requests_are_not_retried(pool: UpstreamPool, streamed: bool) -> None:
    async with RawServer(stale_after_first()) as server:
        await fetch(pool, server.origin)
        with pytest.raises(UpstreamError) as caught:
            if streamed:  # idempotent, but a streamed body cannot be sent twice
                await fetch(pool, server.origin, "PUT", b"/", [], blocks(1, b"abc"), idempotent=True)
            else:
                await fetch(pool, server.origin, "POST", b"/", [], b"payload", idempotent=False)
    assert caught.value.kind == "closed"
    assert server.connections == 1
    assert pool.stats()["retried"] == 0


async def test_retry_happens_once_only(pool: UpstreamPool) -> None:
    async def answer_once_then_drop(peer: Peer) -> None:
        if peer.number == 1:
            await peer.request()
            await peer.send(OK)
        await peer.request()  # every other request is dropped unanswered

    async with RawServer(answer_once_then_drop) as server:
        await fetch(pool, server.origin)
        with pytest.raises(UpstreamError) as caught:
            await fetch(pool, server.origin)
    assert caught.value.kind == "closed"
    assert server.connections == 2
    assert pool.stats()["retried"] == 1


async def test_connection_closed_by_the_upstream_while_idle_is_not_used(pool: UpstreamPool) -> None:
    async with RawServer(respond_with(OK, then="close")) as server:
        await fetch(pool, server.origin)
        await asyncio.sleep(0.05)
        assert pool.stats()["idle"] == 0  # noticed the close at once
        await fetch(pool, server.origin, "POST", b"/", [], b"x", idempotent=False)
    assert server.connections == 2
    assert pool.stats()["retried"] == 0


# -- closing -------------------------------------------------------------------------------


async def test_pool_close_ends_everything() -> None:
    async def handler(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            if request[0].startswith(b"GET /partial "):
                await peer.send(HEAD_200 + b"Content-Length: 100\r\n\r\nsome")
                await peer.until_eof()
                return
            await asyncio.sleep(0.05)
            await peer.send(OK)

    upstream = UpstreamPool()
    async with RawServer(handler) as server:
        await asyncio.gather(fetch(upstream, server.origin), fetch(upstream, server.origin))
        response = await upstream.send(server.origin, "GET", b"/partial", [], idempotent=True)
        stream = aiter(response.chunks())
        assert await anext(stream) == b"some"
        assert upstream.stats()["open"] == 2
        assert upstream.stats()["idle"] == 1
        await upstream.close()
        assert upstream.stats()["open"] == upstream.stats()["idle"] == 0
        with pytest.raises(UpstreamError) as in_flight:
            await anext(stream)
        await response.aclose()
        assert all([await peer.closed(2.0) for peer in server.peers])
        with pytest.raises(UpstreamError) as after:
            await upstream.send(server.origin, "GET", b"/", [], idempotent=True)
    assert in_flight.value.kind == "closed"
    assert after.value.kind == "closed"
    assert server.connections == 2


def test_pool_options_are_checked() -> None:
    with pytest.raises(ValueError, match="read_timeout"):
        UpstreamPool(read_timeout=0)
    with pytest.raises(ValueError, match="max_header_bytes"):
        UpstreamPool(max_header_bytes=10)


def test_error_text_is_safe_to_log() -> None:
    error = UpstreamError("timeout", "the upstream did not answer within 5 s")
    assert str(error) == "timeout: the upstream did not answer within 5 s"
    assert error.kind == "timeout"
