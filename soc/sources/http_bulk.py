"""The HTTP bulk source: ``POST`` NDJSON documents, authenticated with a key per source.

An ASGI app; the SOC role app mounts it (at ``/api/soc/v1/ingest``). A request::

    POST /api/soc/v1/ingest
    Authorization: Bearer <the source's key>
    Content-Type: application/x-ndjson
    Content-Encoding: gzip            (optional)

    {"@timestamp": "2026-11-02T09:00:00Z", "event": {"action": "deny"}, "source": {"ip": "..."}}
    {"@timestamp": "2026-11-02T09:00:01Z", "event.action": "allow", "source.ip": "..."}

One JSON object a line (http://ndjson.org), nested or with dotted names; blank lines are skipped.
Each document gets ``observer.name`` and ``event.module`` set to the source's name (what a client
sends there is overwritten: one source cannot pass its events off as another's) and, when it has
none, ``@timestamp`` set to the time of receipt. Send an ``event.id`` (or a ``@timestamp``) with
every document if you may resend a batch after a timeout: without them a resend is stored twice.

Answers (JSON; errors in Chinese and English as the admin API writes them, with ``line`` — 1-based
— for a bad line)::

    200 {"accepted": n}              only once every document is on disk (Ingest.accept returned)
    400 bad_json / bad_document      the whole request is refused and nothing is spooled
    400 bad_encoding                 the gzip data is damaged or cut short
    401 unauthenticated              with WWW-Authenticate (RFC 6750 §3); ``soc-ingest-key-refused``
    405 method_not_allowed           not POST
    413 payload_too_large            more than ``max_body_bytes`` (after gzip decoding) or ``max_lines``
    415 unsupported_media_type       not NDJSON, or an encoding other than gzip
    503 spool_full                   with Retry-After: the source keeps its events and tries later

The key is checked by the injected ``authenticate(token) -> source name | None`` before the body
is read (:class:`SourceKeys` is one, comparing in constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import zlib
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from core.events import Category, EventEmitter, Outcome
from core.logging import get_logger
from core.net import TrustedProxies, client_address
from soc.ingest import DocumentRefused
from soc.sources.common import Acceptor, emit, loads_strict
from soc.spool import SpoolFull

__all__ = ["MAX_BODY_BYTES", "MAX_LINES", "BulkError", "BulkIngest", "SourceKeys"]

_log = get_logger("onegate.soc.sources.http")

MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_LINES = 10_000
_REALM = 'Bearer realm="onegate-soc-ingest"'
_MEDIA_TYPES = frozenset({"application/x-ndjson", "application/ndjson"})

Authenticate = Callable[[str], str | Awaitable[str | None] | None]


class SourceKeys:
    """``authenticate`` for a fixed table of ``{source name: key}`` (from the configuration). The
    keys are compared as SHA-256 digests with :func:`hmac.compare_digest`, each of them every
    time, so neither the time taken nor an early exit tells which prefix or which key was near."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        for name, key in keys.items():
            if len(key) < 16:
                raise ValueError(f"the ingest key of source {name!r} is shorter than 16 characters")
        self._digests = [(name, hashlib.sha256(key.encode()).digest()) for name, key in keys.items()]

    def __repr__(self) -> str:
        return f"SourceKeys({[name for name, _ in self._digests]!r})"

    def __call__(self, token: str) -> str | None:
        offered = hashlib.sha256(token.encode()).digest()
        found = None
        for name, digest in self._digests:
            if hmac.compare_digest(offered, digest):
                found = name
        return found


class BulkError(Exception):
    """An answer other than 200: status, code, message in English and Chinese, and the line."""

    def __init__(
        self,
        status: int,
        code: str,
        message_en: str,
        message_zh: str,
        *,
        line: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message_en}")
        self.status = status
        self.code = code
        self.message_en = message_en
        self.message_zh = message_zh
        self.line = line
        self.headers = dict(headers or {})

    def response(self, request_id: str | None) -> Response:
        body: dict[str, Any] = {"error": self.code, "message": {"zh": self.message_zh, "en": self.message_en}}
        if self.line is not None:
            body["line"] = self.line
        body["request_id"] = request_id
        return _json(body, self.status, self.headers)


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers={"cache-control": "no-store", **(headers or {})})


def _too_large(what_en: str, what_zh: str) -> BulkError:
    return BulkError(413, "payload_too_large", what_en, what_zh)


