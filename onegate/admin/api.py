"""The admin API's edge: bearer-key authentication, dispatch, JSON bodies and JSON errors.

:class:`AdminApi` is an ASGI app mounted at ``/api/admin/v1`` in the IdP role app (onegate.idp_app).
Every request but the OpenAPI document must carry ``Authorization: Bearer oga_...`` (an admin API
key, onegate.admin.keys); a missing, malformed, unknown, wrong, revoked or expired key is a 401
with ``WWW-Authenticate: Bearer`` (RFC 6750 §3) and emits ``admin-api-key-refused``. The key is
checked before the path is matched, so a caller without a key learns nothing about the API.

Errors are JSON, in both languages of the UI::

    {"error": "invalid_route", "message": {"zh": "...", "en": "..."}, "field": "hosts",
     "request_id": "..."}

with 400 (malformed JSON), 401, 404, 405, 409 (conflict), 412 (``If-Match`` revision), 413 (the
body is larger than ``max_body_bytes``), 415 (not ``application/json``), 422 (a value that does
not validate) and 503 (the database, the KV store or the event store is away); bad input is never
a 500. The API is
authenticated by a header a browser never adds on its own, so CSRF protection exempts it.

Endpoint groups (onegate.admin.gateway_routes, ...) give :class:`Endpoint` lists and their part of
the OpenAPI document; later admin endpoints join the same way. The class knows nothing of its mount
point: the SOC API (onegate.admin.soc_api, ``/api/soc/v1`` in the SOC role app) is another
instance, with the same keys and errors and its own endpoints.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from core.events import Category, Event, EventEmitter, Outcome
from core.eventstore import StoreUnavailable
from core.kv import KVError
from core.logging import get_logger
from core.net import TrustedProxies, client_address
from onegate.admin.keys import AdminKey, AdminKeys, KeyCheck, KeyRefusal

__all__ = [
    "MAX_BODY_BYTES",
    "PREFIX",
    "AdminApi",
    "ApiError",
    "ApiRequest",
    "Endpoint",
    "json_response",
]

_log = get_logger("onegate.admin")

PREFIX = "/api/admin/v1"
MAX_BODY_BYTES = 64 * 1024
_REALM = 'Bearer realm="onegate-admin"'
_PARAM = re.compile(r"\{([a-z_]+)\}")


class ApiError(Exception):
    """An answer other than success: ``status``, a ``code`` from the API's closed vocabulary, a
    message in English and Chinese, and the input ``field`` at fault when there is one."""

    def __init__(
        self,
        status: int,
        code: str,
        message_en: str,
        message_zh: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message_en}")
        self.status = status
        self.code = code
        self.message_en = message_en
        self.message_zh = message_zh
        self.field = field
        self.headers = dict(headers or {})

    def response(self, request_id: str | None) -> Response:
        body: dict[str, Any] = {"error": self.code, "message": {"zh": self.message_zh, "en": self.message_en}}
        if self.field is not None:
            body["field"] = self.field
        body["request_id"] = request_id
        return json_response(body, self.status, self.headers)


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON answer that no cache keeps (admin data)."""
    return JSONResponse(body, status_code=status, headers={"cache-control": "no-store", **(headers or {})})


