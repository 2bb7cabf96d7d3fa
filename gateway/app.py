"""The identity-aware reverse proxy: every request decided afresh, then forwarded or refused.

For each HTTP request to an application host (:mod:`gateway.routes`):

1. the path is canonicalised once from the raw request target (:func:`policy.normalize.
   canonical_path`); the same canonical path is decided on and forwarded (a path that cannot be
   made unambiguous is refused with 400);
2. the session cookie is looked up (:mod:`gateway.sessions`: revocation is seen on the next
   request), the user's risk score read (:mod:`gateway.risk`), and the policy decides
   (:meth:`policy.engine.PolicyEngine.decide`, the engine the watcher keeps current);
3. allowed: the request goes upstream with client-sent identity and forwarding headers removed
   and the gateway's own set (:mod:`gateway.headers`), bodies streamed both ways; a user without a
   session is sent to sign in; a step-up goes back to the IdP with ``acr_values`` / ``max_age``;
   anything else gets the deny page (zh/en, request id, the rules' descriptions; no internals);
4. one ECS access event per request is emitted after the response has gone out.

The HTTP front (``core.web.fastpath``) hands the gateway each plain ``GET`` / ``HEAD`` first
(:meth:`Gateway.fast_path`): when the decision can be made from what is cached (path, session,
risk score) and allows it, and a kept-alive upstream connection is idle, the request is sent
upstream at once and the response, when it comes whole with its head, is written back to the
client — without an ASGI scope, messages or a task, but through the same functions as the
ASGI path below (decision, upstream headers, request head, response parsing and header
filtering, response framing, access event), so the bytes on both sides are the same. Anything
else — a sign-in, a refusal, a page, a body, a response to stream, an upstream error — goes the
ASGI path, from the start or, once the request went upstream, from where it stands.

Paths under ``/.onegate/`` on every host belong to the gateway itself (sign-in callback,
logout, back-channel logout, forward-auth, JWKS, static files): the *control* app, a Starlette
app with OneGate's usual middleware, handles them, and the deny / sign-in / error pages too.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.events import Category, Event, EventEmitter, Outcome
from core.kv import KVError
from core.logging import get_logger
from core.net import TrustedProxies, client_address
from core.randomhex import RandomHex
from gateway.assertion import AssertionIssuer, Identity
from gateway.blocks import AddressBlocks, Block
from gateway.headers import (
    FORWARDING,
    HOP_BY_HOP,
    connection_tokens,
    is_identity,
    strip_cookie,
    upstream_response_headers,
)
from gateway.risk import RiskScores
from gateway.routes import Route, RouteTable, host_header, host_of
from gateway.sessions import GatewaySession, GatewaySessions
from gateway.upstream import Origin, UpstreamError, UpstreamPool
from policy.engine import PolicyEngine
from policy.model import Decision, Effect, Reason, Request
from policy.model import client_address as client_ip  # the policy's reading of an address
from policy.normalize import CanonicalPath, PathRejected, canonical_path

if TYPE_CHECKING:
    from core.web.fastpath import FastRequest
    from gateway.upstream import UpstreamResponse

__all__ = ["CONTROL_PREFIX", "Gateway", "GatewayOptions", "PageInfo", "Verdict", "login_url"]

_log = get_logger("onegate.gateway")

CONTROL_PREFIX = "/.onegate"
_CONTROL = b"/.onegate/"
_CONTROL_PATH = b"/.onegate"
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_NAVIGATION = frozenset({"GET", "HEAD"})
# Hosts the gateway answers on for its own pages (portal, health) when no route names them.
_IDENTITY_CACHE = 100_000
_PATH_CACHE = 10_000
_COOKIE_CACHE = 10_000
_SECTION_CACHE = 1_024
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


@dataclass(frozen=True)
class GatewayOptions:
    cookie_name: str = "onegate_gw"
    https: bool = False
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)
    max_body_bytes: int | None = None

    @property
    def cookie(self) -> str:
        """The session cookie's name: ``__Host-`` prefixed when served over TLS (RFC 6265bis
        §4.1.3.2: host-only, Path=/, Secure — another host cannot plant it)."""
        return f"__Host-{self.cookie_name}" if self.https else self.cookie_name


@dataclass(frozen=True)
class PageInfo:
    """What the control app needs to render a page for a request the proxy did not forward
    (``scope["state"]["gateway"]``)."""

    # denied | sign_in | step_up | bad_path | unknown_host | no_route | upstream | too_large |
    # bad_request | unavailable
    kind: str
    status: int
    request_id: str
    app: str | None = None
    decision: Decision | None = None
    reason: str | None = None
    login: str | None = None  # where to sign in / step up
    descriptions: tuple[str, ...] = ()


def login_url(return_to: str, decision: Decision | None = None) -> str:
    """The gateway's sign-in start for ``return_to`` (a path on the same host), asking for what
    a step-up decision names."""
    url = f"{CONTROL_PREFIX}/start?rd={quote(return_to, safe='')}"
    if decision is not None and decision.step_up is not None:
        if decision.step_up.acr:
            url += f"&acr={quote(decision.step_up.acr, safe='')}"
        if decision.step_up.max_age is not None:
            url += f"&max_age={decision.step_up.max_age}"
    return url


# Request ids: 64 random bits each, as 16 hex digits.
_request_id = RandomHex(16)


class _Body:
    """The client's request body as an async iterator of chunks (ASGI ``http.request``),
    refusing more than ``limit`` bytes; ``received`` counts what came."""

    def __init__(self, receive: Receive, limit: int | None) -> None:
        self._receive = receive
        self._limit = limit
        self.received = 0
        self.disconnected = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                raise UpstreamError("closed", "the client went away")
            chunk = message.get("body", b"")
            if chunk:
                self.received += len(chunk)
                if self._limit is not None and self.received > self._limit:
                    raise _TooLarge
                yield chunk
            if not message.get("more_body", False):
                return


class _TooLarge(Exception):
    pass


class Gateway:
    """The gateway's ASGI app (see the module docstring)."""

    def __init__(
        self,
        *,
        routes: RouteTable,
        sessions: GatewaySessions,
        engine: Callable[[], PolicyEngine],
        pool: Callable[[Route], UpstreamPool],
        assertions: AssertionIssuer,
        risk: RiskScores,
        events: EventEmitter,
        control: ASGIApp | None = None,
        fallback: ASGIApp | None = None,
        options: GatewayOptions | None = None,
        websocket: Callable[..., Awaitable[None]] | None = None,
        blocks: AddressBlocks | None = None,
    ) -> None:
        self.routes = routes
        self._blocks = blocks
        self.sessions = sessions
        self._engine = engine
        self._pool_for = pool
        self.assertions = assertions
        self._risk = risk
        self._events = events
        self._control: ASGIApp = control or _not_found
        self._fallback = fallback
        self.options = options or GatewayOptions()
        self._cookie = self.options.cookie.encode()
        self._websocket = websocket
        self._subjects: dict[str, _Subject] = {}
        self._cookies: dict[bytes, bytes] = {}  # Cookie header -> without the gateway's cookie
        self._session_cookies: dict[bytes, str | None] = {}  # Cookie header -> the gateway's cookie
        # (header section, client address, scheme) -> what the fast path reads from it
        self._sections: dict[tuple[bytes, str | None, str], _Section] = {}
        self._paths: dict[bytes, CanonicalPath | PathRejected] = {}

    def set_control(self, control: ASGIApp) -> None:
        """The app for ``/.onegate/`` and the gateway's pages (built after the gateway, since its
        endpoints need it)."""
        self._control = control

    # -- entry -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind in {"http", "websocket"}:
            await self._request(scope, receive, send)
        elif self._fallback is not None:
            await self._fallback(scope, receive, send)

    async def _request(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        raw = scope.get("raw_path") or scope["path"].encode()
        if raw.startswith(_CONTROL) or raw == _CONTROL_PATH:
            await self._to_control(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        host = _host(headers)
        if host is None or host not in self.routes:
            if self._fallback is not None and host in _LOCAL_HOSTS:
                await self._fallback(scope, receive, send)
                return
            kind = "bad_request" if host is None else "unknown_host"
            await self._page(
                scope, receive, send, PageInfo(kind, 400 if host is None else 421, _request_id())
            )
            return
        verdict = await self.authorize(
            host,
            raw,
            scope.get("method", "GET"),
            self.cookie_value(headers),
            client_address(scope, self.options.trusted_proxies),
        )
        if verdict.page is not None:
            await self._page(scope, receive, send, verdict.page)
            return
        route, decision = verdict.route, verdict.decision
        assert route is not None and decision is not None  # noqa: S101 - authorize's contract
        access = _Access(verdict, started, scope.get("method", "GET"), headers, scope["type"] == "websocket")
        if decision.effect is Effect.ALLOW:
            if scope["type"] == "websocket":
                await self._forward_websocket(scope, receive, send, verdict)
                access.status = 101
            else:
                await self._forward(scope, receive, send, verdict, access)
        else:
            access.status = await self._refuse(scope, receive, send, verdict)
        self._emit(access)

    async def authorize(
        self, host: str, raw_path: bytes, method: str, cookie: str | None, ip: str
    ) -> Verdict:
        """Decide one request: for the proxy and for forward-auth alike. ``raw_path`` is the
        request target's path as sent (percent-encoded), without the query."""
        request_id = _request_id()
        path = self._canonical(raw_path)
        if isinstance(path, PathRejected):
            page = PageInfo("bad_path", 400, request_id, reason=path.reason.value)
            return Verdict(request_id, ip, page=page)
        route = self.routes.match(host, path.key)
        if route is None:
            return Verdict(request_id, ip, page=PageInfo("no_route", 404, request_id))
        try:
            session = self.sessions.peek(cookie, host)
            if session is False:
                session = await self.sessions.from_cookie(cookie, host)
            risk = 0
            if session is not None:
                cached = self._risk.cached(session.username)
                risk = cached if cached is not None else await self._risk.score(session.username)
            block = await self._blocks.check(ip) if self._blocks is not None else None
        except KVError as e:
            _log.error("session store unavailable", error=str(e), request_id=request_id)
            return Verdict(request_id, ip, page=PageInfo("unavailable", 503, request_id, route.app))
        if block is not None:  # whoever asks: the address is blocked (a SOC response action)
            return Verdict(
                request_id,
                ip,
                route=route,
                session=session,
                decision=_BLOCKED,
                path=path.path,
                risk=risk,
                blocked=block,
            )
        return self._decide(request_id, ip, route, path, method=method, session=session, risk=risk)

    def _authorize_now(
        self, host: str, raw_path: bytes, method: str, cookie: str | None, ip: str
    ) -> Verdict | None:
        """:meth:`authorize` for a request it would decide from the caches alone, without a
        page; None for any other (authorize then decides it)."""
        path = self._canonical(raw_path)
        if isinstance(path, PathRejected):
            return None
        route = self.routes.match(host, path.key)
        if route is None:
            return None
        session = self.sessions.peek(cookie, host)
        if session is False:
            return None
        risk = 0
        if session is not None:
            cached = self._risk.cached(session.username)
            if cached is None:
                return None
            risk = cached
        if self._blocks is not None and self._blocks.cached(ip) is not False:
            return None  # blocked, or the list is due a read: authorize decides it
        return self._decide(_request_id(), ip, route, path, method=method, session=session, risk=risk)

    def _canonical(self, raw_path: bytes) -> CanonicalPath | PathRejected:
        path = self._paths.get(raw_path)
        if path is None:
            try:
                path = canonical_path(raw_path)
            except PathRejected as e:
                path = e
            if len(self._paths) >= _PATH_CACHE:
                self._paths.clear()
            self._paths[raw_path] = path
        return path

    def _decide(
        self,
        request_id: str,
        ip: str,
        route: Route,
        path: CanonicalPath,
        *,
        method: str,
        session: GatewaySession | None,
        risk: int,
    ) -> Verdict:
        if session is None:
            request = Request.exact(
                route.app, path.key, method, None, _NONE, (), _NONE, None, None, _ip(ip), time.time(), 0
            )
        else:
            subject = self._subject(session)
            request = Request.exact(
                route.app,
                path.key,
                method,
                session.username,
                subject.groups,
                session.departments,
                subject.roles,
                session.acr,
                session.auth_time,
                _ip(ip),
                time.time(),
                risk,
            )
        engine = self._engine()
        return Verdict(
            request_id,
            ip,
            route=route,
            session=session,
            decision=engine.decide(request),
            engine=engine,
            path=path.path,
            risk=risk,
        )

    def cookie_value(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        for name, value in headers:
            if name == b"cookie":
                found = self._session_cookies.get(value, self._session_cookies)
                if found is self._session_cookies:
                    found = self._session_cookie(value)
                if found is not None:
                    return found  # type: ignore[return-value]
        return None

    def _session_cookie(self, value: bytes) -> str | None:
        """The gateway's cookie in one Cookie header, read once per distinct header value."""
        found = None
        wanted = self._cookie
        for part in value.split(b";"):
            key, eq, val = part.strip().partition(b"=")
            if eq and key == wanted:
                found = val.decode("latin-1")
                break
        if len(self._session_cookies) >= _COOKIE_CACHE:
            self._session_cookies.clear()
        self._session_cookies[value] = found
        return found

    # -- refusing ----------------------------------------------------------------------------

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, verdict: Verdict) -> int:
        info = verdict.refusal(_return_to(scope))
        if (
            info.login is not None
            and scope["type"] == "http"
            and scope.get("method") in _NAVIGATION
            and _accepts_html(scope["headers"])
        ):
            await _redirect(send, info.login)
            return 302
        await self._page(scope, receive, send, info)
        return info.status

    async def _page(self, scope: Scope, receive: Receive, send: Send, info: PageInfo) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008 if info.status in (401, 403) else 1011})
            return
        state = dict(scope.get("state") or {})
        state["gateway"] = info
        # Rendered by the control app whatever the path; as a GET, so that a refused POST gets
        # its page rather than a CSRF refusal.
        await self._control(dict(scope, method="GET", root_path=CONTROL_PREFIX, state=state), receive, send)

    async def _to_control(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = dict(scope.get("state") or {})
        state.pop("gateway", None)  # a client cannot hand the page renderer its own decision
        await self._control(dict(scope, root_path=CONTROL_PREFIX, state=state), receive, send)

    # -- forwarding --------------------------------------------------------------------------

    def upstream_headers(
        self, scope: Scope, verdict: Verdict, host_value: bytes
    ) -> list[tuple[bytes, bytes]]:
        """The headers sent upstream: the client's minus hop-by-hop, identity and (unless from a
        trusted proxy) forwarding headers; plus Host, X-Forwarded-*, X-Request-ID and identity."""
        return self._upstream_headers(
            scope["headers"], scope.get("client"), scope.get("scheme", "http"), verdict, host_value
        )

    def _upstream_headers(
        self,
        client_headers: list[tuple[bytes, bytes]],
        peer: tuple[str, int] | None,
        scheme: str,
        verdict: Verdict,
        host_value: bytes,
    ) -> list[tuple[bytes, bytes]]:
        route, session = verdict.route, verdict.session
        assert route is not None  # noqa: S101 - only decided requests are forwarded
        out = self._forwarded_headers(client_headers, peer, scheme, route, host_value, ip=verdict.ip)
        out.append((b"x-request-id", verdict.request_id.encode()))
        if session is not None:
            out += self.identity_headers(session, route.app)
        return out

    def _forwarded_headers(
        self,
        client_headers: list[tuple[bytes, bytes]],
        peer: tuple[str, int] | None,
        scheme: str,
        route: Route,
        host_value: bytes,
        *,
        ip: str,
    ) -> list[tuple[bytes, bytes]]:
        """The client's headers as forwarded, Host and X-Forwarded-*: what comes before the
        request id and the identity (a function of its arguments alone)."""
        listed = connection_tokens(client_headers)
        trusted = peer is not None and str(peer[0]) in self.options.trusted_proxies
        forwarded_for: list[bytes] = []
        out: list[tuple[bytes, bytes]] = []
        for name, value in client_headers:
            kind = _NAME_KINDS.get(name)
            if kind is None:
                kind = _name_kind(name)
            if kind == _PASS:
                if not listed or name not in listed:
                    out.append((name, value))
            elif kind == _COOKIE:
                kept = self._stripped_cookie(value)
                if kept and (not listed or name not in listed):
                    out.append((name, kept))
            elif kind == _XFF and trusted and (not listed or name not in listed):
                forwarded_for.append(value)
        if route.preserve_host or route.origin is None:
            out.append((b"host", host_value))
        else:
            out.append((b"host", _authority(route.origin)))
        peer_ip = str(peer[0]) if peer else ip
        forwarded_for.append(peer_ip.encode())
        out.append((b"x-forwarded-for", b", ".join(forwarded_for)))
        out.append((b"x-forwarded-proto", b"https" if self.options.https else scheme.encode()))
        out.append((b"x-forwarded-host", host_value))
        return out

    def _stripped_cookie(self, value: bytes) -> bytes:
        kept = self._cookies.get(value)
        if kept is None:
            kept = strip_cookie(value, self._cookie)
            if len(self._cookies) >= _COOKIE_CACHE:
                self._cookies.clear()
            self._cookies[value] = kept
        return kept

    def identity_headers(self, session: GatewaySession, app: str) -> list[tuple[bytes, bytes]]:
        """The identity headers for ``app``: built once per session object (the session cache
        hands out the same object for a second), the assertion reused by the issuer."""
        subject = self._subject(session)
        return [*subject.headers, (b"x-onegate-assertion", self._assertion(subject, app))]

    def _assertion(self, subject: _Subject, app: str) -> bytes:
        """The assertion for ``app``, encoded once per token the issuer hands out."""
        token = self.assertions.issue(subject.identity, app)
        cached = subject.assertion
        if cached is not None and cached[0] is token:
            return cached[1]
        encoded = token.encode()
        subject.assertion = (token, encoded)
        return encoded

    def _subject(self, session: GatewaySession) -> _Subject:
        subject = self._subjects.get(session.sid)
        if subject is None or subject.session is not session:
            subject = _Subject(session)
            if len(self._subjects) >= _IDENTITY_CACHE:
                self._subjects.clear()
            self._subjects[session.sid] = subject
        return subject

    def forget(self, sid: str) -> None:
        """Drop what is cached for a session that ended (its assertions among it)."""
        self._subjects.pop(sid, None)
        self.assertions.forget(sid)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, verdict: Verdict, access: _Access
    ) -> None:
        route, request_id = verdict.route, verdict.request_id
        assert route is not None  # noqa: S101 - only decided requests are forwarded
        origin = route.origin
        if origin is None:  # forward-auth only: this app is not proxied here
            await self._page(scope, receive, send, PageInfo("no_route", 404, request_id, route.app))
            access.status = 404
            return
        headers = self.upstream_headers(scope, verdict, host_header(scope["headers"]) or b"")
        method: str = scope["method"]
        query: bytes = scope.get("query_string", b"")
        target = verdict.path.encode() + (b"?" + query if query else b"")
        length, chunked = _framing(scope["headers"])
        if length == -1:  # the HTTP server checks framing first; never guess if one did not
            await self._page(scope, receive, send, PageInfo("bad_request", 400, request_id, route.app))
            access.status = 400
            return
        limit = self.options.max_body_bytes
        if length is not None and limit is not None and length > limit:
            await self._page(scope, receive, send, PageInfo("too_large", 413, request_id, route.app))
            access.status = 413
            return
        body: _Body | bytes | None
        if (length is not None or chunked) and length != 0:
            body = _Body(receive, limit)
            if length is not None:
                headers.append((b"content-length", str(length).encode()))
        else:
            body = b"" if length == 0 else None
            if length == 0:
                headers.append((b"content-length", b"0"))
        try:
            response = await self._pool_for(route).send(
                origin,
                method,
                target,
                headers,
                body,
                idempotent=method in IDEMPOTENT,
            )
        except _TooLarge:
            await self._page(scope, receive, send, PageInfo("too_large", 413, request_id, route.app))
            access.status = 413
            return
        except UpstreamError as e:
            if isinstance(body, _Body) and body.disconnected:
                access.status = 499
                return
            await self._upstream_failed(scope, receive, send, verdict, access, error=e)
            return
        await self._relay(send, response, verdict, access)

    async def _upstream_failed(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        verdict: Verdict,
        access: _Access,
        *,
        error: UpstreamError,
    ) -> None:
        route, request_id = verdict.route, verdict.request_id
        assert route is not None  # noqa: S101 - only decided requests are forwarded
        status = 504 if error.kind == "timeout" else 502
        _log.warning("upstream failed", app=route.app, kind=error.kind, request_id=request_id)
        await self._page(
            scope, receive, send, PageInfo("upstream", status, request_id, route.app, reason=error.kind)
        )
        access.status = status

    async def _relay(self, send: Send, response: UpstreamResponse, verdict: Verdict, access: _Access) -> None:
        """The upstream's response to the client."""
        access.status = response.status
        out_headers = upstream_response_headers(response.headers)
        await send({"type": "http.response.start", "status": response.status, "headers": out_headers})
        whole = response.complete_body()
        if whole is not None:  # it all came with the head: one message
            try:
                await send({"type": "http.response.body", "body": whole, "more_body": False})
            except OSError:
                access.outcome = Outcome.FAILURE
            finally:
                await response.aclose()
                access.bytes = len(whole)
            return
        sent = 0
        try:
            async for chunk in response.chunks():
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except UpstreamError as e:  # the upstream broke off mid-body: the client sees it cut too
            app = verdict.route.app if verdict.route is not None else None
            _log.warning("upstream body cut off", app=app, kind=e.kind, request_id=verdict.request_id)
            access.outcome = Outcome.FAILURE
        except OSError:  # the client went away
            access.outcome = Outcome.FAILURE
        finally:
            await response.aclose()
            access.bytes = sent

    async def _forward_websocket(self, scope: Scope, receive: Receive, send: Send, verdict: Verdict) -> None:
        route = verdict.route
        assert route is not None  # noqa: S101 - only decided requests are forwarded
        if route.origin is None or self._websocket is None:
            await send({"type": "websocket.close", "code": 1011})
            return
        headers = self.upstream_headers(scope, verdict, host_header(scope["headers"]) or b"")
        # The WebSocket handshake headers are the client library's to write.
        skip = {
            b"sec-websocket-key",
            b"sec-websocket-version",
            b"sec-websocket-extensions",
            b"sec-websocket-protocol",
        }
        headers = [(n, v) for n, v in headers if n not in skip]
        query: bytes = scope.get("query_string", b"")
        target = verdict.path.encode() + (b"?" + query if query else b"")
        await self._websocket(scope, receive, send, route.origin, target, headers)

    # -- the front's fast path ---------------------------------------------------------------

    def fast_path(self, request: FastRequest) -> bool:
        """Take a plain ``GET`` / ``HEAD`` from the HTTP front (module docstring): True when it
        went upstream here, False when it is one for the ASGI path."""
        started = time.perf_counter()
        raw = request.raw_path
        if raw.startswith(_CONTROL) or raw == _CONTROL_PATH:
            return False
        section = self._section(request)
        host = section.host
        if host is None or not section.plain or host not in self.routes:
            return False
        method = request.method
        verdict = self._authorize_now(host, raw, method, section.cookie, section.ip)
        if verdict is None or verdict.decision is None or verdict.decision.effect is not Effect.ALLOW:
            return False
        route = verdict.route
        assert route is not None  # noqa: S101 - authorize's contract
        origin = route.origin
        if origin is None:
            return False
        query = request.query
        target = verdict.path.encode() + (b"?" + query if query else b"")
        pool = self._pool_for(route)
        try:
            head = self._fast_head(request, section, verdict, pool, target)
        except UpstreamError:
            return False  # the ASGI path answers it (its page)
        conn = pool.take_idle(origin)
        if conn is None:
            return False  # the ASGI path connects (and leaves the connection idle for the next)
        relay = _Relay(
            self,
            request,
            verdict,
            _Access(verdict, started, method, request.headers),
            conn=conn,
            target=target,
        )
        try:
            conn.start(head, method == "HEAD", relay.answered)
        except UpstreamError as e:  # closed meanwhile: as send() would, once more on a fresh one
            conn.abort()
            relay.error = e
            request.hand_over(relay.after_error)
        return True

    def _section(self, request: FastRequest) -> _Section:
        """What the fast path reads from the request's header section (a function of the
        section, the client's address and the scheme alone), read once for the requests that
        repeat it."""
        client = request.client
        key = (request.fields, client[0] if client is not None else None, request.scheme)
        section = self._sections.get(key)
        if section is None:
            headers = request.headers
            section = _Section(
                host=_host(headers),
                plain=_framing(headers) == (None, False),
                ip=client_address(
                    {"client": request.client, "headers": headers}, self.options.trusted_proxies
                ),
                cookie=self.cookie_value(headers),
            )
            if len(self._sections) >= _SECTION_CACHE:
                self._sections.clear()
            self._sections[key] = section
        return section

    def _fast_head(
        self, request: FastRequest, section: _Section, verdict: Verdict, pool: UpstreamPool, target: bytes
    ) -> bytes:
        """The upstream request head of a fast-path request: the bytes the ASGI path sends
        (:meth:`upstream_headers`, :meth:`UpstreamPool.send`), put together from blocks made by
        the same functions — the forwarded headers rendered once per header section (and
        route), the identity once per session, application and assertion."""
        route = verdict.route
        assert route is not None  # noqa: S101 - only decided requests are forwarded
        forwarded = section.forwarded
        if forwarded is None or forwarded[0] is not route:
            headers = request.headers
            block = pool.header_block(
                self._forwarded_headers(
                    headers, request.client, request.scheme, route, host_header(headers) or b"", ip=section.ip
                )
            )
            forwarded = section.forwarded = (route, block)
        parts = [
            pool.request_line(request.method, target),
            forwarded[1],
            pool.header_block([(b"x-request-id", verdict.request_id.encode())]),
        ]
        session = verdict.session
        if session is not None:
            subject = self._subject(session)
            token = self.assertions.issue(subject.identity, route.app)
            identity = subject.identity_block
            if identity is None or identity[0] is not token:
                identity = (token, pool.header_block(self.identity_headers(session, route.app)))
                subject.identity_block = identity
            parts.append(identity[1])
        parts.append(b"\r\n")
        return b"".join(parts)

    # -- events ------------------------------------------------------------------------------

    def _emit(self, access: _Access) -> None:
        session = access.verdict.session
        try:
            self._events.emit(access.event(self._subjects.get(session.sid) if session else None))
        except Exception as e:  # an event problem never fails a request
            _log.error("access event not emitted", error=str(e))


