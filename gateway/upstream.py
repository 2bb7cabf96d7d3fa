"""The upstream side of the proxy: a lean HTTP/1.1 client with keep-alive pools and streaming.

One :class:`UpstreamPool` per gateway process keeps idle connections per :class:`Origin` and
sends each request on one of them (RFC 9112). It is built on an asyncio ``Protocol`` (uvloop
in production); the response head is parsed by one strict pattern and the body framing is read
here, so that every size read from the network has a bound of its own.

Request (RFC 9112 §3, §6): the request line, the caller's headers (``Host: host:port`` added
when the caller gave none) and the framing, which is always ours — a caller's
``Transfer-Encoding`` is dropped and its ``Content-Length`` is checked against the body:

* ``bytes`` / ``None``: ``Content-Length`` (left out for GET and HEAD without a body);
* an async iterable: ``Transfer-Encoding: chunked`` (§7.1), or exactly the declared number of
  bytes when the caller put a ``content-length`` header in (more or fewer is refused). The
  body is written as it comes, awaiting the transport's drain, so it never sits in memory. A
  response that arrives before the body is written in full stops the upload (the connection is
  then not reused).

A request line or header holding CR, LF or NUL is refused before anything is sent: no caller
can split one request into two.

Response (RFC 9112 §4-§7, RFC 9110 §15):

* the head is at most ``max_header_bytes`` with at most ``max_headers`` fields; interim 1xx
  responses are skipped (§15.2 of RFC 9110), except 101 which is returned as is;
* the body length follows RFC 9112 §6.3, and nothing is guessed: a response to HEAD and 1xx,
  204 and 304 responses have none; ``Transfer-Encoding`` must be exactly ``chunked``; a
  response with both ``Transfer-Encoding`` and ``Content-Length``, with several
  ``Content-Length`` fields (llhttp refuses even equal ones) or a malformed one is refused
  (``UpstreamError("protocol")``) and its connection closed — the framing conflicts that
  request/response smuggling is made of;
* chunked bodies are de-chunked here: chunk-size lines of at most 4 KiB (§7.1.1), trailer
  sections (§7.1.2) read within ``max_header_bytes`` and dropped;
* without either header the body runs to the end of the connection, which is then not reused;
* reading pauses (``pause_reading``) when more than 256 KiB wait unread and resumes as
  :meth:`UpstreamResponse.chunks` consumes them: a 1 GiB response never sits in memory.

``Transfer-Encoding`` is taken out of the headers the caller sees (the body is handed over
de-chunked). ``Content-Length`` stays, as it still describes what :meth:`~UpstreamResponse.chunks`
yields (or, for HEAD, what a GET would have) — except in a 204 or 304 response, where it frames
nothing and a server relaying it would wait for a body that never comes (RFC 9110 §8.6).

Keep-alive (RFC 9112 §9.3): a connection goes back to its origin's idle stack (LIFO, at most
``max_idle_per_origin``, closed after ``idle_timeout``) when its response was complete, the
request went out in full, the response was HTTP/1.1 without ``Connection: close`` and nothing
arrived beyond the response. Anything else closes it: an error, a timeout, an HTTP/1.0
response, a body still arriving at :meth:`~UpstreamResponse.aclose`, data while idle.

Timeouts: ``connect_timeout`` for the TCP (and TLS) connection; ``read_timeout`` for the
response head after the request was written, between two reads of the body and for a stalled
upload. Retries: a request that fails on a *reused* connection before any byte of the response
arrived (the upstream closed the idle connection meanwhile, §9.3.1) is sent once more on a
fresh connection, and only when the caller calls it idempotent (RFC 9110 §9.2.2) and its body
can be sent again (bytes or none). Nothing else is ever retried.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal, cast
from urllib.parse import urlsplit

__all__ = ["Origin", "UpstreamError", "UpstreamErrorKind", "UpstreamPool", "UpstreamResponse"]

UpstreamErrorKind = Literal["connect", "timeout", "protocol", "closed"]

# Reading pauses above the high-water mark of unread body bytes, resumes at the low one.
READ_HIGH_WATER = 256 * 1024
READ_LOW_WATER = 64 * 1024
MAX_CHUNK_LINE = 4096  # chunk-size line with its extensions (RFC 9112 §7.1.1)
MAX_INTERIM = 16  # 1xx responses skipped before the final one
_LARGE_PAYLOAD = 16 * 1024  # above this a bytes body is written apart from the head

# Connection states.
_IDLE = 0  # no exchange under way
_HEAD = 1  # request sent (or being sent); waiting for the response head
_LENGTH = 2  # body of a known length
_CHUNKED = 3  # chunked body
_UNTIL_EOF = 4  # body delimited by the end of the connection
_DONE = 5  # the response arrived in full
_BROKEN = 6  # failed; the connection is closed

# Chunked decoder states (RFC 9112 §7.1).
_C_SIZE = 0
_C_DATA = 1
_C_CRLF = 2
_C_TRAILER = 3

_HOST = re.compile(r"[a-z0-9_.-]+")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
# A response head (RFC 9112 §4, §5): the status line (the reason phrase may be left out), then
# fields "token: value" with no control characters but HTAB and no line folding, then CRLF.
_RESPONSE_HEAD = re.compile(
    rb"HTTP/1\.([01]) ([1-9][0-9]{2})(?: ([\t\x20-\x7e\x80-\xff]*))?\r\n"
    rb"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*)\r\n"
)
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n\x00]*)?")
_NO_BODY_METHODS = frozenset({b"GET", b"HEAD"})
# The fields the framing or the connection depends on (the rest are only copied).
_FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"host"})


def _check_lines(head: bytes, lines: int) -> None:
    """Each of the ``lines`` lines ends in CRLF and nothing else holds CR, LF or NUL (RFC 9112
    §2.2, §5): a header value with a line break would smuggle a second request."""
    if head.count(b"\n") != lines or head.count(b"\r") != lines or b"\x00" in head:
        raise UpstreamError("protocol", "a request header holds CR, LF or NUL")


class UpstreamError(Exception):
    """The upstream could not be reached or did not answer properly.

    ``kind`` is ``connect`` (no connection), ``timeout`` (connect or read timeout), ``protocol``
    (a response or request that breaks HTTP/1.1 framing) or ``closed`` (the connection ended
    early). ``str()`` names the kind and what happened, never a header or body byte, so it is
    safe to log. ``stale`` is true when the connection ended before any byte of the response:
    the one case :meth:`UpstreamPool.send` may retry.
    """

    def __init__(self, kind: UpstreamErrorKind, detail: str, *, stale: bool = False) -> None:
        super().__init__(kind, detail)
        self.kind: UpstreamErrorKind = kind
        self.detail = detail
        # Failed on a connection before any response byte: safe to retry when idempotent.
        self.stale = stale

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an application's upstream lives: scheme, host and port (RFC 6454 §4)."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Origin:
        """``http://127.0.0.1:9001`` -> Origin; ``ValueError`` naming the problem otherwise.

        Only ``http`` and ``https`` with a host, an optional port and no path (a lone ``/`` is
        allowed), query, fragment or credentials: the path belongs to the route, not here.
        """
        if not isinstance(url, str) or not url:
            raise ValueError("an upstream URL is required, e.g. http://127.0.0.1:9001")
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as e:
            raise ValueError(f"{url!r} is not a valid URL ({e})") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"{url!r}: the scheme must be http or https")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"{url!r}: credentials in an upstream URL are not allowed")
        host = (parts.hostname or "").lower()
        if not host:
            raise ValueError(f"{url!r}: a host is required")
        if ":" in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{url!r}: {host!r} is not a valid IPv6 address") from None
        elif not _HOST.fullmatch(host):
            raise ValueError(f"{url!r}: {host!r} is not a valid host name")
        if parts.path not in ("", "/") or parts.query or parts.fragment or url.rstrip().endswith("?"):
            raise ValueError(f"{url!r}: an upstream is an origin only (no path, query or fragment)")
        if port is None:
            port = 443 if scheme == "https" else 80
        if not 0 < port < 65536:
            raise ValueError(f"{url!r}: the port must be between 1 and 65535")
        return cls(scheme, host, port)

    @property
    def authority(self) -> str:
        """``host:port`` as in a Host header (IPv6 literals in brackets, RFC 3986 §3.2.2)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}"


