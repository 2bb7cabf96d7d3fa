"""Upstream applications for the gateway tests: real HTTP servers on 127.0.0.1.

``echo_app`` answers every request with what it received (method, raw target, headers, body
size and digest) as JSON, streams ``/download?size=N`` bytes, counts a streamed ``/upload`` and
echoes WebSocket messages on ``/ws``. ``UpstreamServer`` runs an ASGI app under uvicorn in a
thread of its own (its own event loop), so tests driving synchronous clients can use it too.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

__all__ = ["UpstreamServer", "echo_app"]

CHUNK = 64 * 1024


async def _echo(request: Request) -> Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    raw_path = request.scope.get("raw_path", b"").decode("latin-1")
    query = request.scope.get("query_string", b"").decode("latin-1")
    return JSONResponse(
        {
            "method": request.method,
            "target": raw_path + ("?" + query if query else ""),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers.raw],
            "body_bytes": size,
            "body_sha256": digest.hexdigest(),
        }
    )


async def _download(request: Request) -> Response:
    size = int(request.query_params.get("size", "0"))

    async def body() -> Any:
        block = b"x" * CHUNK
        left = size
        while left > 0:
            part = block[: min(CHUNK, left)]
            left -= len(part)
            yield part

    return StreamingResponse(
        body(), media_type="application/octet-stream", headers={"content-length": str(size)}
    )


async def _ws(websocket: WebSocket) -> None:
    protocols = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=protocols[0] if protocols else None)
    user = websocket.headers.get("x-onegate-user", "")
    await websocket.send_text(f"hello {user}")
    try:
        while True:
            message = await websocket.receive_text()
            await websocket.send_text(message)
    except Exception:  # the client closed
        return


def echo_app() -> Starlette:
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(
        routes=[
            Route("/download", _download, methods=["GET", "HEAD"]),
            WebSocketRoute("/ws", _ws),
            Route("/{path:path}", _echo, methods=methods),
        ]
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class UpstreamServer:
    """``app`` under uvicorn on 127.0.0.1 in a thread; ``with UpstreamServer(app) as s: s.url``."""

    def __init__(self, app: ASGIApp | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app or echo_app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve())

    def __enter__(self) -> UpstreamServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise AssertionError("the upstream server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
