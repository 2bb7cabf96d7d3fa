"""The HTTP/1.1 front (onegate/front.py): what it serves itself, what it hands to uvicorn, and
that both answer exactly, over real sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from onegate.front import MAX_HEAD, FrontProtocol, FrontRequest, front_protocol

Scope = dict[str, Any]


async def app(scope: Scope, receive: Any, send: Any) -> None:
    """Answers by path: echo of what it was given, or one of the response shapes under test."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    seen = (
        f"{scope['method']} {scope['path']} {scope['raw_path'].decode()} q={scope['query_string'].decode()}"
    )
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/big":
        chunk = b"x" * 65536
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"33554432")]}
        )
        for _ in range(512):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/crlf":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1\r\nset-cookie: x=1")]}
        )
        await send({"type": "http.response.body", "body": b"never"})
    elif path == "/boom":
        raise RuntimeError("the app failed")
    elif path == "/disconnect":
        message = await receive()  # the body was read: the next one is the client leaving
        DISCONNECTS.append(message["type"])
    else:
        text = (
            seen + f" body={body.decode()} headers={sorted(n.decode() for n, _ in scope['headers'])}"
        ).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-seen", b"yes")]})
        await send({"type": "http.response.body", "body": text})


DISCONNECTS: list[str] = []


async def started(server: uvicorn.Server, sock: socket.socket) -> asyncio.Task[None]:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started:
            return task
        await asyncio.sleep(0.01)
    raise AssertionError("the server did not start")