class _Section:
    """One client header section as the fast path reads it: the host, whether it frames no
    body (no Content-Length, no Transfer-Encoding), the client's address, the session cookie,
    and the forwarded headers as rendered for the last route (:meth:`Gateway._fast_head`)."""

    __slots__ = ("cookie", "forwarded", "host", "ip", "plain")

    def __init__(self, *, host: str | None, plain: bool, ip: str, cookie: str | None) -> None:
        self.host = host
        self.plain = plain
        self.ip = ip
        self.cookie = cookie
        self.forwarded: tuple[Route, bytes] | None = None


class _Relay:
    """A request the fast path sent upstream, waiting for its answer (:meth:`answered`)."""

    __slots__ = ("access", "conn", "error", "gateway", "request", "response", "target", "verdict")

    def __init__(
        self,
        gateway: Gateway,
        request: FastRequest,
        verdict: Verdict,
        access: _Access,
        *,
        conn: Any,
        target: bytes,
    ) -> None:
        self.gateway = gateway
        self.request = request
        self.verdict = verdict
        self.access = access
        self.conn = conn
        self.target = target
        self.response: UpstreamResponse | None = None
        self.error: UpstreamError | None = None

    def answered(self) -> None:
        """The upstream answered (its head, and the body as far as it came) or failed."""
        try:
            self._answered()
        except Exception as e:
            self.conn.abort()
            self.request.fail(e)

    def _answered(self) -> None:
        conn, request, access = self.conn, self.request, self.access
        response: UpstreamResponse | None = conn.response
        if response is None:
            conn.abort()
            self.error = conn.error or UpstreamError("closed", "the exchange ended without an answer")
            request.hand_over(self.after_error)
            return
        whole = response.complete_body()
        if whole is None:  # a body still to come: streamed the ASGI way
            self.response = response
            request.hand_over(self.stream)
            return
        access.status = response.status
        request.respond(response.status, upstream_response_headers(response.headers), whole, checked=True)
        response.close()
        access.bytes = len(whole)
        self.gateway._emit(access)
        request.done()

    async def stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI path from the response head on."""
        assert self.response is not None  # noqa: S101 - set before this is handed over
        await self.gateway._relay(send, self.response, self.verdict, self.access)
        self.gateway._emit(self.access)

    async def after_error(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI path for a request whose exchange failed before the response head: sent once
        more on a fresh connection when the kept-alive one turned out closed (as
        :meth:`UpstreamPool.send` retries), else the error page."""
        gateway, verdict, access, error = self.gateway, self.verdict, self.access, self.error
        route = verdict.route
        assert error is not None and route is not None and route.origin is not None  # noqa: S101
        try:
            if not error.stale:
                raise error
            request = self.request
            headers = gateway._upstream_headers(
                request.headers, request.client, request.scheme, verdict, host_header(request.headers) or b""
            )
            response = await gateway._pool_for(route).send(
                route.origin, request.method, self.target, headers, None, idempotent=True, fresh=True
            )
        except UpstreamError as e:
            await gateway._upstream_failed(scope, receive, send, verdict, access, error=e)
        else:
            await gateway._relay(send, response, verdict, access)
        gateway._emit(access)


