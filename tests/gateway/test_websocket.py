"""gateway.websocket.bridge between a real client, a gateway-like ASGI app under uvicorn and a
real upstream (a Starlette WebSocket app under uvicorn), all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.upstream import Origin
from gateway.websocket import bridge

SKIPPED = {b"host", b"connection", b"upgrade"}


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[int]:
    """``app`` under uvicorn on a free port, in this event loop; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="websockets-sansio")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        yield port
    finally:
        server.should_exit = True
        await task
        sock.close()


@dataclass
class Seen:
    """What the upstream saw."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    offered: list[list[str]] = field(default_factory=list)
    close_codes: list[int] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


def upstream_app(seen: Seen) -> Starlette:
    async def echo(websocket: WebSocket) -> None:
        seen.headers = [(k.decode(), v.decode("latin-1")) for k, v in websocket.scope["headers"]]
        seen.paths.append(
            websocket.scope["raw_path"].decode() + "?" + websocket.scope["query_string"].decode()
        )
        offered = list(websocket.scope.get("subprotocols") or [])
        seen.offered.append(offered)
        await websocket.accept(subprotocol="chat.v1" if "chat.v1" in offered else None)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    seen.close_codes.append(message.get("code", 0))
                    return
                text, data = message.get("text"), message.get("bytes")
                if text == "close please":
                    await websocket.close(4001, "bye")
                    return
                if text == "big":
                    await websocket.send_bytes(b"b" * 4096)
                elif text is not None:
                    await websocket.send_text("echo " + text)
                else:
                    await websocket.send_bytes(b"echo " + (data or b""))
        except WebSocketDisconnect as e:
            seen.close_codes.append(e.code)
        finally:
            seen.closed.set()

    return Starlette(routes=[WebSocketRoute("/ws", echo)])


@dataclass
class Gateway:
    """A gateway-like ASGI app whose WebSocket scopes go through :func:`bridge`."""

    origin: Origin
    offer_http_response: bool = True
    max_message_bytes: int = 16 * 1024 * 1024
    extra: list[tuple[bytes, bytes]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    errors: list[BaseException] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        if not self.offer_http_response:
            scope = dict(scope, extensions={})
        headers = [(n, v) for n, v in scope["headers"] if n not in SKIPPED and not n.startswith(b"sec-")]
        headers += [(b"host", b"hr.example.gov:8443"), (b"x-onegate-user", b"alice"), *self.extra]
        target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
        try:
            await bridge(
                scope,
                receive,
                send,
                self.origin,
                target,
                headers,
                connect_timeout=2,
                max_message_bytes=self.max_message_bytes,
            )
        except BaseException as e:
            self.errors.append(e)
            raise
        finally:
            self.done.set()


def bridge_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("onegate-ws-")]


@pytest.fixture
async def stack() -> AsyncIterator[tuple[Seen, Gateway, int]]:
    seen = Seen()
    async with serve(upstream_app(seen)) as upstream_port:
        gateway = Gateway(Origin("http", "127.0.0.1", upstream_port))
        async with serve(gateway) as gateway_port:
            yield seen, gateway, gateway_port


async def test_messages_are_relayed_both_ways(stack: tuple[Seen, Gateway, int]) -> None:
    seen, gateway, port = stack
    async with connect(
        f"ws://127.0.0.1:{port}/ws?room=1", user_agent_header="test-client/1", origin=None
    ) as client:
        await client.send("hello")
        assert await client.recv() == "echo hello"
        await client.send(b"\x00\x01")
        assert await client.recv() == b"echo \x00\x01"
        assert client.subprotocol is None
    await asyncio.wait_for(gateway.done.wait(), 5)
    assert seen.paths == ["/ws?room=1"]
    names = [name for name, _ in seen.headers]
    assert names.count("host") == 1
    assert dict(seen.headers)["host"] == "hr.example.gov:8443"
    assert dict(seen.headers)["x-onegate-user"] == "alice"
    assert dict(seen.headers)["user-agent"] == "test-client/1"
    assert "sec-websocket-protocol" not in names
    assert seen.offered == [[]]
    assert gateway.errors == []


async def test_subprotocol_chosen_by_the_upstream(stack: tuple[Seen, Gateway, int]) -> None:
    seen, _, port = stack
    async with connect(f"ws://127.0.0.1:{port}/ws", subprotocols=["chat.v2", "chat.v1"]) as client:
        assert client.subprotocol == "chat.v1"
        await client.send("x")
        assert await client.recv() == "echo x"
    async with connect(f"ws://127.0.0.1:{port}/ws", subprotocols=["chat.v3"]) as client:
        assert client.subprotocol is None  # the upstream picked none: neither do we
    assert seen.offered == [["chat.v2", "chat.v1"], ["chat.v3"]]


async def test_upstream_close_code_reaches_the_client(stack: tuple[Seen, Gateway, int]) -> None:
    _, gateway, port = stack
    async with connect(f"ws://127.0.0.1:{port}/ws") as client:
        await client.send("close please")
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "bye")
    await asyncio.wait_for(gateway.done.wait(), 5)
    assert bridge_tasks() == []
    assert gateway.errors == []


async def test_client_close_code_reaches_the_upstream(stack: tuple[Seen, Gateway, int]) -> None:
    seen, gateway, port = stack
    async with connect(f"ws://127.0.0.1:{port}/ws") as client:
        await client.send("one")
        assert await client.recv() == "echo one"
        await client.close(4002, "client bye")
    await asyncio.wait_for(seen.closed.wait(), 5)
    await asyncio.wait_for(gateway.done.wait(), 5)
    assert seen.close_codes == [4002]
    assert bridge_tasks() == []
    assert gateway.errors == []


async def test_oversized_upstream_message_closes_both_sides() -> None:
    seen = Seen()
    async with serve(upstream_app(seen)) as upstream_port:
        gateway = Gateway(Origin("http", "127.0.0.1", upstream_port), max_message_bytes=1024)
        async with serve(gateway) as port, connect(f"ws://127.0.0.1:{port}/ws") as client:
            await client.send("big")
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()
            await asyncio.wait_for(gateway.done.wait(), 5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009  # message too big
    assert seen.close_codes == [1009]
    assert bridge_tasks() == []


@pytest.mark.parametrize(("offer", "status"), [(True, 502), (False, 403)])
async def test_unreachable_upstream(offer: bool, status: int) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    closed_port = sock.getsockname()[1]
    sock.close()
    gateway = Gateway(Origin("http", "127.0.0.1", closed_port), offer_http_response=offer)
    async with serve(gateway) as port:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://127.0.0.1:{port}/ws"):
                pass
        await asyncio.wait_for(gateway.done.wait(), 5)
    # 502 through the websocket.http.response extension; a close before accepting otherwise,
    # which the server answers with 403.
    assert refused.value.response.status_code == status
    assert gateway.errors == []
    assert bridge_tasks() == []


async def test_upstream_refusing_the_handshake(stack: tuple[Seen, Gateway, int]) -> None:
    seen, gateway, port = stack
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://127.0.0.1:{port}/not-a-socket"):
            pass
    await asyncio.wait_for(gateway.done.wait(), 5)
    assert refused.value.response.status_code == 403  # the upstream's own answer
    assert seen.paths == []


async def test_client_leaving_mid_stream_frees_everything(stack: tuple[Seen, Gateway, int]) -> None:
    seen, gateway, port = stack
    client = await connect(f"ws://127.0.0.1:{port}/ws")
    await client.send("one")
    assert await client.recv() == "echo one"
    client.transport.abort()  # no close frame: an abnormal end (1006)
    await asyncio.wait_for(seen.closed.wait(), 5)
    await asyncio.wait_for(gateway.done.wait(), 5)
    # uvicorn reports a lost connection as 1005 (no status), which cannot travel in a close
    # frame either: the upstream hears a normal closure.
    assert seen.close_codes == [1000]
    assert bridge_tasks() == []


async def test_handshake_headers_from_the_caller_are_left_out() -> None:
    seen = Seen()
    async with serve(upstream_app(seen)) as upstream_port:
        gateway = Gateway(Origin("http", "127.0.0.1", upstream_port))
        gateway.extra = [
            (b"Sec-WebSocket-Version", b"8"),
            (b"connection", b"keep-alive"),
            (b"content-length", b"5"),
            (b"x-latin1", b"caf\xe9"),
            (b"x-utf8", "café".encode()),
        ]
        async with serve(gateway) as port, connect(f"ws://127.0.0.1:{port}/ws") as client:
            await client.send("x")
            assert await client.recv() == "echo x"
    names = [name for name, _ in seen.headers]
    assert names.count("sec-websocket-version") == 1
    assert dict(seen.headers)["sec-websocket-version"] == "13"
    assert dict(seen.headers)["connection"] == "Upgrade"
    assert "content-length" not in names
    assert dict(seen.headers)["x-latin1"].encode("latin-1") == b"caf\xe9"  # byte for byte
    assert dict(seen.headers)["x-utf8"].encode("latin-1") == "café".encode()