class UpstreamResponse:
    """A response head, and its body to stream with :meth:`chunks`; always :meth:`aclose` it."""

    __slots__ = ("_conn", "content_length", "headers", "http_version", "reason", "status")

    def __init__(
        self,
        conn: _Connection,
        *,
        status: int,
        reason: bytes,
        http_version: str,
        headers: list[tuple[bytes, bytes]],
        content_length: int | None,
    ) -> None:
        self._conn: _Connection | None = conn
        self.status = status
        self.reason = reason
        self.http_version = http_version
        # Lower-case names, as received, without Transfer-Encoding (the body is de-chunked).
        self.headers = headers
        # How many bytes chunks() yields, when the head says so in advance (0 without a body).
        self.content_length = content_length

    def complete_body(self) -> bytes | None:
        """The whole body when all of it has arrived already (a small response comes with its
        head), else None: stream it with :meth:`chunks`."""
        conn = self._conn
        if conn is None or conn.response is not self or conn.state != _DONE:
            return None
        return conn.take_all()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, de-chunked; raises :class:`UpstreamError` when it breaks off
        or when nothing arrives for ``read_timeout`` seconds."""
        conn = self._conn
        while conn is not None and conn.response is self and self._conn is conn:
            chunk = conn.next_chunk()
            if chunk is not None:
                yield chunk
                continue
            state = conn.state
            if state == _DONE:
                return
            error = conn.error
            if error is not None:
                raise UpstreamError(error.kind, error.detail)
            await conn.wait(f"the upstream sent no response data for {conn.read_timeout:g} s")

    async def aclose(self) -> None:
        """Give the connection back to the pool when the response arrived in full and keep-alive
        holds; close it otherwise. Idempotent."""
        self.close()

    def close(self) -> None:
        """:meth:`aclose`, for a caller that is not a coroutine."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish(self)