@pytest.fixture
async def server() -> AsyncIterator[tuple[uvicorn.Server, int]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, http=front_protocol(app), lifespan="off", log_config=None, timeout_keep_alive=1
    )
    server = uvicorn.Server(config)
    task = await started(server, sock)
    try:
        yield server, port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def exchange(port: int, data: bytes, *, until: int = 1, timeout: float = 5) -> bytes:
    """Send ``data`` and read until ``until`` responses have arrived or the connection closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = b""
    try:
        async with asyncio.timeout(timeout):
            while out.count(b"HTTP/1.1 ") < until or not _complete(out, until):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                out += chunk
    finally:
        writer.close()
    return out


def _complete(data: bytes, responses: int) -> bool:
    """Whether ``data`` holds ``responses`` whole responses (Content-Length or chunked)."""
    rest = data
    done = 0
    while done < responses:
        end = rest.find(b"\r\n\r\n")
        if end < 0:
            return False
        head, rest = rest[:end].lower(), rest[end + 4 :]
        if head.startswith(b"http/1.1 1"):  # interim: the final response follows
            continue
        done += 1
        if head.startswith(b"http/1.1 204") or head.startswith(b"http/1.1 304"):
            continue
        if b"transfer-encoding: chunked" in head:
            stop = rest.find(b"0\r\n\r\n")
            if stop < 0:
                return False
            rest = rest[stop + 5 :]
        else:
            if b"content-length: " not in head:
                return False  # read to the end of the connection
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(rest) < length:
                return False
            rest = rest[length:]
    return True


def kinds(server: uvicorn.Server) -> list[str]:
    return sorted(
        type(c).__mro__[1].__name__ if isinstance(c, FrontProtocol) else type(c).__name__
        for c in server.server_state.connections
    )


async def test_a_get_is_served_by_the_front_with_the_scope_uvicorn_gives(server: Any) -> None:
    srv, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /a%20b/c?x=1&y=%20 HTTP/1.1\r\nHost: hr.example.gov\r\nX-Thing:  v  \r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert kinds(srv) == ["FrontProtocol"]
    length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
    body = await reader.readexactly(length)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\ndate: " in head and b"x-seen: yes" in head
    assert body.startswith(b"GET /a b/c /a%20b/c q=x=1&y=%20 body= headers=['host', 'x-thing']")


async def test_kept_alive_and_pipelined_requests_are_answered_in_order(server: Any) -> None:
    _, port = server
    data = b"".join(b"GET /n%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5))
    out = await exchange(port, data, until=5)
    assert [line.split(b" ")[1] for line in out.split(b"GET ")[1:]] == [b"/n%d" % i for i in range(5)]


async def test_a_request_with_a_body_goes_to_uvicorn_with_what_follows(server: Any) -> None:
    srv, port = server
    data = (
        b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /third HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = b""
    async with asyncio.timeout(5):
        while out.count(b"HTTP/1.1 200") < 3 or not _complete(out, 3):
            out += await reader.read(65536)
    assert kinds(srv) == ["HttpToolsProtocol"]  # handed over for the rest of the connection
    writer.close()
    assert out.index(b"GET /first") < out.index(b"POST /second") < out.index(b"GET /third")
    assert b"body=hello" in out


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        b"DELETE / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Nul: a\x00b\r\n\r\n",
    ],
)
async def test_anything_outside_the_strict_subset_is_uvicorns(server: Any, head: bytes) -> None:
    """Smuggling shapes and the unusual: answered as plain uvicorn answers them."""
    _, port = server
    plain_sock = socket.socket()
    plain_sock.bind(("127.0.0.1", 0))
    plain_sock.listen()
    plain_port = plain_sock.getsockname()[1]
    plain = uvicorn.Server(uvicorn.Config(app, http="httptools", lifespan="off", log_config=None))
    task = await started(plain, plain_sock)
    try:
        ours = await exchange(port, head, timeout=2)
        theirs = await exchange(plain_port, head, timeout=2)
    finally:
        plain.should_exit = True
        await task
    strip = lambda data: b"\r\n".join(  # noqa: E731 - the date differs
        line for line in data.split(b"\r\n") if not line.startswith(b"date:")
    )
    assert strip(ours) == strip(theirs)


async def test_a_head_larger_than_the_limit_goes_to_uvicorn(server: Any) -> None:
    srv, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: " + b"v" * MAX_HEAD)
    await asyncio.sleep(0.2)
    assert kinds(srv) == ["HttpToolsProtocol"]
    writer.write(b"\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 ")


async def test_response_framing(server: Any) -> None:
    _, port = server
    streamed = await exchange(port, b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
    assert b"transfer-encoding: chunked" in streamed
    assert streamed.endswith(b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n")
    whole = await exchange(port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert b"content-length: " in whole and b"transfer-encoding" not in whole
    head_only = await exchange(port, b"HEAD /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert head_only.endswith(b"\r\n\r\n") and b"HEAD /x" not in head_only
    empty = await exchange(port, b"GET /empty HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert empty.startswith(b"HTTP/1.1 204 No Content\r\n") and empty.endswith(b"\r\n\r\n")
    assert b"content-length" not in empty and b"transfer-encoding" not in empty


async def test_connection_close_is_honoured(server: Any) -> None:
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /y HTTP/1.1\r\nHost: a\r\n\r\n")
    out = await asyncio.wait_for(reader.read(), 5)  # read to EOF: the server closed
    writer.close()
    assert out.count(b"HTTP/1.1 200") == 1 and b"connection: close" in out


async def test_a_header_that_would_split_the_response_is_refused(server: Any) -> None:
    _, port = server
    out = await exchange(port, b"GET /crlf HTTP/1.1\r\nHost: a\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 500 ") and b"set-cookie" not in out and b"never" not in out


async def test_an_app_failure_is_a_500_and_a_closed_connection(server: Any) -> None:
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n")
    out = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert out.startswith(b"HTTP/1.1 500 Internal Server Error\r\n") and b"Traceback" not in out


async def test_idle_connections_close_after_the_keep_alive_timeout(server: Any) -> None:
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    started = asyncio.get_running_loop().time()
    rest = await asyncio.wait_for(reader.read(), 5)  # EOF after ~1 s (timeout_keep_alive=1)
    waited = asyncio.get_running_loop().time() - started
    writer.close()
    assert b"HTTP/1.1" not in rest and 0.5 < waited < 3


async def test_a_half_sent_head_does_not_hold_the_connection_forever(server: Any) -> None:
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n")
    started = asyncio.get_running_loop().time()
    try:
        for _ in range(10):  # keep trickling: the timer runs from the connection's last answer
            await asyncio.sleep(0.3)
            writer.write(b"X-A: b\r\n")
            await writer.drain()
    except ConnectionError:
        pass  # closed by the server while we were still writing
    try:
        rest = await asyncio.wait_for(reader.read(), 5)
    except ConnectionError:
        rest = b""
    writer.close()
    assert rest == b"" and asyncio.get_running_loop().time() - started < 2.5


async def test_the_client_leaving_is_a_disconnect_to_the_app(server: Any) -> None:
    _, port = server
    DISCONNECTS.clear()
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /disconnect HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.2)
    writer.close()
    for _ in range(50):
        if DISCONNECTS:
            break
        await asyncio.sleep(0.05)
    assert DISCONNECTS == ["http.disconnect"]


async def test_a_large_response_to_a_slow_reader_is_written_with_back_pressure(server: Any) -> None:
    """32 MiB to a client that reads slowly at first: complete and exact."""
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(0.5)  # the server's buffers fill up meanwhile
    received = 0
    while received < 33554432:
        chunk = await asyncio.wait_for(reader.read(2**20), 5)
        assert chunk and set(chunk) == {ord("x")}
        received += len(chunk)
    writer.close()
    assert b"content-length: 33554432" in head and received == 33554432


async def test_shutdown_lets_the_response_in_hand_finish(server: Any) -> None:
    srv, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    for connection in list(srv.server_state.connections):
        connection.shutdown()
    assert await asyncio.wait_for(reader.read(), 5) != b"HTTP"  # the rest of the body, then EOF
    writer.close()


# -- an app's fast path ----------------------------------------------------------------------------

# What the fast path below answers itself, by path: the same status, headers and body that the
# ASGI app `shaped` sends for the same path.
SHAPES: dict[str, tuple[int, list[tuple[bytes, bytes]], bytes]] = {
    "/fast/plain": (200, [(b"x-seen", b"yes"), (b"content-type", b"text/plain")], b"hello"),
    "/fast/length": (200, [(b"content-length", b"5")], b"hello"),
    "/fast/empty": (204, [(b"x-a", b"1")], b""),
    "/fast/moved": (302, [(b"location", b"/elsewhere"), (b"content-length", b"0")], b""),
    "/fast/missing": (404, [], b"not here"),
    "/fast/teapot": (418, [(b"X-Mixed-Case", b"v")], b"short and stout"),
}


async def shaped(scope: Scope, receive: Any, send: Any) -> None:
    """The ASGI app: a shape of SHAPES (under ``/hand`` too), or the echo app for the rest."""
    shape = SHAPES.get(scope["path"].removeprefix("/hand"))
    if shape is None:
        await app(scope, receive, send)
        return
    status, headers, body = shape
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Fast:
    """``shaped`` with a fast path: SHAPES answered by ``respond``, ``/hand/...`` handed to the
    ASGI app, ``/raise`` failing, anything else declined."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes, bool]] = []

    def fast_path(self, request: FrontRequest) -> bool:
        path = request.raw_path.decode()
        self.seen.append((request.method, request.raw_path, request.close))
        if path == "/raise":
            raise RuntimeError("the fast path failed")
        if path.startswith("/hand/"):
            request.hand_over(self._hand)
            return True
        shape = SHAPES.get(path)
        if shape is None:
            return False
        status, headers, body = shape
        request.respond(status, headers, body, checked=False)
        request.done()
        return True

    async def _hand(self, scope: Scope, receive: Any, send: Any) -> None:
        await shaped(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await shaped(scope, receive, send)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Fast, int, int]]:
    """A server whose app has the fast path, and one serving the same app without it."""
    fast = Fast()
    servers, tasks, ports = [], [], []
    for served in (fast, shaped):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        ports.append(sock.getsockname()[1])
        config = uvicorn.Config(served, http=front_protocol(served), lifespan="off", log_config=None)
        servers.append(uvicorn.Server(config))
        tasks.append(await started(servers[-1], sock))
    try:
        yield fast, ports[0], ports[1]
    finally:
        for one in servers:
            one.should_exit = True
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def _heads(port: int, data: bytes, responses: int) -> bytes:
    """The answers to HEAD requests: ``responses`` heads, or what came before the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = b""
    try:
        async with asyncio.timeout(5):
            while out.count(b"\r\n\r\n") < responses:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                out += chunk
    finally:
        writer.close()
    return out


def _no_date(data: bytes) -> bytes:
    return b"\r\n".join(line for line in data.split(b"\r\n") if not line.startswith(b"date:"))


@pytest.mark.parametrize("path", [*SHAPES, "/hand/fast/plain", "/hand/fast/empty", "/echo?q=1"])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize("close", [b"", b"Connection: close\r\n"])
async def test_the_fast_path_answers_byte_for_byte_as_the_asgi_path(
    pair: tuple[Fast, int, int], path: str, method: bytes, close: bytes
) -> None:
    fast, fast_port, plain_port = pair
    head = method + b" " + path.encode() + b" HTTP/1.1\r\nHost: a\r\nX-Thing: v\r\n" + close + b"\r\n"
    requests = head * (1 if close else 3)  # kept alive: three in a row, pipelined
    responses = 1 if close else 3
    if method == b"HEAD":  # heads alone: no framing to read to
        ours = await _heads(fast_port, requests, responses)
        theirs = await _heads(plain_port, requests, responses)
    else:
        ours = await exchange(fast_port, requests, until=responses)
        theirs = await exchange(plain_port, requests, until=responses)
    assert _no_date(ours) == _no_date(theirs)
    assert ours.count(b"HTTP/1.1 ") == responses
    assert fast.seen[-1] == (method.decode(), path.split("?", maxsplit=1)[0].encode(), bool(close))


async def test_a_failing_fast_path_is_a_500_and_a_closed_connection(pair: tuple[Fast, int, int]) -> None:
    _, fast_port, _ = pair
    reader, writer = await asyncio.open_connection("127.0.0.1", fast_port)
    writer.write(b"GET /raise HTTP/1.1\r\nHost: a\r\n\r\n")
    out = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert out.startswith(b"HTTP/1.1 500 Internal Server Error\r\n") and b"connection: close" in out


async def test_a_repeated_header_section_is_read_again_with_its_new_request_line(
    pair: tuple[Fast, int, int],
) -> None:
    """The header section of the previous request is reused only under a request line of the
    subset; anything else on the same connection still goes to uvicorn."""
    fast, fast_port, plain_port = pair
    fields = b"Host: a\r\nX-Thing: v\r\n\r\n"
    data = b"GET /fast/plain HTTP/1.1\r\n" + fields + b"GET /fast/length?x HTTP/1.1\r\n" + fields
    ours = await exchange(fast_port, data, until=2)
    assert _no_date(ours) == _no_date(await exchange(plain_port, data, until=2))
    assert fast.seen[-2:] == [("GET", b"/fast/plain", False), ("GET", b"/fast/length", False)]
    data = b"GET /fast/plain HTTP/1.1\r\n" + fields + b"DELETE /fast/plain HTTP/1.1\r\n" + fields
    ours = await exchange(fast_port, data, until=2)
    assert _no_date(ours) == _no_date(await exchange(plain_port, data, until=2))
    assert fast.seen[-1] == ("GET", b"/fast/plain", False)  # DELETE went to uvicorn