class _Body:
    """The request body, gzip-decoded as it arrives, never past ``limit`` bytes decoded (a small
    gzip bomb is refused after ``limit`` bytes of output, not after inflating it all)."""

    def __init__(self, limit: int, gzipped: bool) -> None:
        self.limit = limit
        self.data = bytearray()
        self._gzip = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS) if gzipped else None

    def feed(self, chunk: bytes) -> None:
        if self._gzip is None:
            self._add(chunk)
            return
        while chunk:
            self._add(self._gzip.decompress(chunk, self.limit - len(self.data) + 1))
            chunk = self._gzip.unconsumed_tail
            if self._gzip.eof:
                # RFC 1952 §2.2: a gzip file may be several members one after another.
                chunk = self._gzip.unused_data + chunk
                if chunk:
                    self._gzip = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)

    def _add(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > self.limit:
            raise _too_large(
                f"the body is larger than {self.limit} bytes (after decompression)",
                f"请求体（解压后）超过 {self.limit} 字节",
            )

    def finish(self) -> bytes:
        if self._gzip is not None:
            self._add(self._gzip.flush())
            if not self._gzip.eof:
                raise BulkError(400, "bad_encoding", "the gzip data is truncated", "gzip 数据不完整")
        return bytes(self.data)


def _flatten(value: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, item in value.items():
        if isinstance(item, Mapping):
            _flatten(item, f"{prefix}{key}.", out)
        else:
            out[f"{prefix}{key}"] = item


class BulkIngest:
    """The ASGI app of the bulk endpoint (see the module docstring)."""

    def __init__(
        self,
        ingest: Acceptor,
        *,
        authenticate: Authenticate,
        events: EventEmitter,
        trusted_proxies: TrustedProxies | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_lines: int = MAX_LINES,
        retry_after: int = 5,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._ingest = ingest
        self._authenticate = authenticate
        self._events = events
        self._trusted = trusted_proxies or TrustedProxies()
        self._max_body = max_body_bytes
        self._max_lines = max_lines
        self._retry_after = retry_after
        self._clock = clock
        self.accepted = 0
        self.refused_requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        request = Request(scope, receive)
        request_id = scope.get("state", {}).get("request_id")
        try:
            response = await self._handle(request, scope)
        except BulkError as e:
            self.refused_requests += 1
            response = e.response(request_id)
        await response(scope, receive, send)

    async def _handle(self, request: Request, scope: Scope) -> Response:
        source = await self._source(request, scope)
        if request.method != "POST":
            raise BulkError(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed here; use POST",
                f"此地址不接受 {request.method}，请用 POST",
                headers={"allow": "POST"},
            )
        body = await self._read(request)
        received = self._clock()
        documents, lines = self._parse(body, source)
        try:
            accepted = await self._ingest.accept(documents, received=received)
        except DocumentRefused as e:
            line = lines[e.index] if 0 <= e.index < len(lines) else None
            raise BulkError(
                400,
                "bad_document",
                f"line {line}: {e.reason}; nothing of this request was accepted",
                f"第 {line} 行：{e.reason}；本请求的内容均未接收",
                line=line,
            ) from None
        except SpoolFull:
            _log.warning("bulk ingest refused: the spool is full", source=source, documents=len(documents))
            raise BulkError(
                503,
                "spool_full",
                "ingest is full; keep the events and send them again later",
                "接收队列已满，请保留事件稍后重发",
                headers={"retry-after": str(self._retry_after)},
            ) from None
        self.accepted += accepted
        return _json({"accepted": accepted})

    async def _source(self, request: Request, scope: Scope) -> str:
        values = request.headers.getlist("authorization")
        reason = "missing"
        if len(values) > 1:
            reason = "malformed"
        elif values:
            scheme, _, token = values[0].strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                reason = "malformed"
            else:
                found = self._authenticate(token)
                if inspect.isawaitable(found):
                    found = await found
                if isinstance(found, str) and found:
                    return found
                reason = "unknown"
        ip = client_address(scope, self._trusted)
        fields: dict[str, Any] = {
            "event.type": ["denied"],
            "onegate.reason": reason,
            "url.path": request.url.path[:2000],
        }
        if ip:
            fields["source.ip"] = ip
        emit(
            self._events,
            "soc-ingest-key-refused",
            fields,
            category=Category.AUTHENTICATION,
            outcome=Outcome.FAILURE,
        )
        _log.warning("bulk ingest key refused", reason=reason, ip=ip)
        # RFC 6750 §3.1: no error code when the request carried no credentials at all.
        challenge = _REALM if reason == "missing" else f'{_REALM}, error="invalid_token"'
        raise BulkError(
            401,
            "unauthenticated",
            "a valid ingest key is required",
            "需要有效的接入密钥",
            headers={"www-authenticate": challenge},
        )

    async def _read(self, request: Request) -> bytes:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in _MEDIA_TYPES:
            raise BulkError(
                415,
                "unsupported_media_type",
                "send the body as application/x-ndjson",
                "请求体须为 application/x-ndjson",
            )
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", "x-gzip"):
            raise BulkError(
                415,
                "unsupported_media_type",
                f"content encoding {encoding[:40]!r} is not supported; use gzip or none",
                f"不支持内容编码 {encoding[:40]!r}，请用 gzip 或不压缩",
            )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            raise _too_large(
                f"the body is larger than {self._max_body} bytes", f"请求体超过 {self._max_body} 字节"
            )
        body = _Body(self._max_body, encoding != "identity")
        try:
            async for chunk in request.stream():
                body.feed(chunk)
            return body.finish()
        except zlib.error:
            raise BulkError(
                400, "bad_encoding", "the body is not valid gzip", "请求体不是有效的 gzip 数据"
            ) from None

    def _parse(self, body: bytes, source: str) -> tuple[list[dict[str, Any]], list[int]]:
        """The documents, stamped with the source, and the line number of each."""
        documents: list[dict[str, Any]] = []
        lines: list[int] = []
        for number, raw in enumerate(body.split(b"\n"), start=1):
            if not raw.strip():
                continue
            if len(documents) >= self._max_lines:
                raise _too_large(f"more than {self._max_lines} lines", f"超过 {self._max_lines} 行")
            try:
                value = loads_strict(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise BulkError(
                    400,
                    "bad_json",
                    f"line {number}: not UTF-8",
                    f"第 {number} 行：不是 UTF-8 编码",
                    line=number,
                ) from None
            except ValueError as e:
                raise BulkError(
                    400,
                    "bad_json",
                    f"line {number}: not valid JSON ({e})"[:300],
                    f"第 {number} 行：不是有效的 JSON",
                    line=number,
                ) from None
            if not isinstance(value, dict):
                raise BulkError(
                    400,
                    "bad_json",
                    f"line {number}: a line holds one JSON object",
                    f"第 {number} 行：每行须为一个 JSON 对象",
                    line=number,
                )
            document: dict[str, Any] = {}
            _flatten(value, "", document)
            # The source is who authenticated, whatever the document says.
            document["observer.name"] = source
            document["event.module"] = source
            documents.append(document)
            lines.append(number)
        return documents, lines