Handler = Callable[["ApiRequest"], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    """``method`` and ``path`` (``{name}`` matches one path segment) under the prefix."""

    method: str
    path: str
    handler: Handler
    public: bool = False  # answered without a key (the OpenAPI document only)
    pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        regex = _PARAM.sub(
            lambda m: f"(?P<{m.group(1)}>[^/]+)", re.escape(self.path).replace(r"\{", "{").replace(r"\}", "}")
        )
        object.__setattr__(self, "pattern", re.compile(regex))


@dataclass
class ApiRequest:
    """One call: the Starlette request, the path parameters, the key that authenticated it."""

    request: Request
    params: dict[str, str]
    key: AdminKey | None
    ip: str
    max_body_bytes: int = MAX_BODY_BYTES

    @property
    def actor(self) -> str:
        return self.key.actor if self.key is not None else "anonymous"

    def context(self) -> dict[str, Any]:
        """Fields for the events of a change made by this call."""
        values: dict[str, Any] = {
            "source.ip": self.ip,
            "http.request.method": self.request.method,
            "url.path": self.request.url.path[:2000],
        }
        if self.key is not None:
            values["onegate.admin.key_id"] = self.key.id
        return values

    def query_int(self, name: str, default: int, *, low: int, high: int) -> int:
        raw = self.request.query_params.get(name)
        if raw is None:
            return default
        if not raw.isdigit() or not low <= int(raw) <= high:
            raise ApiError(
                400,
                "bad_request",
                f"{name}: a whole number from {low} to {high}",
                f"{name}：须为 {low} 至 {high} 的整数",
                field=name,
            )
        return int(raw)

    async def json(self) -> dict[str, Any]:
        """The body: a JSON object of at most ``max_body_bytes``, sent as ``application/json``.
        A key given twice and ``NaN`` / ``Infinity`` are refused (parsers disagree on them)."""
        media = self.request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise ApiError(
                415,
                "unsupported_media_type",
                "send the body as application/json",
                "请求体须为 application/json",
            )
        declared = self.request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _too_large(self.max_body_bytes)
        body = bytearray()
        async for chunk in self.request.stream():
            body += chunk
            if len(body) > self.max_body_bytes:
                raise _too_large(self.max_body_bytes)
        try:
            data = json.loads(bytes(body), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:
            raise ApiError(
                400, "bad_json", f"the body is not valid JSON ({e})"[:300], "请求体不是有效的 JSON"
            ) from None
        if not isinstance(data, dict):
            raise ApiError(400, "bad_json", "the body must be a JSON object", "请求体须为 JSON 对象")
        return data


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "payload_too_large", f"the body is larger than {limit} bytes", f"请求体超过 {limit} 字节"
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"the key {key!r} is given twice")
        data[key] = value
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


_UNAUTHENTICATED = ("a valid admin API key is required", "需要有效的管理 API 密钥")


class AdminApi:
    """The ASGI app of the admin API (see the module docstring)."""

    def __init__(
        self,
        *,
        keys: AdminKeys,
        events: EventEmitter,
        trusted_proxies: TrustedProxies,
        endpoints: Sequence[Endpoint],
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._keys = keys
        self._events = events
        self._trusted = trusted_proxies
        self._endpoints = tuple(endpoints)
        self._max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # no WebSocket here
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        request = Request(scope, receive)
        request_id = scope.get("state", {}).get("request_id")
        path = _route_path(scope)
        ip = client_address(scope, self._trusted)
        try:
            public = any(e.public and e.pattern.fullmatch(path) for e in self._endpoints)
            key = None if public else await self._authenticate(request, ip)
            endpoint, params = self._match(request.method, path)
            call = ApiRequest(request, params, key, ip, self._max_body)
            response = await endpoint.handler(call)
        except ApiError as e:
            response = e.response(request_id)
        except (SQLAlchemyError, KVError, StoreUnavailable, OSError) as e:
            _log.error(
                "admin API: a dependency is unavailable", error=type(e).__name__, request_id=request_id
            )
            response = ApiError(
                503,
                "unavailable",
                "the service is temporarily unavailable; try again later",
                "服务暂不可用，请稍后重试",
            ).response(request_id)
        await response(scope, receive, send)

    def _match(self, method: str, path: str) -> tuple[Endpoint, dict[str, str]]:
        allowed: list[str] = []
        for endpoint in self._endpoints:
            found = endpoint.pattern.fullmatch(path)
            if found is None:
                continue
            if endpoint.method == method:
                return endpoint, found.groupdict()
            allowed.append(endpoint.method)
        if allowed:
            raise ApiError(
                405,
                "method_not_allowed",
                f"{method} is not allowed here; use {', '.join(allowed)}",
                f"此地址不接受 {method}，可用 {', '.join(allowed)}",
                headers={"allow": ", ".join(allowed)},
            )
        raise ApiError(404, "not_found", "no such endpoint", "没有这个接口")

    async def _authenticate(self, request: Request, ip: str) -> AdminKey:
        values = request.headers.getlist("authorization")
        if not values:
            check = KeyCheck(None, KeyRefusal.MISSING)
        elif len(values) > 1:
            check = KeyCheck(None, KeyRefusal.MALFORMED)
        else:
            scheme, _, token = values[0].strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                check = KeyCheck(None, KeyRefusal.MALFORMED)
            else:
                check = await self._keys.check(token.strip())
        if check.key is not None:
            return check.key
        refusal = check.refusal or KeyRefusal.MALFORMED
        fields: dict[str, Any] = {
            "event.type": ["denied"],
            "onegate.reason": refusal.value,
            "source.ip": ip,
            "http.request.method": request.method,
            "url.path": request.url.path[:2000],
        }
        if check.key_id is not None:
            fields["onegate.admin.key_id"] = check.key_id
        self._events.emit(
            Event(
                action="admin-api-key-refused",
                category=Category.AUTHENTICATION,
                outcome=Outcome.FAILURE,
                dataset="onegate.admin",
                fields=fields,
            )
        )
        _log.warning("admin API key refused", reason=refusal.value, key_id=check.key_id, ip=ip)
        # RFC 6750 §3.1: no error code when the request had no credentials at all.
        challenge = _REALM if refusal is KeyRefusal.MISSING else f'{_REALM}, error="invalid_token"'
        raise ApiError(401, "unauthenticated", *_UNAUTHENTICATED, headers={"www-authenticate": challenge})


def _route_path(scope: Scope) -> str:
    """The path below the mount point (``/gateway/routes``)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"