BLOCKED_RULE = "soc-address-block"
_BLOCKED = Decision(Effect.DENY, Reason.DENIED_BY_RULE, (BLOCKED_RULE,))
_BLOCKED_TEXT = (
    "Requests from this address are blocked by the security operations centre / "
    "来自该地址的请求已被安全运营中心封禁"
)


class Verdict:
    """What :meth:`Gateway.authorize` decided. ``page`` is set when the request cannot even be
    decided (bad path, no route, store down); otherwise ``decision`` says what to do."""

    __slots__ = (
        "blocked",
        "decision",
        "engine",
        "ip",
        "page",
        "path",
        "request_id",
        "risk",
        "route",
        "session",
    )

    def __init__(
        self,
        request_id: str,
        ip: str,
        *,
        route: Route | None = None,
        session: GatewaySession | None = None,
        decision: Decision | None = None,
        engine: PolicyEngine | None = None,
        path: str = "",
        risk: int = 0,
        page: PageInfo | None = None,
        blocked: Block | None = None,
    ) -> None:
        self.blocked = blocked
        self.request_id = request_id
        self.ip = ip
        self.route = route
        self.session = session
        self.decision = decision
        self.engine = engine
        self.path = path
        self.risk = risk
        self.page = page

    def refusal(self, return_to: str) -> PageInfo:
        """The page for a decision that is not an allow: sign in, step up, or denied."""
        decision, route = self.decision, self.route
        app = route.app if route else None
        if self.blocked is not None:  # whoever asks: no sign-in offered either
            return PageInfo("denied", 403, self.request_id, app, decision, descriptions=(_BLOCKED_TEXT,))
        if self.session is None:
            return PageInfo("sign_in", 401, self.request_id, app, decision, login=login_url(return_to))
        if decision is not None and decision.effect is Effect.STEP_UP:
            return PageInfo(
                "step_up", 401, self.request_id, app, decision, login=login_url(return_to, decision)
            )
        descriptions: tuple[str, ...] = ()
        if decision is not None and self.engine is not None:
            descriptions = tuple(
                d for r in decision.rule_ids if (d := _description(self.engine, r)) is not None
            )
        return PageInfo("denied", 403, self.request_id, app, decision, descriptions=descriptions)


