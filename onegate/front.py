"""The HTTP/1.1 front of a OneGate process: a lean server for the requests that make up nearly
all traffic, handing every other connection to uvicorn.

The gateway's hot path is a body-less request (``GET`` / ``HEAD``) from a browser or an API
client on a kept-alive connection. uvicorn's general machinery (a parser callback per header, a
request-response cycle object, an event and a task per request) costs about as much as
everything the gateway itself does for such a request, so this protocol serves those requests
itself and calls the same ASGI app, with the same scope, that uvicorn would have called:

* a request head is accepted here only when it fits a strict subset of HTTP/1.1 (RFC 9112): a
  ``GET`` or ``HEAD`` request line with an origin-form target of visible ASCII without ``#``,
  header fields ``token ":" OWS value OWS`` with no control characters and no line folding,
  exactly one ``Host``, no ``Transfer-Encoding``, at most one ``Content-Length``, of ``0``, no
  ``Upgrade`` and no ``Expect``;
* anything else — a request with a body, a WebSocket upgrade, HTTP/1.0, a head larger than
  :data:`MAX_HEAD` or one this subset does not describe — hands the connection, with every byte
  not yet answered, to uvicorn's own httptools protocol for the rest of its life. So what is
  served here is unambiguous by construction, and every other case keeps uvicorn's handling
  (and its error answers) exactly.

An app may also offer a *fast path* (a ``fast_path`` attribute, :data:`FastPath`): the front then
hands it each request it serves as a :class:`FrontRequest` — the parsed head, no scope — and the
app either declines (the request goes the ASGI way as above), answers it whole with
:meth:`FrontRequest.respond` (the same bytes the ASGI messages ``http.response.start`` and one
``http.response.body`` would have made), or hands it to an ASGI app in a task after all
(:meth:`FrontRequest.hand_over`, e.g. for a response to stream).

Requests on one connection are answered one after the other (a pipelined request waits in the
buffer; reading pauses when the buffer is large). Responses get uvicorn's framing: the app's
``Content-Length``, else one computed when the whole body came in the first message, else
chunked; header names and values with control characters are refused (a 500, or the connection
cut when the head is already out). Idle kept-alive connections close after uvicorn's
``timeout_keep_alive``, which also bounds how long a client may take to send a whole head.
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
from typing import Any
from urllib.parse import unquote

from starlette.types import ASGIApp, Message
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from core.web.fastpath import FastPath as _FastPath

__all__ = ["MAX_HEAD", "FastPath", "FrontProtocol", "FrontRequest", "front_protocol"]

_log = logging.getLogger("uvicorn.error")

MAX_HEAD = 16 * 1024  # a longer head goes to uvicorn (which answers it as it always did)
_READ_HIGH_WATER = 256 * 1024  # pipelined bytes buffered before reading pauses

# The subset of RFC 9112 served here (see the module docstring); anything else goes to uvicorn.
_REQUEST_LINE = re.compile(rb"(GET|HEAD) (/[\x21-\x22\x24-\x7e]*) HTTP/1\.1\r\n")
_HEAD = re.compile(
    _REQUEST_LINE.pattern + rb"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*)\r\n"
)
_REFUSED_FIELDS = frozenset({b"transfer-encoding", b"upgrade", b"expect"})
_BAD_NAME = re.compile(rb'[\x00-\x1f\x7f()<>@,;:\\\[\]={} \t"]')
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_NO_BODY_STATUS = frozenset({204, 304})
_STATUS_LINE = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("latin-1")) for s in http.HTTPStatus
}
_DISCONNECT: Message = {"type": "http.disconnect"}
_EMPTY_BODY: Message = {"type": "http.request", "body": b"", "more_body": False}


# The contract (core.web.fastpath): FrontRequest is its FastRequest.
FastPath = _FastPath
"""An app's fast path: True when it took the request (it then calls :meth:`FrontRequest.respond`
and :meth:`FrontRequest.done`, :meth:`FrontRequest.hand_over` or :meth:`FrontRequest.fail`
exactly once, now or later), False to have it go the ASGI way."""


def front_protocol(app: ASGIApp) -> type[FrontProtocol]:
    """The protocol class to give uvicorn (``Config(http=...)``) for ``app``, with the app's
    fast path when it offers one (its ``fast_path`` attribute)."""
    members: dict[str, Any] = {"asgi_app": staticmethod(app)}
    fast: FastPath | None = getattr(app, "fast_path", None)
    if fast is not None:
        members["fast_path"] = staticmethod(fast)
    return type("Front", (FrontProtocol,), members)


class FrontProtocol(asyncio.Protocol):
    """One client connection (module docstring). Made by uvicorn's server with uvicorn's
    arguments, so that it can hand the connection to uvicorn's own protocol at any point."""

    asgi_app: ASGIApp
    fast_path: FastPath | None = None

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self._config = config
        self._server_state = server_state
        self._app_state = app_state
        self._loop = _loop or asyncio.get_event_loop()
        self._keep_alive_timeout = config.timeout_keep_alive
        self._root_path = config.root_path
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._busy = False  # a request is being answered
        self._closing = False  # close once the current response is out
        self._handed_off = False
        self._reading_paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since: float | None = None  # None while a request is being answered
        self._server: tuple[str, int] | None = None
        self._client: tuple[str, int] | None = None
        self._scheme = "http"
        # The header section of the last request read here, as received, its headers (never
        # changed: the ASGI path gets a copy) and whether it asked to close.
        self._last_fields: tuple[bytes, list[tuple[bytes, bytes]], bool] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._server_state.connections.add(self)
        self._server = _address(transport.get_extra_info("sockname"))
        self._client = _address(transport.get_extra_info("peername"))
        if transport.get_extra_info("sslcontext") is not None:
            self._scheme = "https"
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server_state.connections.discard(self)
        self._cancel_timer()
        self._closing = True
        lost = self._lost
        if lost is not None and not lost.done():
            lost.set_result(None)
        self._wake_drain()

    def eof_received(self) -> bool | None:
        return None  # the client is gone (as uvicorn reads it): the transport closes

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._busy:
            if len(self._buffer) > _READ_HIGH_WATER and not self._reading_paused:
                self._reading_paused = True
                self._transport.pause_reading()  # type: ignore[union-attr]
            return
        self._next()

    # -- uvicorn's server interface ---------------------------------------------------------

    def shutdown(self) -> None:
        """Graceful shutdown: close now when idle, else after the response in hand."""
        self._closing = True
        if not self._busy and self._transport is not None:
            self._transport.close()

    # -- requests ---------------------------------------------------------------------------

    def _next(self) -> None:
        """Start answering the buffered request, if a whole head is there."""
        buffer = self._buffer
        if not buffer or self._closing:
            return
        end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD)
        if end < 0:
            if len(buffer) >= MAX_HEAD or buffer.find(b"\n\n") >= 0:
                self._hand_off()
            return
        end += 4
        request = self._parse(buffer, end)
        if request is None:
            self._hand_off()
            return
        self._buffer = buffer[end:]
        self._idle_since = None
        self._busy = True
        fast = self.fast_path
        if fast is not None:
            try:
                if fast(request):
                    return
            except Exception as e:
                request.fail(e)
                return
        self._run(self.asgi_app, request)

    def _parse(self, buffer: bytes, end: int) -> FrontRequest | None:
        """The request whose head is ``buffer[:end]``; None when it is not a head served here."""
        line_end = buffer.find(b"\r\n", 0, end) + 2
        last = self._last_fields
        if last is not None and buffer.startswith(last[0], line_end) and line_end + len(last[0]) == end - 2:
            # The header section the previous request on this connection had, which was read
            # and accepted then: only the request line is new.
            match = _REQUEST_LINE.fullmatch(buffer, 0, line_end)
            if match is None:
                return None
            method, target = match.groups()
            fields, headers, close = last
        else:
            parsed = self._parse_head(buffer, end)
            if parsed is None:
                return None
            method, target, fields, headers, close = parsed
            self._last_fields = (fields, headers, close)
        raw_path, _, query = target.partition(b"?")
        return FrontRequest(
            self, "GET" if method == b"GET" else "HEAD", raw_path, query, headers, close=close, fields=fields
        )

    def _parse_head(
        self, buffer: bytes, end: int
    ) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], bool] | None:
        match = _HEAD.fullmatch(buffer, 0, end)
        if match is None:
            return None
        method, target, fields = match.groups()
        headers: list[tuple[bytes, bytes]] = []
        hosts = lengths = 0
        close = False
        for line in fields.split(b"\r\n")[:-1]:
            name, _, value = line.partition(b":")
            name = name.lower()
            value = value.strip(b" \t")
            if name in _REFUSED_FIELDS:
                return None
            if name == b"host":
                hosts += 1
            elif name == b"content-length":
                if value != b"0" or lengths:
                    return None
                lengths += 1
            elif name == b"connection" and b"close" in value.lower():
                close = True
            headers.append((name, value))
        if hosts != 1:
            return None
        return method, target, fields, headers, close

    def _scope(self, request: FrontRequest) -> dict[str, Any]:
        """The ASGI scope of ``request``, as uvicorn would give it."""
        raw_path = request.raw_path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        root = self._root_path
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "server": self._server,
            "client": self._client,
            "scheme": self._scheme,
            "method": request.method,
            "root_path": root,
            "path": root + path,
            "raw_path": root.encode("ascii") + raw_path,
            "query_string": request.query,
            "headers": list(request.headers),  # an app may change its copy
            "state": self._app_state.copy(),
        }

    def _run(self, app: ASGIApp, request: FrontRequest) -> None:
        """Answer ``request`` through the ASGI ``app``, in a task."""
        task = self._loop.create_task(self._answer(app, self._scope(request), request.close))
        tasks = self._server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _answer(self, app: ASGIApp, scope: dict[str, Any], close: bool) -> None:
        response = _Response(self, scope["method"] == "HEAD")
        response.keep_alive = not (close or self._closing)
        failed = False
        try:
            await app(scope, response.receive, response.send)
        except Exception as e:
            _log.error("Exception in ASGI application", exc_info=e)
            failed = True
        finally:
            self._busy = False
        self._settle(response, failed)

    def _settle(self, response: _Response, failed: bool) -> None:
        """The request in hand was answered (or failed): what the connection does next."""
        self._busy = False
        if failed or not response.complete:  # a 500 if nothing went out yet, else cut it off
            if response.started:
                self._abort()
            else:
                response.fail()
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if not response.keep_alive or self._closing:
            transport.close()
            return
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        self._arm_timer()
        if self._buffer:
            self._next()

    # -- helpers ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    async def drain(self) -> None:
        if not self._write_paused or self._closing:
            return
        fut = self._loop.create_future()
        self._drain = fut
        try:
            await fut
        finally:
            self._drain = None

    def _wake_drain(self) -> None:
        fut = self._drain
        if fut is not None and not fut.done():
            fut.set_result(None)

    def lost(self) -> asyncio.Future[None]:
        """Done when the connection is gone."""
        if self._lost is None:
            self._lost = self._loop.create_future()
            if self._transport is None or self._transport.is_closing():
                self._lost.set_result(None)
        return self._lost

    def _abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def _arm_timer(self) -> None:
        """The connection is idle from now: close it after the keep-alive timeout unless a whole
        head comes first. One timer per idle period, not one per request: when it fires early
        (the connection was busy meanwhile), it waits for the rest of the current idle period."""
        self._idle_since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._idle_since + self._keep_alive_timeout, self._idle_timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle_timeout(self) -> None:
        self._timer = None
        since, transport = self._idle_since, self._transport
        if since is None or self._busy or transport is None or transport.is_closing():
            return  # answering: the answer starts the next idle period
        deadline = since + self._keep_alive_timeout
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._idle_timeout)
            return
        transport.close()

    def _hand_off(self) -> None:
        """Give the connection, with every byte not yet answered, to uvicorn's protocol."""
        transport = self._transport
        if transport is None or self._handed_off:
            return
        self._handed_off = True
        self._cancel_timer()
        self._server_state.connections.discard(self)
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        protocol = HttpToolsProtocol(
            config=self._config,
            server_state=self._server_state,
            app_state=self._app_state,
            _loop=self._loop,
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self._buffer = self._buffer, b""
        if data:
            protocol.data_received(data)


class FrontRequest:
    """A body-less request the front parsed, as its app's fast path gets it: ``method`` (GET or
    HEAD), ``raw_path`` (percent-encoded, without the query), ``query``, ``headers`` (lower-case
    names, values without surrounding whitespace, in order; exactly one ``host``), ``close``
    (the client asked to close after it) and ``fields`` (the header section as received: the
    same bytes give the same ``headers``)."""

    __slots__ = ("_protocol", "_response", "close", "fields", "headers", "method", "query", "raw_path")

    def __init__(
        self,
        protocol: FrontProtocol,
        method: str,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        close: bool,
        fields: bytes = b"",
    ) -> None:
        self._protocol = protocol
        self._response: _Response | None = None
        self.method = method
        self.raw_path = raw_path
        self.query = query
        self.headers = headers
        self.close = close
        self.fields = fields

    @property
    def client(self) -> tuple[str, int] | None:
        return self._protocol._client

    @property
    def scheme(self) -> str:
        return self._protocol._scheme

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, *, checked: bool) -> None:
        """Write the whole response: what ``http.response.start`` with ``status`` and ``headers``
        and one last ``http.response.body`` with ``body`` make on the ASGI path, byte for byte.
        ``checked``: the header names are tokens and the values hold no control character but
        HTAB (they come from a parser that admits nothing else), so they are not searched again.
        Then call :meth:`done`."""
        protocol = self._protocol
        response = self._response = _Response(protocol, self.method == "HEAD")
        response.keep_alive = not (self.close or protocol._closing)
        response.start(status, headers, checked=checked)
        response.body(body, False)

    def done(self) -> None:
        """The request is over (after :meth:`respond`): the connection goes on to the next."""
        response = self._response
        if response is not None:
            self._protocol._settle(response, False)

    def hand_over(self, app: ASGIApp) -> None:
        """Answer the request through the ASGI ``app`` after all (in a task, with the scope the
        ASGI path would have had), instead of :meth:`respond`."""
        self._protocol._run(app, self)

    def fail(self, error: Exception) -> None:
        """The fast path failed: as an ASGI app raising, a 500 (the connection closed) when
        nothing was written yet, else the connection cut."""
        _log.error("Exception in ASGI application", exc_info=error)
        response = self._response or _Response(self._protocol, self.method == "HEAD")
        self._protocol._settle(response, True)


