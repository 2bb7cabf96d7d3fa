"""CSRF protection: signed double-submit token plus Fetch-Metadata and Origin checks.

Scope: **every** POST / PUT / PATCH / DELETE request is checked, whatever its content type,
unless its path is listed in ``exempt_paths`` (exact) or starts with one of
``exempt_prefixes``. Any of our unsafe endpoints might act on a cookie session, and a
cross-site page can send ``text/plain`` or ``multipart`` bodies as easily as urlencoded ones;
checking only some content types would leave that door open. Endpoints authenticated by
something a browser does not attach by itself (the OAuth token endpoint with client
credentials, bearer-token APIs) are exempted explicitly by the role that owns them.

Mechanism (OWASP CSRF cheat sheet, "signed double-submit cookie"):

* a random per-browser value lives in the cookie ``__Host-onegate_csrf`` (``onegate_csrf``
  without https): HttpOnly, SameSite=Lax, Path=/, Secure with https. It is issued the first
  time a page calls ``csrf_token()``;
* the token is ``HMAC-SHA256(secret, cookie value)``; a form carries it in the hidden field
  ``csrf_token``, ``fetch`` in the ``X-CSRF-Token`` header; compared with ``hmac.compare_digest``.
  A token stolen with one cookie is useless with another, and ``__Host-`` stops a sibling
  sub-domain from planting the cookie.

Before the token, ``Sec-Fetch-Site: cross-site`` and an ``Origin`` that is neither this host's
origin nor in ``trusted_origins`` (``null`` included) are refused. Form bodies are buffered
(at most ``max_body_bytes``, else 413) and replayed, so the endpoint reads them as usual.
A refusal is an ``HTTPProblem`` (403 ``csrf_failed`` with a ``CSRFFailure`` reason, 413, or
400 for a malformed body) rendered by ``on_reject``; it never becomes a 500.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request, cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.logging import get_logger
from core.web.errors import ErrorCode, HTTPProblem, ProblemResponder

__all__ = ["CSRFFailure", "CSRFMiddleware", "CSRFState", "csrf_token"]

FIELD_NAME = "csrf_token"
HEADER_NAME = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
FORM_TYPES = frozenset({b"application/x-www-form-urlencoded", b"multipart/form-data"})
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{43}")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_log = get_logger("onegate.csrf")


class CSRFFailure(StrEnum):
    """Why a request was refused (logged, and shown as the problem's ``reason``)."""

    CROSS_SITE = "cross_site_request"
    ORIGIN_MISMATCH = "origin_mismatch"
    COOKIE_MISSING = "cookie_missing"
    TOKEN_MISSING = "token_missing"  # noqa: S105 - a reason code, not a credential
    TOKEN_INVALID = "token_invalid"  # noqa: S105 - a reason code, not a credential
    BODY_TOO_LARGE = "body_too_large"
    MALFORMED_BODY = "malformed_body"


@dataclass
class CSRFState:
    """Per-request CSRF state in ``scope["state"]["csrf"]``."""

    cookie_value: str
    token: str
    is_new: bool
    used: bool = False


def csrf_token(request: Request) -> str:
    """The CSRF token for forms of this response (issues the cookie if the browser has none)."""
    state = request.scope.get("state", {}).get("csrf")
    if not isinstance(state, CSRFState):
        raise RuntimeError("csrf_token() needs CSRFMiddleware in the middleware stack")
    state.used = True
    return state.token


def _origin(value: str) -> str | None:
    """``scheme://host[:port]`` with the default port dropped, or None if unparsable."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if not scheme or not host:
        return None
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + (f":{port}" if port and port != _DEFAULT_PORTS.get(scheme) else "")


class _Rejected(Exception):
    def __init__(self, failure: CSRFFailure) -> None:
        self.failure = failure


class _Disconnected(Exception):
    pass


class CSRFMiddleware:
    """See the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        secret: bytes,
        on_reject: ProblemResponder,
        https: bool = False,
        exempt_paths: Collection[str] = (),
        exempt_prefixes: Sequence[str] = (),
        trusted_origins: Sequence[str] = (),
        max_body_bytes: int = 1 << 20,
    ) -> None:
        if len(secret) < 32:
            raise ValueError("CSRFMiddleware: secret must be at least 32 random bytes")
        for prefix in exempt_prefixes:
            if not prefix.startswith("/") or not prefix.endswith("/"):
                raise ValueError(f"CSRFMiddleware: exempt prefix {prefix!r} must start and end with '/'")
        trusted = [_origin(origin) for origin in trusted_origins]
        if None in trusted:
            raise ValueError(
                f"CSRFMiddleware: trusted_origins must be scheme://host[:port], got {list(trusted_origins)}"
            )
        self.app = app
        self._secret = secret
        self._on_reject = on_reject
        self._https = https
        self._exempt_paths = frozenset(exempt_paths)
        self._exempt_prefixes = tuple(exempt_prefixes)
        self._trusted_origins = frozenset(o for o in trusted if o)
        self._max_body_bytes = max_body_bytes
        self.cookie_name = "__Host-onegate_csrf" if https else "onegate_csrf"

    def _sign(self, cookie_value: str) -> str:
        mac = hmac.new(self._secret, b"onegate-csrf-v1:" + cookie_value.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        cookie = cookie_parser(headers.get("cookie", "")).get(self.cookie_name, "")
        is_new = not _COOKIE_VALUE.fullmatch(cookie)
        value = secrets.token_urlsafe(32) if is_new else cookie
        state = CSRFState(cookie_value=value, token=self._sign(value), is_new=is_new)
        scope.setdefault("state", {})["csrf"] = state

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start" and state.is_new and state.used:
                secure = "; Secure" if self._https else ""
                set_cookie = f"{self.cookie_name}={state.cookie_value}; Path=/; HttpOnly; SameSite=Lax"
                set_cookie += secure
                MutableHeaders(scope=message).append("set-cookie", set_cookie)
            await send(message)

        if scope["method"] in SAFE_METHODS or self._is_exempt(scope):
            await self.app(scope, receive, send_with_cookie)
            return
        try:
            receive = await self._verify(scope, receive, headers, state)
        except _Disconnected:
            return
        except _Rejected as rejected:
            await self._reject(scope, receive, send_with_cookie, rejected.failure)
            return
        await self.app(scope, receive, send_with_cookie)

    def _is_exempt(self, scope: Scope) -> bool:
        # The decoded, root-relative path: the same one the router matches on.
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
            path = path[len(root) :] or "/"
        return path in self._exempt_paths or path.startswith(self._exempt_prefixes)

    def _own_origin(self, scope: Scope, headers: Headers) -> str | None:
        scheme = "https" if self._https else str(scope.get("scheme", "http"))
        host = headers.get("host", "")
        return _origin(f"{scheme}://{host}") if host else None

    async def _verify(self, scope: Scope, receive: Receive, headers: Headers, state: CSRFState) -> Receive:
        """Raise ``_Rejected`` or return the receive channel to hand downstream."""
        if headers.get("sec-fetch-site", "").lower() == "cross-site":
            raise _Rejected(CSRFFailure.CROSS_SITE)
        if "origin" in headers:
            origin = _origin(headers["origin"])
            if origin is None or (
                origin != self._own_origin(scope, headers) and origin not in self._trusted_origins
            ):
                raise _Rejected(CSRFFailure.ORIGIN_MISMATCH)
        if state.is_new:
            raise _Rejected(CSRFFailure.COOKIE_MISSING)
        provided = headers.get(HEADER_NAME)
        content_type, _ = parse_options_header(headers.get("content-type", ""))
        if provided is None and content_type in FORM_TYPES:
            body = await self._read_body(receive, headers)
            receive = _replay(body, receive)
            provided = await _form_token(scope, body)
        if not provided:
            raise _Rejected(CSRFFailure.TOKEN_MISSING)
        if not hmac.compare_digest(provided.encode("utf-8", "replace"), state.token.encode()):
            raise _Rejected(CSRFFailure.TOKEN_INVALID)
        return receive

    async def _read_body(self, receive: Receive, headers: Headers) -> bytes:
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_body_bytes:
            raise _Rejected(CSRFFailure.BODY_TOO_LARGE)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body_bytes:
                raise _Rejected(CSRFFailure.BODY_TOO_LARGE)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, failure: CSRFFailure) -> None:
        _log.warning(
            "csrf_rejected", reason=failure.value, method=scope["method"], path=str(scope["path"])[:256]
        )
        if failure is CSRFFailure.BODY_TOO_LARGE:
            problem = HTTPProblem(ErrorCode.PAYLOAD_TOO_LARGE, reason=failure.value)
        elif failure is CSRFFailure.MALFORMED_BODY:
            problem = HTTPProblem(ErrorCode.BAD_REQUEST, reason=failure.value)
        else:
            problem = HTTPProblem(ErrorCode.CSRF_FAILED, reason=failure.value)
        response = self._on_reject(Request(scope, receive), problem)
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that yields the buffered body once, then the original channel."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _form_token(scope: Scope, body: bytes) -> str | None:
    """The ``csrf_token`` field of a buffered form body (the first one if repeated)."""
    request = Request(scope, _replay(body, _no_more_messages))
    try:
        form = await request.form()
    except Exception as exc:  # any parser failure on attacker-controlled bytes is a 400, never a 500
        raise _Rejected(CSRFFailure.MALFORMED_BODY) from exc
    try:
        value = form.get(FIELD_NAME)
        return value if isinstance(value, str) else None
    finally:
        await form.close()


async def _no_more_messages() -> Message:
    return {"type": "http.disconnect"}