class _Connection(asyncio.Protocol):
    """One upstream connection: writes a request, reads its response (see the module doc)."""

    def __init__(self, pool: UpstreamPool, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = loop
        self.read_timeout = pool.read_timeout
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.in_idle = False
        self.state = _IDLE
        self.response: UpstreamResponse | None = None
        self.error: UpstreamError | None = None
        self._head_request = False
        self._received = False
        self._keep_alive = False
        self._request_sent = False
        self._head_buf: bytearray | None = None
        self._scan = 0
        self._interim = 0
        self._remaining = 0
        self._cstate = _C_SIZE
        self._cbuf = b""
        self._trailer = 0
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._write_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._notify: Callable[[], None] | None = None  # start()'s caller, until its head came
        self._feeding = False  # inside data_received
        self.exchanges = 0  # start() exchanges so far: tells the pool's read deadlines apart

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not subclass asyncio.Transport, hence no isinstance).
        self.transport = cast(asyncio.Transport, transport)
        self.pool.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.lost(self)
        state = self.state
        if state == _UNTIL_EOF and exc is None:
            self._keep_alive = False
            self.state = _DONE
        elif state == _HEAD:
            if self._received:
                self.fail(
                    UpstreamError("protocol", "the upstream closed the connection inside the response head")
                )
            else:
                self.fail(
                    UpstreamError(
                        "closed", "the upstream closed the connection without answering", stale=True
                    )
                )
        elif state in (_LENGTH, _CHUNKED, _UNTIL_EOF):
            self.fail(
                UpstreamError("closed", "the upstream closed the connection before the end of the body")
            )
        self._wake()
        self._wake_drain()

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost decides what it means

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def data_received(self, data: bytes) -> None:
        if self._notify is None:
            self._feed(data)
            return
        # A start() exchange: its caller hears of the head once all that came with it was read,
        # so that a small body is complete by then.
        self._feeding = True
        try:
            self._feed(data)
        finally:
            self._feeding = False
        if self.response is not None or self.error is not None:
            self._fire()

    def _feed(self, data: bytes) -> None:
        state = self.state
        if state == _LENGTH:
            self._feed_length(data)
        elif state == _CHUNKED:
            self._feed_chunked(data)
        elif state == _HEAD:
            self._received = True
            self._feed_head(data)
        elif state == _UNTIL_EOF:
            self._push(data)
        else:  # nothing is expected now: whatever this is, the connection cannot be trusted
            self._keep_alive = False
            if state == _IDLE:
                self.abort()

    # -- one exchange -------------------------------------------------------------------------

    async def exchange(
        self,
        head: bytes,
        payload: bytes,
        stream: AsyncIterable[bytes] | None,
        declared: int | None,
        head_request: bool,
    ) -> UpstreamResponse:
        transport = self._begin(head_request)
        if stream is None:
            if not payload:
                transport.write(head)
            elif len(payload) > _LARGE_PAYLOAD:
                transport.writelines((head, payload))
            else:
                transport.write(head + payload)
            self._request_sent = True
        else:
            transport.write(head)
            await self._write_stream(transport, stream, declared)
        while self.response is None:
            if self.error is not None:
                raise self.error
            await self.wait(f"the upstream did not answer within {self.read_timeout:g} s")
        return self.response

    def start(self, head: bytes, head_request: bool, notify: Callable[[], None]) -> None:
        """Send a request without a body, without awaiting its answer: ``notify`` is called once,
        when the response head came (``response`` is set, with as much of the body as came with
        it) or the exchange failed (``error`` is set: what :meth:`exchange` would have raised,
        the read timeout included). Raises :class:`UpstreamError` (stale) when the connection
        is already closed."""
        transport = self._begin(head_request)
        self._notify = notify
        self.exchanges += 1
        self.pool.awaiting_head(self)
        transport.write(head)
        self._request_sent = True

    def awaiting(self, exchange: int) -> bool:
        """Whether start()'s exchange number ``exchange`` still waits for its head."""
        return self._notify is not None and self.exchanges == exchange

    def _begin(self, head_request: bool) -> asyncio.Transport:
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise UpstreamError("closed", "the connection was closed before the request", stale=True)
        self.state = _HEAD
        self.response = None
        self.error = None
        self._head_request = head_request
        self._received = False
        self._keep_alive = False
        self._request_sent = False
        self._interim = 0
        self._head_buf, self._scan, self._cbuf = None, 0, b""
        return transport

    def _fire(self) -> None:
        notify, self._notify = self._notify, None
        if notify is not None:
            notify()

    async def _write_stream(
        self, transport: asyncio.Transport, stream: AsyncIterable[bytes], declared: int | None
    ) -> None:
        sent = 0
        async for chunk in stream:
            if self.response is not None:  # answered early: the rest of the upload is not wanted
                return
            if self.error is not None:
                raise self.error
            if not chunk:
                continue  # an empty chunk would end a chunked body
            sent += len(chunk)
            if declared is None:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            elif sent > declared:
                raise UpstreamError("protocol", "the request body is longer than its Content-Length")
            else:
                transport.write(chunk)
            if self._write_paused:
                await self._drain()
                if self.response is not None:
                    return
                if self.error is not None:
                    raise self.error
        if self.response is not None:
            return
        if self.error is not None:
            raise self.error
        if declared is None:
            transport.write(b"0\r\n\r\n")
        elif sent != declared:
            raise UpstreamError("protocol", "the request body is shorter than its Content-Length")
        self._request_sent = True

    async def wait(self, what: str) -> None:
        """Wait for the next event on the read side, at most ``read_timeout`` seconds."""
        fut = self.loop.create_future()
        self._waiter = fut
        handle = self.loop.call_later(self.read_timeout, self._timed_out, fut, what)
        try:
            await fut
        finally:
            handle.cancel()
            self._waiter = None

    async def _drain(self) -> None:
        fut = self.loop.create_future()
        self._drain_waiter = fut
        what = f"the upstream took none of the request body for {self.read_timeout:g} s"
        handle = self.loop.call_later(self.read_timeout, self._timed_out, fut, what)
        try:
            await fut
        finally:
            handle.cancel()
            self._drain_waiter = None

    def _timed_out(self, fut: asyncio.Future[None], what: str) -> None:
        if not fut.done():
            self.fail(UpstreamError("timeout", what))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if (
            self._notify is not None
            and not self._feeding
            and (self.response is not None or self.error is not None)
        ):
            self._fire()

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: UpstreamError) -> None:
        """End the exchange with ``error`` and close the connection."""
        if self.error is None:
            self.error = error
        self.state = _BROKEN
        self._keep_alive = False
        self.abort()
        self._wake()
        self._wake_drain()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.pool.lost(self)

    def finish(self, response: UpstreamResponse) -> None:
        """The caller is done with ``response``: keep the connection or close it."""
        if self.response is not response:
            return
        reusable = (
            self.state == _DONE
            and self._keep_alive
            and self._request_sent
            and not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
        )
        self.response = None
        self._chunks.clear()
        self._buffered = 0
        if self._reading_paused and not self.closed and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        if reusable:
            self.state = _IDLE
            self.pool.release(self)
        else:
            self.abort()

    # -- body hand-over -----------------------------------------------------------------------

    def _push(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > READ_HIGH_WATER and not self._reading_paused and not self.closed:
            self._reading_paused = True
            assert self.transport is not None  # noqa: S101 - set in connection_made
            self.transport.pause_reading()
        self._wake()

    def take_all(self) -> bytes:
        chunks = self._chunks
        body = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return body

    def next_chunk(self) -> bytes | None:
        if not self._chunks:
            return None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered <= READ_LOW_WATER:
            self._reading_paused = False
            if not self.closed and self.transport is not None:
                self.transport.resume_reading()
        return chunk

    def _finished(self, extra: bool) -> None:
        self.state = _DONE
        if extra:  # bytes beyond the response: we never pipeline, so the stream is out of step
            self._keep_alive = False
        self._wake()

    # -- parsing ------------------------------------------------------------------------------

    def _feed_head(self, data: bytes) -> None:
        limit = self.pool.max_header_bytes
        buf: bytes | bytearray
        if self._head_buf is not None:
            self._head_buf += data
            buf, start = self._head_buf, self._scan
        else:
            buf, start = data, 0
        while True:
            end = buf.find(b"\r\n\r\n", start)
            if end < 0 or end + 4 > limit:
                if end >= 0 or len(buf) > limit:
                    self.fail(UpstreamError("protocol", f"the response head is larger than {limit} bytes"))
                    return
                # An LF without its CR (RFC 9112 §2.2) would leave the head without its end: refused.
                if buf.find(b"\n\n", start) >= 0 or buf.find(b"\n\r\n", start) >= 0:
                    self.fail(UpstreamError("protocol", "malformed response head (bare LF)"))
                    return
                if self._head_buf is None:
                    self._head_buf = bytearray(buf)
                self._scan = max(0, len(buf) - 3)
                return
            head, rest = bytes(buf[: end + 4]), bytes(buf[end + 4 :])
            self._head_buf, self._scan = None, 0
            if self._parse_head(head):
                if rest:
                    self._feed(rest)
                return
            if self.state != _HEAD or not rest:  # failed, or an interim response alone
                return
            buf, start = rest, 0

    def _parse_head(self, head: bytes) -> bool:
        """Parse one response head; True when it is the final one (the response is set)."""
        match = _RESPONSE_HEAD.fullmatch(head)
        if match is None:
            self.fail(UpstreamError("protocol", "malformed response head"))
            return False
        minor, code, reason, block = match.groups()
        status = int(code)
        version = "1.1" if minor == b"1" else "1.0"
        lines = block.split(b"\r\n")
        lines.pop()  # the block ends with CRLF
        if len(lines) > self.pool.max_headers:
            self.fail(
                UpstreamError("protocol", f"the response has more than {self.pool.max_headers} header fields")
            )
            return False
        headers: list[tuple[bytes, bytes]] = []
        content_lengths: list[bytes] = []
        transfer_encoding: list[bytes] = []
        close = False
        for line in lines:
            name, _, value = line.partition(b":")
            name = name.lower()
            value = value.strip(b" \t")
            if name in _FRAMING_FIELDS:
                if name == b"transfer-encoding":
                    transfer_encoding.append(value)
                    continue
                if name == b"content-length":
                    content_lengths.append(value)
                elif (
                    name == b"connection"
                    and b"close" in (lowered := value.lower())
                    and b"close" in [t.strip() for t in lowered.split(b",")]
                ):
                    close = True
            headers.append((name, value))
        if 100 <= status < 200 and status != 101:  # interim (RFC 9110 §15.2): skip it
            self._interim += 1
            if self._interim > MAX_INTERIM:
                self.fail(UpstreamError("protocol", f"more than {MAX_INTERIM} interim responses"))
                return False
            return False
        content_length: int | None = None
        if content_lengths:
            value = content_lengths[0]
            if len(content_lengths) > 1 or not value.isdigit() or len(value) > 18:
                self.fail(UpstreamError("protocol", "invalid or repeated Content-Length in the response"))
                return False
            content_length = int(value)
        chunked = False
        if transfer_encoding:
            if content_length is not None:
                self.fail(
                    UpstreamError("protocol", "the response has both Transfer-Encoding and Content-Length")
                )
                return False
            if len(transfer_encoding) > 1 or transfer_encoding[0].lower() != b"chunked":
                self.fail(UpstreamError("protocol", "unsupported Transfer-Encoding in the response"))
                return False
            chunked = True
        self._keep_alive = version == "1.1" and not close and status != 101
        if self._head_request or status in (101, 204, 304):  # RFC 9112 §6.3 rules 1 and 2
            self.state = _DONE
            if status in (204, 304) and content_length is not None:  # frames nothing here
                headers = [(name, value) for name, value in headers if name != b"content-length"]
            content_length = 0
        elif chunked:
            self.state = _CHUNKED
            self._cstate = _C_SIZE
            self._cbuf = b""
        elif content_length is not None:
            self._remaining = content_length
            self.state = _LENGTH if content_length else _DONE
        else:  # §6.3 rule 8: the body ends with the connection
            self.state = _UNTIL_EOF
            self._keep_alive = False
        self.response = UpstreamResponse(
            self,
            status=status,
            reason=reason or b"",
            http_version=version,
            headers=headers,
            content_length=content_length,
        )
        self._wake()
        self._wake_drain()
        return True

    def _feed_length(self, data: bytes) -> None:
        remaining, size = self._remaining, len(data)
        if size < remaining:
            self._remaining = remaining - size
            self._push(data)
            return
        self._remaining = 0
        self._push(data if size == remaining else data[:remaining])
        self._finished(size > remaining)

    def _feed_chunked(self, data: bytes) -> None:
        if self._cbuf:
            data, self._cbuf = self._cbuf + data, b""
        pos, size = 0, len(data)
        limit = self.pool.max_header_bytes
        while pos < size:
            cstate = self._cstate
            if cstate == _C_DATA:
                take = min(self._remaining, size - pos)
                self._push(data if take == size else data[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._cstate = _C_CRLF
            elif cstate == _C_CRLF:
                if size - pos < 2:
                    break
                if data[pos : pos + 2] != b"\r\n":
                    self.fail(UpstreamError("protocol", "a chunk of the response does not end with CRLF"))
                    return
                pos += 2
                self._cstate = _C_SIZE
            elif cstate == _C_SIZE:
                eol = data.find(b"\r\n", pos, pos + MAX_CHUNK_LINE + 2)
                if eol < 0:
                    if size - pos > MAX_CHUNK_LINE:
                        self.fail(
                            UpstreamError(
                                "protocol", f"a chunk-size line is longer than {MAX_CHUNK_LINE} bytes"
                            )
                        )
                        return
                    break
                match = _CHUNK_LINE.fullmatch(data, pos, eol)
                if match is None:
                    self.fail(UpstreamError("protocol", "malformed chunk size in the response"))
                    return
                pos = eol + 2
                self._remaining = int(match.group(1), 16)
                if self._remaining:
                    self._cstate = _C_DATA
                else:
                    self._cstate = _C_TRAILER
                    self._trailer = 0
            else:  # the trailer section (RFC 9112 §7.1.2), dropped: ends at an empty line
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    if self._trailer + size - pos > limit:
                        self.fail(
                            UpstreamError("protocol", f"the response trailers are larger than {limit} bytes")
                        )
                        return
                    break
                self._trailer += eol - pos + 2
                if self._trailer > limit or b"\n" in data[pos:eol] or b"\r" in data[pos:eol]:
                    self.fail(UpstreamError("protocol", "malformed or oversized response trailers"))
                    return
                if eol == pos:
                    self._finished(eol + 2 < size)
                    return
                pos = eol + 2
        if pos < size:
            self._cbuf = data[pos:]


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections per origin, and :meth:`send` to use them (module doc)."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        idle_timeout: float = 60.0,
        max_idle_per_origin: int = 256,
        max_header_bytes: int = 65536,
        max_headers: int = 128,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        for name, number in (
            ("connect_timeout", connect_timeout),
            ("read_timeout", read_timeout),
            ("idle_timeout", idle_timeout),
        ):
            if not number > 0:
                raise ValueError(f"UpstreamPool: {name} must be positive")
        if max_idle_per_origin < 0 or max_header_bytes < 64 or max_headers < 1:
            raise ValueError(
                "UpstreamPool: max_idle_per_origin, max_header_bytes or max_headers out of range"
            )
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.max_idle_per_origin = max_idle_per_origin
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self._ssl = ssl_context
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._authorities: dict[Origin, bytes] = {}
        self._methods: dict[str, bytes] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        # start() exchanges waiting for their response head, in the order they began, with their
        # read deadlines (one read_timeout for the pool: the deadlines come in order too), and
        # one timer for the earliest: no timer made and cancelled per request.
        self._heads: deque[tuple[float, int, _Connection]] = deque()
        self._heads_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._created = 0
        self._reused = 0
        self._retried = 0

    async def send(
        self,
        origin: Origin,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: AsyncIterable[bytes] | bytes | None = None,
        *,
        idempotent: bool,
        fresh: bool = False,
    ) -> UpstreamResponse:
        """Send one request and return its response once the head arrived (module doc).

        ``target`` is the request-target as is (origin-form: path and query); ``headers`` are
        sent in order as given, except the framing ones. Raises :class:`UpstreamError`; an
        exception from iterating ``body`` propagates as it is. The caller must
        :meth:`UpstreamResponse.aclose` the response. ``fresh``: on a new connection and not
        retried — for a request that already failed on a reused one (:meth:`take_idle`).
        """
        if self._closed:
            raise UpstreamError("closed", "the upstream pool is closed")
        head, payload, stream, declared = self._request_head(origin, method, target, headers, body)
        head_request = method == "HEAD"
        retried = fresh
        if fresh:
            self._retried += 1
        while True:
            conn = None if fresh else self.take_idle(origin)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(origin)
            try:
                return await conn.exchange(head, payload, stream, declared, head_request)
            except UpstreamError as e:
                conn.abort()
                if e.stale and reused and idempotent and stream is None and not retried:
                    retried = True
                    self._retried += 1
                    continue
                raise
            except BaseException:
                conn.abort()
                raise

    async def close(self) -> None:
        """Close every connection, idle or in use; the pool refuses requests afterwards."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._heads_timer is not None:
            self._heads_timer.cancel()
            self._heads_timer = None
        self._heads.clear()
        for conn in list(self._open):
            if conn.state in (_HEAD, _LENGTH, _CHUNKED, _UNTIL_EOF):  # in use: its reader learns why
                conn.fail(UpstreamError("closed", "the upstream pool was closed"))
            else:
                conn.abort()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports report their end

    def stats(self) -> dict[str, int]:
        """Figures for ``/metrics``: connections open and idle now; connections made, requests
        sent on a reused connection and requests retried, since the start."""
        return {
            "open": len(self._open),
            "idle": sum(len(stack) for stack in self._idle.values()),
            "created": self._created,
            "reused": self._reused,
            "retried": self._retried,
        }

    # -- request head -------------------------------------------------------------------------

    def request_line(self, method: str, target: bytes) -> bytes:
        """``METHOD target HTTP/1.1`` CRLF; :class:`UpstreamError` for a method that is not a
        token or a target with a control character or a space."""
        verb = self._methods.get(method)
        if verb is None:
            if not _TOKEN.fullmatch(method):
                raise UpstreamError("protocol", "invalid request method")
            verb = self._methods[method] = method.encode("ascii")
        if not target or _BAD_TARGET.search(target):
            raise UpstreamError("protocol", "invalid request target")
        return b"%b %b HTTP/1.1\r\n" % (verb, target)

    def header_block(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        """``headers`` as :meth:`send` writes them in a request head, for a caller that puts the
        head of a request without a body together from parts (:meth:`request_line`, blocks, the
        final CRLF): the same bytes as :meth:`send` makes of all the blocks' headers at once when
        one block holds the ``Host`` and none ``Content-Length`` or ``Transfer-Encoding``
        (:class:`UpstreamError` for those, and for a value holding CR, LF or NUL)."""
        block, count, declared, _ = self._fields(headers)
        if declared is not None or count != len(headers):
            raise UpstreamError("protocol", "framing headers in a header block")
        _check_lines(block, count)
        return block

    def _fields(self, headers: list[tuple[bytes, bytes]]) -> tuple[bytes, int, int | None, bool]:
        """The header lines sent of ``headers`` (the framing ones are ours: left out), how many,
        the declared Content-Length and whether a Host was among them."""
        parts: list[bytes] = []
        count = 0
        has_host = False
        declared: int | None = None
        for name, value in headers:
            lower = name.lower()
            if lower in _FRAMING_FIELDS:
                if lower == b"content-length":
                    number = value.strip(b" \t")
                    if declared is not None or not number.isdigit() or len(number) > 18:
                        raise UpstreamError(
                            "protocol", "invalid or repeated Content-Length in the request headers"
                        )
                    declared = int(number)
                    continue
                if lower == b"transfer-encoding":
                    continue  # the framing is ours to write
                if lower == b"host":
                    has_host = True
            parts += (name, b": ", value, b"\r\n")
            count += 1
        return b"".join(parts), count, declared, has_host

    def _request_head(
        self,
        origin: Origin,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: AsyncIterable[bytes] | bytes | None,
    ) -> tuple[bytes, bytes, AsyncIterable[bytes] | None, int | None]:
        line = self.request_line(method, target)
        block, count, declared, has_host = self._fields(headers)
        parts = [line, block]
        lines = 1 + count
        if not has_host:
            authority = self._authorities.get(origin)
            if authority is None:
                authority = self._authorities[origin] = origin.authority.encode("ascii")
            parts += (b"host: ", authority, b"\r\n")
            lines += 1
        verb = self._methods[method]
        stream: AsyncIterable[bytes] | None = None
        payload = b""
        if body is None or isinstance(body, bytes | bytearray | memoryview):
            payload = bytes(body) if body else b""
            if declared is not None and declared != len(payload):
                raise UpstreamError("protocol", "the request body does not match its Content-Length")
            if payload or declared is not None or verb not in _NO_BODY_METHODS:
                parts += (b"content-length: ", str(len(payload)).encode("ascii"), b"\r\n")
                lines += 1
        else:
            stream = body
            if declared is None:
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                parts += (b"content-length: ", str(declared).encode("ascii"), b"\r\n")
            lines += 1
        parts.append(b"\r\n")
        lines += 1
        head = b"".join(parts)
        _check_lines(head, lines)
        return head, payload, stream, declared

    # -- connections --------------------------------------------------------------------------

    def awaiting_head(self, conn: _Connection) -> None:
        """``conn`` began a start() exchange: it fails with a timeout unless its head comes
        within ``read_timeout``."""
        heads = self._heads
        while heads and not heads[0][2].awaiting(heads[0][1]):  # answered since
            heads.popleft()
        deadline = conn.loop.time() + self.read_timeout
        heads.append((deadline, conn.exchanges, conn))
        if self._heads_timer is None:
            self._heads_timer = conn.loop.call_at(deadline, self._heads_due)

    def _heads_due(self) -> None:
        self._heads_timer = None
        heads = self._heads
        loop = asyncio.get_running_loop()
        now = loop.time()
        while heads:
            deadline, exchange, conn = heads[0]
            if not conn.awaiting(exchange):
                heads.popleft()
            elif deadline > now:
                self._heads_timer = loop.call_at(deadline, self._heads_due)
                return
            else:
                heads.popleft()
                conn.fail(
                    UpstreamError("timeout", f"the upstream did not answer within {self.read_timeout:g} s")
                )

    def take_idle(self, origin: Origin) -> _Connection | None:
        """A kept-alive connection to ``origin`` for :meth:`_Connection.start` (the caller
        then owns the exchange: :meth:`UpstreamResponse.aclose` its response, or ``abort()`` the
        connection when it failed), or None when none is idle."""
        stack = self._idle.get(origin)
        if not stack:
            return None
        now = stack[-1].loop.time()  # the connection's loop (asyncio.get_running_loop() calls getpid)
        while stack:
            conn = stack.pop()  # LIFO: the warmest connection, least likely closed upstream
            conn.in_idle = False
            transport = conn.transport
            if conn.closed or transport is None or transport.is_closing():
                continue
            if now - conn.idle_since > self.idle_timeout:
                conn.abort()
                continue
            self._reused += 1
            return conn
        return None

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, origin, loop),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
        except TimeoutError:
            raise UpstreamError(
                "timeout", f"connecting to {origin} took more than {self.connect_timeout:g} s"
            ) from None
        except OSError as e:
            reason = e.strerror or getattr(e, "reason", None) or type(e).__name__
            raise UpstreamError("connect", f"cannot connect to {origin}: {reason}") from None
        if self._closed:
            conn.abort()
            raise UpstreamError("closed", "the upstream pool is closed")
        return conn

    def opened(self, conn: _Connection) -> None:
        self._open.add(conn)
        self._created += 1

    def lost(self, conn: _Connection) -> None:
        self._open.discard(conn)
        if conn.in_idle:
            conn.in_idle = False
            stack = self._idle.get(conn.origin)
            if stack is not None:
                stack.remove(conn)

    def release(self, conn: _Connection) -> None:
        """A connection whose exchange ended cleanly: keep it idle, or close it if full."""
        if self._closed:
            conn.abort()
            return
        stack = self._idle.get(conn.origin)
        if stack is None:
            stack = self._idle[conn.origin] = deque()
        if len(stack) >= self.max_idle_per_origin:
            conn.abort()
            return
        conn.idle_since = conn.loop.time()
        conn.in_idle = True
        stack.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(max(0.1, self.idle_timeout / 2), self._sweep)

    def _sweep(self) -> None:
        """Close connections idle for longer than ``idle_timeout`` (oldest at the left)."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() - self.idle_timeout
        remaining = 0
        for origin, stack in list(self._idle.items()):
            while stack and stack[0].idle_since <= deadline:
                conn = stack.popleft()
                conn.in_idle = False
                conn.abort()
            if not stack:
                del self._idle[origin]
            remaining += len(stack)
        if remaining and not self._closed:
            self._sweeper = loop.call_later(max(0.1, self.idle_timeout / 2), self._sweep)