class _Subject:
    """What the gateway derives from one session object, once: the policy's sets, the identity
    headers and assertion identity, and the access event's user fields."""

    __slots__ = (
        "assertion",
        "event_fields",
        "groups",
        "headers",
        "identity",
        "identity_block",
        "roles",
        "session",
    )

    def __init__(self, session: GatewaySession) -> None:
        self.session = session
        self.assertion: tuple[str, bytes] | None = None  # the last token issued, and encoded
        # The identity headers with that token as a request head carries them (the fast path).
        self.identity_block: tuple[str, bytes] | None = None
        self.groups = frozenset(session.groups)
        self.roles = frozenset(session.roles)
        self.identity = Identity(
            sub=session.sub,
            username=session.username,
            name=session.name,
            groups=session.groups,
            department=session.department,
            departments=session.departments,
            acr=session.acr,
            amr=session.amr,
            auth_time=int(session.auth_time),
            sid=session.sid,
        )
        self.headers = (
            (b"x-onegate-user", session.username.encode()),
            (b"x-onegate-name", quote(session.name, safe=" ").encode()),
            (b"x-onegate-groups", ",".join(session.groups).encode()),
            (b"x-onegate-department", (session.department or "").encode()),
        )
        fields: dict[str, Any] = {
            "user.name": session.username,
            "user.id": session.sub,
            "session.id": session.sid,
            "onegate.groups": list(session.groups),
            "onegate.departments": list(session.departments),
            "onegate.acr": session.acr,
        }
        if session.roles:
            fields["user.roles"] = list(session.roles)
        self.event_fields = fields


