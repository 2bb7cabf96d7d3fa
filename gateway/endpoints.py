"""The gateway's own endpoints under ``/.onegate/`` on every application host, and its pages.

``start``       begin signing in (OIDC code flow + PKCE through :class:`gateway.oidc.OidcClient`);
                ``rd`` is where to return: a path on the same host, nothing else
``callback``    the provider's redirect: login state is single use and bound to the browser that
                started it (a cookie per login), then a fresh gateway session for this host
``logout``      GET: a page offering to sign out of this application or everywhere; POST (CSRF
                protected): ends the gateway session, and for ``everywhere`` continues to the
                provider's end-session endpoint (RP-Initiated Logout) with the ID token as hint
``backchannel-logout``  OIDC Back-Channel Logout 1.0 §2.5: the provider POSTs a logout token;
                every gateway session of that IdP session (or user) ends at once, on every
                instance (the revocation is published)
``auth``        forward-auth for nginx ``auth_request``, Caddy ``forward_auth`` and Traefik
                ForwardAuth (``X-Forwarded-Method/-Proto/-Host/-Uri``): 200 with identity
                headers, 302 to sign in (``?mode=nginx``: 401 with ``X-OneGate-Location``), 403
``jwks``        the public keys assertions are signed with
``_page``       internal: renders the page the proxy chose (deny, sign in, errors)
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from core.events import Category, Event, EventEmitter, Outcome
from core.kv import KV, KVError
from core.logging import get_logger
from core.net import client_address
from core.web import N_
from gateway.app import CONTROL_PREFIX, PageInfo
from gateway.oidc import LoginError, LoginState, OidcClient
from gateway.routes import host_header, host_of
from gateway.sessions import digest

if TYPE_CHECKING:
    from gateway.app import Gateway
    from keyvault.signing import SigningKeyring

__all__ = ["ControlContext", "control_routes"]

_log = get_logger("onegate.gateway.endpoints")

LOGIN_TTL = 600
_MAX_STATE = 128
# What a step-up may ask for, by the names the policy uses or the URNs the IdP speaks.
_ACR_VALUES = {
    name: f"urn:onegate:acr:{level}"
    for level in ("pwd", "mfa", "phr")
    for name in (level, f"urn:onegate:acr:{level}")
}

# What each page says (zh-CN from the catalog, English as written here).
PAGES: dict[str, tuple[str, str]] = {
    "denied": (N_("Access denied"), N_("The access policy does not let you open this page.")),
    "sign_in": (N_("Sign-in required"), N_("Sign in to open this application.")),
    "step_up": (
        N_("Stronger sign-in required"),
        N_("This page needs a stronger or more recent sign-in, such as your second factor."),
    ),
    "bad_path": (N_("Bad request"), N_("The address of this request cannot be read unambiguously.")),
    "bad_request": (N_("Bad request"), N_("The request is malformed.")),
    "unknown_host": (N_("Unknown site"), N_("No application is served under this host name.")),
    "no_route": (N_("Not found"), N_("No application is served at this address.")),
    "upstream": (N_("Application unavailable"), N_("The application did not answer. Try again shortly.")),
    "too_large": (N_("Request too large"), N_("The request body is larger than this gateway accepts.")),
    "unavailable": (N_("Service unavailable"), N_("The gateway cannot check your session right now.")),
    "login_failed": (
        N_("Sign-in failed"),
        N_("Signing in did not complete. Start again from the application."),
    ),
}


@dataclass
class ControlContext:
    """What the endpoints work with (``app.state.gateway``)."""

    gateway: Gateway
    oidc: OidcClient
    kv: KV
    keyring: SigningKeyring
    events: EventEmitter


def _ctx(request: Request) -> ControlContext:
    ctx: ControlContext = request.app.state.gateway
    return ctx


def _binding_cookie(ctx: ControlContext, state: str) -> str:
    """The cookie that ties one login to the browser that started it (one per login, so two tabs
    signing in at once do not spoil each other)."""
    return f"{ctx.gateway.options.cookie_name}_l{digest(state)[:12]}"


def _safe_return(value: str | None) -> str:
    """A path on this host, or ``/``: never another origin (``//x``, ``/\\x``, ``https://x``)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    if any(ord(c) < 0x21 or c in "\\" for c in value) or len(value) > 4096:
        return "/"
    return value


def _origin(request: Request, host_header: str) -> str:
    scheme = "https" if _ctx(request).gateway.options.https else request.url.scheme
    return f"{scheme}://{host_header}"


def _host(request: Request) -> tuple[str | None, str]:
    raw = (host_header(request.headers.raw) or b"").decode("latin-1")
    return host_of(raw), raw


def _page(request: Request, info: PageInfo, *, extra: dict[str, Any] | None = None) -> Response:
    title, summary = PAGES.get(info.kind, PAGES["bad_request"])
    decision = info.decision
    context = {
        "kind": info.kind,
        "title": title,
        "summary": summary,
        "status": info.status,
        "request_id": info.request_id,
        "app": info.app,
        "rules": list(decision.rule_ids) if decision is not None and info.kind == "denied" else [],
        "descriptions": list(info.descriptions),
        "login": info.login,
        "reason": info.reason,
        **(extra or {}),
    }
    response: Response = request.app.state.templates.render(
        request, "gateway_page.html", context, status_code=info.status, headers={"cache-control": "no-store"}
    )
    return response


def _event(ctx: ControlContext, action: str, outcome: Outcome, category: Category, **fields: Any) -> None:
    try:
        ctx.events.emit(
            Event(action, category, outcome, fields={k: v for k, v in fields.items() if v is not None})
        )
    except Exception as e:  # an event problem never fails the request
        _log.error("gateway event not emitted", action=action, error=str(e))


# -- sign-in -------------------------------------------------------------------------------------


async def start(request: Request) -> Response:
    ctx = _ctx(request)
    host, host_header = _host(request)
    request_id = secrets.token_hex(8)
    if host is None or host not in ctx.gateway.routes:
        return _page(request, PageInfo("unknown_host", 421, request_id))
    acr = _ACR_VALUES.get(request.query_params.get("acr", ""))
    max_age: int | None = None
    raw_age = request.query_params.get("max_age", "")
    if raw_age.isdigit() and len(raw_age) < 7:
        max_age = int(raw_age)
    return_to = _safe_return(request.query_params.get("rd"))
    try:
        url, login = await ctx.oidc.begin(
            f"{_origin(request, host_header)}{CONTROL_PREFIX}/callback",
            return_to=return_to,
            acr_values=acr,
            max_age=max_age,
            ui_locales=request.scope.get("state", {}).get("locale", "zh_CN").replace("_", "-"),
        )
    except LoginError as e:
        _log.error("sign-in cannot start", code=e.code, request_id=request_id)
        return _page(request, PageInfo("unavailable", 503, request_id, reason=e.code))
    binding = secrets.token_urlsafe(24)
    record = {"login": login.to_json().decode(), "host": host, "binding": digest(binding)}
    try:
        await ctx.kv.set(f"gw:login:{login.state}", json.dumps(record).encode(), ttl=LOGIN_TTL)
    except KVError as e:
        _log.error("sign-in cannot start: store unavailable", error=str(e), request_id=request_id)
        return _page(request, PageInfo("unavailable", 503, request_id))
    response = RedirectResponse(url, status_code=302, headers={"cache-control": "no-store"})
    response.set_cookie(
        _binding_cookie(ctx, login.state),
        binding,
        max_age=LOGIN_TTL,
        path=f"{CONTROL_PREFIX}/callback",
        secure=ctx.gateway.options.https,
        httponly=True,
        samesite="lax",
    )
    return response


async def callback(request: Request) -> Response:
    ctx = _ctx(request)
    host, _ = _host(request)
    request_id = secrets.token_hex(8)
    state = request.query_params.get("state", "")
    failed = PageInfo("login_failed", 400, request_id, login=None)
    if not state or len(state) > _MAX_STATE or host is None:
        return _page(request, failed)
    try:
        raw = await ctx.kv.get_and_delete(f"gw:login:{state}")
    except KVError:
        return _page(request, PageInfo("unavailable", 503, request_id))
    if raw is None:
        return _page(request, PageInfo("login_failed", 400, request_id, reason="expired_login"))
    try:
        record = json.loads(raw)
        login = LoginState.from_json(record["login"].encode())
    except (LoginError, ValueError, KeyError, TypeError):
        return _page(request, PageInfo("login_failed", 400, request_id, reason="invalid_state"))
    binding = request.cookies.get(_binding_cookie(ctx, state), "")
    if record["host"] != host or not hmac.compare_digest(record["binding"], digest(binding)):
        _event(
            ctx, "gateway-sign-in", Outcome.FAILURE, Category.AUTHENTICATION, **{"onegate.reason": "binding"}
        )
        return _page(request, PageInfo("login_failed", 400, request_id, reason="not_this_browser"))
    ip = client_address(request.scope, ctx.gateway.options.trusted_proxies)
    repeated = [k for k in ("state", "code", "iss", "error") if len(request.query_params.getlist(k)) > 1]
    if repeated:  # one value each, or the response is not the provider's (RFC 6749 §3.1)
        return _page(request, PageInfo("login_failed", 400, request_id, reason="invalid_request"))
    try:
        signin = await ctx.oidc.finish(login, dict(request.query_params))
    except LoginError as e:
        _event(
            ctx, "gateway-sign-in", Outcome.FAILURE, Category.AUTHENTICATION,
            **{"onegate.reason": e.code, "source.ip": ip or None},
        )  # fmt: skip
        return _page(request, PageInfo("login_failed", 400, request_id, reason=e.code))
    gateway = ctx.gateway
    old = gateway.cookie_value(list(request.scope["headers"]))
    if old:
        previous = await gateway.sessions.from_cookie(old, host)
        if previous is not None:
            await gateway.sessions.revoke(previous.sid)
            gateway.forget(previous.sid)
    session, cookie = await gateway.sessions.create(
        host=host,
        sub=signin.sub,
        username=signin.username,
        name=signin.name,
        groups=signin.groups,
        department=signin.department,
        departments=signin.departments,
        acr=signin.acr or "",
        amr=signin.amr,
        auth_time=float(signin.auth_time or time.time()),
        idp_sid=signin.sid,
        id_token=signin.id_token,
        ip=ip,
        user_agent=request.headers.get("user-agent", ""),
    )
    _event(
        ctx, "gateway-sign-in", Outcome.SUCCESS, Category.AUTHENTICATION,
        **{"user.name": session.username, "session.id": session.sid, "source.ip": ip or None,
           "onegate.acr": session.acr, "url.domain": host},
    )  # fmt: skip
    response = RedirectResponse(login.return_to, status_code=303, headers={"cache-control": "no-store"})
    options = gateway.options
    response.set_cookie(options.cookie, cookie, path="/", secure=options.https, httponly=True, samesite="lax")
    response.delete_cookie(_binding_cookie(ctx, state), path=f"{CONTROL_PREFIX}/callback")
    return response


# -- logout --------------------------------------------------------------------------------------


async def logout(request: Request) -> Response:
    ctx = _ctx(request)
    gateway = ctx.gateway
    host, _ = _host(request)
    session = None
    if host is not None:
        cookie = gateway.cookie_value(list(request.scope["headers"]))
        session = await gateway.sessions.from_cookie(cookie, host)
    if request.method == "GET":
        response: Response = request.app.state.templates.render(
            request,
            "gateway_logout.html",
            {"signed_in": session is not None, "name": session.name if session else "", "done": False},
        )
        return response
    form = await request.form()
    everywhere = form.get("scope") == "everywhere"
    target: str | None = None
    if session is not None:
        await gateway.sessions.revoke(session.sid)
        gateway.forget(session.sid)
        _event(
            ctx, "gateway-logout", Outcome.SUCCESS, Category.SESSION,
            **{"user.name": session.username, "session.id": session.sid,
               "onegate.scope": "everywhere" if everywhere else "app"},
        )  # fmt: skip
        if everywhere:
            try:
                target = await ctx.oidc.end_session_url(
                    id_token_hint=session.id_token, post_logout_redirect_uri=None
                )
            except LoginError:
                target = None
    if target is not None:
        response = RedirectResponse(target, status_code=303)
    else:
        response = request.app.state.templates.render(
            request, "gateway_logout.html", {"signed_in": False, "name": "", "done": True}
        )
    response.delete_cookie(gateway.options.cookie, path="/", secure=gateway.options.https, httponly=True)
    return response


async def backchannel_logout(request: Request) -> Response:
    """OIDC Back-Channel Logout 1.0 §2.5-§2.8: 200 when the sessions are ended, 400 otherwise."""
    ctx = _ctx(request)
    headers = {"cache-control": "no-store"}
    try:
        form = await request.form()
    except Exception:  # malformed body: a 400 like any other bad logout request
        return JSONResponse({"error": "invalid_request"}, status_code=400, headers=headers)
    token = form.get("logout_token")
    if not isinstance(token, str) or not token or len(token) > 16384:
        return JSONResponse({"error": "invalid_request"}, status_code=400, headers=headers)
    try:
        notice = await ctx.oidc.validate_logout_token(token)
    except LoginError as e:
        _event(ctx, "backchannel-logout", Outcome.FAILURE, Category.SESSION, **{"onegate.reason": e.code})
        return JSONResponse({"error": "invalid_request"}, status_code=400, headers=headers)
    # §2.6 step 9: a logout token is used once.
    if not await ctx.kv.set(f"gw:jti:{digest(notice.jti)}", b"1", ttl=3600, only_if_absent=True):
        return JSONResponse({"error": "invalid_request"}, status_code=400, headers=headers)
    gateway = ctx.gateway
    if notice.sid:
        ended = await gateway.sessions.revoke_idp_session(notice.sid)
    elif notice.sub:
        ended = await gateway.sessions.revoke_user(notice.sub)
    else:  # validate_logout_token guarantees one of them
        ended = []
    for session in ended:
        gateway.forget(session.sid)
    _event(
        ctx, "backchannel-logout", Outcome.SUCCESS, Category.SESSION,
        **{"onegate.sessions_ended": len(ended), "user.id": notice.sub},
    )  # fmt: skip
    return Response(status_code=200, headers=headers)


# -- forward-auth --------------------------------------------------------------------------------


async def forward_auth(request: Request) -> Response:
    ctx = _ctx(request)
    gateway = ctx.gateway
    nginx = request.query_params.get("mode") == "nginx"
    h = request.headers
    host = host_of(h.get("x-forwarded-host", ""))
    uri = h.get("x-forwarded-uri", "/")
    method = h.get("x-forwarded-method", "GET").upper()
    if host is None or host not in gateway.routes or not uri.startswith("/"):
        return Response(status_code=403, headers={"cache-control": "no-store"})
    raw_path, _, _query = uri.partition("?")
    cookie = gateway.cookie_value(list(request.scope["headers"]))
    ip = client_address(request.scope, gateway.options.trusted_proxies)
    verdict = await gateway.authorize(host, raw_path.encode("latin-1"), method, cookie, ip)
    if verdict.page is not None:
        return Response(status_code=verdict.page.status, headers={"cache-control": "no-store"})
    decision = verdict.decision
    assert decision is not None and verdict.route is not None  # noqa: S101 - authorize's contract
    if decision.allowed:
        headers = {"cache-control": "no-store"}
        if verdict.session is not None:
            headers |= {
                n.decode(): v.decode("latin-1")
                for n, v in gateway.identity_headers(verdict.session, verdict.route.app)
            }
        return Response(status_code=200, headers=headers)
    info = verdict.refusal(_safe_return(uri))
    if info.login is not None:
        if nginx:
            return Response(
                status_code=401, headers={"x-onegate-location": info.login, "cache-control": "no-store"}
            )
        return RedirectResponse(info.login, status_code=302, headers={"cache-control": "no-store"})
    return _page(request, info)


async def jwks(request: Request) -> Response:
    return JSONResponse(_ctx(request).keyring.jwks(), headers={"cache-control": "public, max-age=300"})


async def page(request: Request) -> Response:
    info = request.scope.get("state", {}).get("gateway")
    if not isinstance(info, PageInfo):
        return _page(request, PageInfo("no_route", 404, secrets.token_hex(8)))
    return _page(request, info)


def control_routes() -> list[Route]:
    everything = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return [
        Route("/start", start, methods=["GET"]),
        Route("/callback", callback, methods=["GET"]),
        Route("/logout", logout, methods=["GET", "POST"]),
        Route("/backchannel-logout", backchannel_logout, methods=["POST"]),
        Route("/auth", forward_auth, methods=everything),
        Route("/jwks", jwks, methods=["GET"]),
        Route("/_page", page, methods=everything),
    ]