class _Response:
    """The ASGI ``receive`` / ``send`` pair of one body-less request on a :class:`FrontProtocol`."""

    __slots__ = (
        "_bodied",
        "_body_sent",
        "_chunked",
        "_head",
        "_left",
        "_protocol",
        "_received",
        "complete",
        "keep_alive",
        "method_head",
        "started",
        "status",
    )

    def __init__(self, protocol: FrontProtocol, method_head: bool) -> None:
        self._protocol = protocol
        self._received = False
        self._head: list[bytes] | None = None
        self._chunked = False
        self._left: int | None = None  # Content-Length still to send
        self._body_sent = False
        self._bodied = False  # the response has a body (set by start)
        self.method_head = method_head
        self.started = False
        self.complete = False
        self.keep_alive = True
        self.status = 0

    async def receive(self) -> Message:
        if not self._received:
            self._received = True
            return _EMPTY_BODY
        if not self.complete:
            await self._protocol.lost()
        return _DISCONNECT

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got {kind!r}.")
            self.start(message["status"], message.get("headers", ()), checked=False)
            return
        if self.complete:
            raise RuntimeError(f"Unexpected ASGI message {kind!r} after the response was complete.")
        if kind != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got {kind!r}.")
        more: bool = message.get("more_body", False)
        self.body(message.get("body", b""), more)
        if more and self._protocol._write_paused:
            await self._protocol.drain()

    def body(self, body: bytes, more: bool) -> None:
        """Write a part of the body (the head with the first)."""
        protocol = self._protocol
        bodied = self._bodied
        head = self._head
        if head is not None:  # the head waits for the first body: its length may be known now
            self._head = None
            if self._left is None and not self._chunked and bodied:
                if more:
                    self._chunked = True
                    head.append(b"transfer-encoding: chunked\r\n")
                else:
                    self._left = len(body)
                    head.append(b"content-length: %d\r\n" % len(body))
            head.append(b"\r\n")
            if bodied and body and not self._chunked:
                head.append(body)
                self._account(len(body))
                protocol.write(b"".join(head))
                body = b""
            else:
                protocol.write(b"".join(head))
        if body and bodied:
            if self._chunked:
                protocol.write(b"%x\r\n%b\r\n" % (len(body), body))
            else:
                self._account(len(body))
                protocol.write(body)
        if not more:
            if self._chunked and bodied:
                protocol.write(b"0\r\n\r\n")
            elif self._left and bodied:
                raise RuntimeError("Response content shorter than Content-Length")
            self.complete = True

    def start(self, status: int, headers: Any, *, checked: bool) -> None:
        """Begin the response (the head is written with the first body)."""
        line = _STATUS_LINE.get(status) or b"HTTP/1.1 %d \r\n" % status
        head = [line]
        for name, value in self._protocol._server_state.default_headers:
            head += (name, b": ", value, b"\r\n")
        close_sent = False
        for raw_name, value in headers:
            if not checked:
                if _BAD_NAME.search(raw_name):
                    raise RuntimeError("Invalid HTTP header name.")
                if _BAD_VALUE.search(value):
                    raise RuntimeError("Invalid HTTP header value.")
            name = raw_name.lower()
            if name == b"content-length" and self._left is None and not self._chunked:
                self._left = int(value)
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self._chunked, self._left = True, None
            elif name == b"connection" and b"close" in value.lower():
                self.keep_alive = False
                close_sent = True
            head += (name, b": ", value, b"\r\n")
        if not self.keep_alive and not close_sent:
            head.append(b"connection: close\r\n")
        self.status = status
        self.started = True
        self._bodied = not self.method_head and status not in _NO_BODY_STATUS and status >= 200
        self._head = head

    def _account(self, size: int) -> None:
        if self._left is not None:
            if size > self._left:
                raise RuntimeError("Response content longer than Content-Length")
            self._left -= size

    def fail(self) -> None:
        """A 500 for an app that failed before it started its response."""
        self.keep_alive = False
        self._protocol.write(
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"connection: close\r\ncontent-length: 21\r\n\r\nInternal Server Error"
        )
        self._protocol._closing = True
        transport = self._protocol._transport
        if transport is not None:
            transport.close()


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None
