"""Serve an ASGI app with uvicorn (and our HTTP/1.1 front, onegate/front.py) on one socket, and
announce where once it is ready."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator

import uvicorn
from starlette.types import ASGIApp

from onegate.front import front_protocol

__all__ = ["bind", "serve"]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Shut down gracefully on SIGINT / SIGTERM and then *return*, so the caller's clean-up
        # (closing the runtime, removing demo.json) runs; uvicorn would re-raise the signal.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; ``port`` 0 takes any free port (read it back from the socket)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: without it a response written in two parts (headers,
    # body) waits for the client's delayed ACK on keep-alive connections, ~40 ms per request.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def serve(
    app: ASGIApp, sock: socket.socket, *, on_ready: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Run until SIGINT / SIGTERM. ``on_ready`` runs once the server accepts connections."""
    config = uvicorn.Config(
        app,
        http=front_protocol(app),  # body-less requests served lean, the rest by uvicorn's httptools
        lifespan="on",
        log_config=None,  # our structlog configuration stays in charge
        access_log=False,  # the web core writes its own access line, without query strings
        server_header=False,
        proxy_headers=False,  # X-Forwarded-* is trusted only from configured proxies, by our own code
        timeout_graceful_shutdown=10,
    )
    server = _Server(config)

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.02)
        # What start-up built lives as long as the process: keep it out of the collector's
        # passes, and collect the young generation less often (a request makes many short-lived
        # objects; each full pass over a large heap is a pause every in-flight request waits on).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 50, 100)
        if on_ready is not None:
            await on_ready()

    announcer = asyncio.create_task(announce())
    try:
        await server.serve(sockets=[sock])
    finally:
        announcer.cancel()
    if not server.started:
        raise SystemExit(3)