class _Access:
    """One request's access record, made into its ECS event after the response: what was
    decided, when the request came (``time.perf_counter()``), its method and headers."""

    __slots__ = ("bytes", "headers", "method", "outcome", "started", "status", "verdict", "websocket")

    def __init__(
        self,
        verdict: Verdict,
        started: float,
        method: str,
        headers: list[tuple[bytes, bytes]],
        websocket: bool = False,
    ) -> None:
        self.verdict = verdict
        self.started = started
        self.method = method
        self.headers = headers
        self.websocket = websocket
        self.status = 0
        self.bytes = 0
        self.outcome: Outcome | None = None

    def event(self, subject: _Subject | None = None) -> Event:
        verdict = self.verdict
        session, decision, route = verdict.session, verdict.decision, verdict.route
        assert decision is not None and route is not None  # noqa: S101 - only decided requests
        user_agent = b""
        for name, value in self.headers:
            if name == b"user-agent":
                user_agent = value
                break
        fields: dict[str, Any] = {
            "onegate.app": route.app,
            "url.path": verdict.path,
            "http.request.method": self.method,
            "http.response.status_code": self.status,
            "http.response.body.bytes": self.bytes,
            "event.duration": int((time.perf_counter() - self.started) * 1e9),
            "onegate.decision": str(decision.effect),  # a StrEnum: str() is its value, in C
            "onegate.rule_ids": list(decision.rule_ids),
            "onegate.reason": str(decision.reason),
            "onegate.risk": verdict.risk,
            "trace.id": verdict.request_id,
            "user_agent.original": user_agent.decode("latin-1")[:512],
        }
        if self.websocket:
            fields["network.protocol"] = "websocket"
        if verdict.ip:
            fields["source.ip"] = verdict.ip
        if session is not None:
            if subject is None or subject.session is not session:
                subject = _Subject(session)
            fields.update(subject.event_fields)
            fields["onegate.auth_age"] = max(0, int(time.time() - session.auth_time))
        outcome = self.outcome
        if outcome is None:
            outcome = (
                Outcome.SUCCESS if decision.effect is Effect.ALLOW and self.status < 500 else Outcome.FAILURE
            )
        # The names and types above are fixed here; tests build this event through the checking
        # constructor too (tests/gateway/test_app.py), so the request path skips the check.
        return Event.prechecked("access", Category.WEB, outcome, fields)


