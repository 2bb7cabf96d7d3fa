"""WebSocket proxying: one ASGI WebSocket (RFC 6455 through the ASGI WebSocket spec) bridged to
the upstream with the ``websockets`` asyncio client.

:func:`bridge` takes the client's ``websocket.connect``, then opens the upstream connection
first, so that the client is accepted only once the upstream accepted:

* the handshake (RFC 6455 §4.1) goes to ``ws://`` (``wss://`` for an ``https`` origin) on the
  origin's address with the caller's ``Host`` header, the client's requested subprotocols
  (``Sec-WebSocket-Protocol``, §4.1 item 10, §11.3.4) and the caller's headers, except those the
  handshake writes itself (``Host``, ``Upgrade``, ``Connection``, ``Sec-WebSocket-*``) and the
  framing ones, byte for byte; no environment proxy, no compression, no ``User-Agent`` of our
  own;
* the client is then accepted with the subprotocol the upstream chose (§4.2.2);
* text and binary messages are relayed both ways as they come, each side's sending awaiting
  the other side's flow control; upstream messages are bounded by ``max_message_bytes``
  (client messages by the ASGI server's own limit);
* when one side closes, the other is closed with the same code and reason (§7.1.5, §7.4);
  codes that cannot travel in a close frame (1005 "no status", 1006 "abnormal", 1015 "TLS")
  become 1000 when no code came, 1001 when the client went away, and 1011 when the upstream
  broke off;
* an upstream that cannot be reached or refuses the handshake ends the client's attempt: with
  an HTTP 502 (or the upstream's own 4xx / 5xx status) where the server offers the
  ``websocket.http.response`` extension, else a close with 1011 (which an ASGI server answers
  with 403 before the handshake).

Both relay directions run as tasks of their own; neither outlives :func:`bridge`, whichever
side closes first and even when the bridge itself is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from typing import Any

from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from core.logging import get_logger
from gateway.upstream import Origin

__all__ = ["bridge"]

Message = dict[str, Any]

_log = get_logger("onegate.gateway.websocket")

# Written by the handshake itself, or meaningless on a WebSocket handshake.
_HANDSHAKE_HEADERS = frozenset(
    {
        b"host",
        b"upgrade",
        b"connection",
        b"content-length",
        b"transfer-encoding",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
    }
)
# Close codes that cannot be sent in a close frame (RFC 6455 §7.4.1).
_RESERVED_CODES = frozenset({1004, 1005, 1006, 1015})
_CLOSE_TIMEOUT = 5.0


async def bridge(  # noqa: PLR0917 - the ASGI triple, then where to: as the proxy calls it
    scope: Scope,
    receive: Receive,
    send: Send,
    origin: Origin,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    connect_timeout: float = 5.0,
    max_message_bytes: int = 16 * 1024 * 1024,
) -> None:
    """Proxy the ASGI WebSocket ``scope`` to ``origin`` at ``target`` (module doc)."""
    message = await receive()
    if message["type"] != "websocket.connect":  # the client left before we began
        return
    host, extra = _handshake_headers(origin, headers)
    subprotocols = [Subprotocol(p) for p in scope.get("subprotocols") or ()]
    uri = f"{'wss' if origin.scheme == 'https' else 'ws'}://{host}{target.decode('latin-1')}"
    options: dict[str, Any] = {}
    if origin.scheme == "https":
        options["ssl"] = _tls_context()
        options["server_hostname"] = origin.host
    try:
        upstream = await connect(
            uri,
            host=origin.host,  # the TCP destination; the URI's authority is the Host header
            port=origin.port,
            subprotocols=subprotocols or None,
            additional_headers=extra,
            user_agent_header=None,  # the client's own User-Agent is in ``extra``
            compression=None,
            proxy=None,  # never an HTTP(S)_PROXY from the environment
            open_timeout=connect_timeout,
            close_timeout=_CLOSE_TIMEOUT,
            max_size=max_message_bytes,
            **options,
        )
    except (OSError, TimeoutError, WebSocketException, ValueError) as e:
        status = 502
        if isinstance(e, InvalidStatus) and 400 <= e.response.status_code < 600:
            status = e.response.status_code
        _log.warning("websocket upstream unavailable", upstream=str(origin), error=type(e).__name__)
        await _refuse(scope, send, status)
        return
    await _relay(receive, send, upstream)


def _handshake_headers(
    origin: Origin, headers: list[tuple[bytes, bytes]]
) -> tuple[str, list[tuple[str, str]]]:
    """The Host for the URI's authority, and the headers the handshake does not write itself."""
    host = origin.authority
    extra: list[tuple[str, str]] = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"host":
            candidate = value.decode("latin-1").strip()
            if _valid_authority(candidate):
                host = candidate
        elif lower not in _HANDSHAKE_HEADERS:
            # websockets writes header values back as ISO-8859-1: every byte round-trips.
            extra.append((name.decode("latin-1"), value.decode("latin-1")))
    return host, extra


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for ``wss`` upstreams (loading the CA store is not free)."""
    return ssl.create_default_context()


def _valid_authority(value: str) -> bool:
    if not value or any(c in value for c in "/?#@\\ \t"):
        return False
    try:
        parse_uri(f"ws://{value}/")
    except (InvalidURI, ValueError):
        return False
    return True


async def _refuse(scope: Scope, send: Send, status: int) -> None:
    with contextlib.suppress(Exception):  # the client may be gone already
        if "websocket.http.response" in (scope.get("extensions") or {}):
            body = b"Bad Gateway" if status == 502 else b""
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1011})


def _sendable(code: int | None, fallback: int) -> int:
    """A close code fit for a close frame: ``fallback`` for those that are not (§7.4)."""
    if code is None or code == 1005:
        return 1000
    if code in _RESERVED_CODES or not (1000 <= code <= 1014 or 3000 <= code <= 4999):
        return fallback
    return code


async def _relay(receive: Receive, send: Send, upstream: ClientConnection) -> None:
    try:
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
    except Exception:  # the client went away during the handshake
        await upstream.close(1001)
        return
    to_upstream = asyncio.create_task(_client_to_upstream(receive, upstream), name="onegate-ws-to-upstream")
    to_client = asyncio.create_task(_upstream_to_client(send, upstream), name="onegate-ws-to-client")
    tasks = {to_upstream, to_client}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        client_left = (
            to_upstream in done and to_upstream.exception() is None and to_upstream.result() is not None
        )
        client_gone = to_client in done and to_client.exception() is None and to_client.result()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if client_left:
            code, reason = to_upstream.result() or (1000, "")
            await upstream.close(_sendable(code, 1001), reason)
        elif client_gone:
            await upstream.close(1001)
        else:  # the upstream closed (or broke off): tell the client the same
            # The upstream's close frame; else ours, when we ended it (a message too big, a
            # ping unanswered); else it broke off (1006).
            frame = upstream.protocol.close_rcvd or upstream.protocol.close_sent
            code = _sendable(frame.code if frame is not None else 1006, 1011)
            reason = frame.reason if frame is not None else ""
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": code, "reason": reason})
            await upstream.close()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if upstream.state is not State.CLOSED:  # cancelled mid-way: drop the upstream at once
            upstream.transport.abort()


async def _client_to_upstream(receive: Receive, upstream: ClientConnection) -> tuple[int, str] | None:
    """Relay client messages; the client's close code and reason when it leaves, None when the
    upstream closed first."""
    try:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    await upstream.send(text)
                else:
                    await upstream.send(message.get("bytes") or b"")
            elif kind == "websocket.disconnect":
                return int(message.get("code") or 1005), str(message.get("reason") or "")
    except ConnectionClosed:
        return None


async def _upstream_to_client(send: Send, upstream: ClientConnection) -> bool:
    """Relay upstream messages; True when the client could not be sent to (it is gone), False
    when the upstream closed."""
    try:
        async for data in upstream:
            out: Message = {"type": "websocket.send"}
            if isinstance(data, str):
                out["text"] = data
            else:
                out["bytes"] = data
            try:
                await send(out)
            except Exception:
                return True
    except ConnectionClosed:
        pass
    return False