# -- small helpers -------------------------------------------------------------------------------


_ADDRESSES: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address | None] = {}


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address as the policy sees it (IPv4-mapped IPv6 as IPv4), parsed once per address."""
    cached = _ADDRESSES.get(address, _ADDRESSES)
    if cached is not _ADDRESSES:
        return cached  # type: ignore[return-value]
    parsed = _parse_ip(address)
    if len(_ADDRESSES) >= 65_536:
        _ADDRESSES.clear()
    _ADDRESSES[address] = parsed
    return parsed


def _parse_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return client_ip(address) if address else None
    except ValueError:
        return None


# What upstream_headers does with a client's header, by (lower-case) name.
_PASS, _DROP, _COOKIE, _XFF = 0, 1, 2, 3
_NAME_KINDS: dict[bytes, int] = {}
_AUTHORITIES: dict[Origin, bytes] = {}


def _name_kind(name: bytes) -> int:
    """Hop-by-hop, Host, identity (any spelling), X-Request-ID and forwarding headers are
    dropped (X-Forwarded-For kept from a trusted proxy); Cookie loses the gateway's cookie."""
    if name in HOP_BY_HOP or name == b"host" or is_identity(name) or name == b"x-request-id":
        kind = _DROP
    elif name == b"x-forwarded-for":
        kind = _XFF
    elif name in FORWARDING:
        kind = _DROP
    elif name == b"cookie":
        kind = _COOKIE
    else:
        kind = _PASS
    if len(_NAME_KINDS) < 4096:
        _NAME_KINDS[name] = kind
    return kind


def _authority(origin: Origin) -> bytes:
    value = _AUTHORITIES.get(origin)
    if value is None:
        if len(_AUTHORITIES) >= 4096:
            _AUTHORITIES.clear()
        value = _AUTHORITIES[origin] = origin.authority.encode()
    return value


_HOSTS: dict[bytes, str | None] = {}
_NONE: frozenset[str] = frozenset()


def _host(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The request's host (:func:`gateway.routes.host_of` of its one Host header), read once
    per distinct header value."""
    value = host_header(headers)
    if value is None:
        return None
    host = _HOSTS.get(value, _HOSTS)
    if host is _HOSTS:
        host = host_of(value)
        if len(_HOSTS) >= 4096:
            _HOSTS.clear()
        _HOSTS[value] = host
    return host  # type: ignore[return-value]


def _description(engine: PolicyEngine, rule_id: str) -> str | None:
    rule = engine.bundle.rule(rule_id)
    return rule.description if rule is not None and rule.description else None


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """The request's Content-Length (-1 when malformed, None when absent) and whether it has a
    Transfer-Encoding."""
    length: int | None = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            if length is None:
                length = int(value) if value.isdigit() and len(value) < 19 else -1
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked


def _return_to(scope: Scope) -> str:
    """Where to come back to after signing in: this request's path and query (same host)."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    target = raw.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _accepts_html(headers: list[tuple[bytes, bytes]]) -> bool:
    """A browser navigation (redirect it) rather than an API call (give it a 401 to act on)."""
    for name, value in headers:
        if name == b"accept":
            return b"text/html" in value or b"*/*" in value
    return True


async def _redirect(send: Send, location: str) -> None:
    message: Message = {
        "type": "http.response.start",
        "status": 302,
        "headers": [
            (b"location", location.encode("latin-1")),
            (b"cache-control", b"no-store"),
            (b"content-length", b"0"),
        ],
    }
    await send(message)
    await send({"type": "http.response.body", "body": b""})


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
