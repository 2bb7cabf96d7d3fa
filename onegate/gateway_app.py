"""Assemble the gateway role: routes, sessions, policy watcher, upstream pool, assertions, the
OIDC relying party, and the control app for ``/.onegate/`` and the gateway's pages.

The routes are ``gateway.routes`` plus the routes added at run time (the admin API, ``onegate
gateway routes``): a :class:`~gateway.route_watcher.RouteWatcher` follows the route store and
swaps each new table into the gateway in one assignment (``gateway.routes = table``). Upstream
connection pools are made per pair of timeouts, when a route first needs one.

With this deployment's own IdP (``gateway.issuer`` unset) the gateway registers itself as a
first-party OIDC client at start-up (``gateway.client_id``): its secret is derived from a
keyvault secret, so every gateway process of the deployment knows it without configuration, and
its redirect URIs follow the routed hosts — again whenever they change, so that signing in works
on a newly added host. With another OIDC provider, register the gateway there (docs/gateway.md)
and set ``gateway.issuer``, ``gateway.client_id`` and ``gateway.client_secret``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route as WebRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from core.kv import KVError
from core.logging import get_logger
from core.net import TrustedProxies
from core.web import create_web_app
from gateway.app import Gateway, GatewayOptions, PageInfo
from gateway.assertion import AssertionIssuer
from gateway.blocks import AddressBlocks
from gateway.endpoints import ControlContext, control_routes, page
from gateway.oidc import OidcClient
from gateway.risk import RiskScores
from gateway.route_store import RouteStore
from gateway.route_watcher import RouteWatcher
from gateway.routes import Route, RouteTable
from gateway.sessions import GatewaySessions
from gateway.upstream import UpstreamPool
from gateway.websocket import bridge
from idp.clients.errors import InvalidClientMetadata
from idp.clients.services import ClientRegistry
from onegate.bootstrap import CSRF_KEY_NAME
from onegate.client_updates import announce
from onegate.own_clients import ensure_own_client, keyvault_secret
from onegate.runtime import Runtime
from policy.versions import PolicyStore, PolicyWatcher

__all__ = ["GATEWAY_SCOPES", "GatewayApp", "build_gateway_app", "gateway_redirect_uris"]

_log = get_logger("onegate.gateway")

GATEWAY = Path(__file__).resolve().parents[1] / "gateway"
SECRET_NAME = "gateway-oidc-client-secret"  # noqa: S105 - the name of a keyvault secret
MAX_REDIRECT_URIS = 20  # what the IdP accepts per client
# Registering again after a change of the routed hosts: tries, when another process's update
# of the same client overwrote this one's (each try reads the client afresh).
_REGISTER_TRIES = 5
GATEWAY_SCOPES = ("openid", "profile", "email", "groups", "department")


class _PageMiddleware:
    """Innermost in the control app: a request the proxy refused carries its ``PageInfo`` in
    ``scope["state"]["gateway"]`` and is rendered here, whatever its path (so the language
    switch on the page links back to the same address)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and isinstance(scope.get("state", {}).get("gateway"), PageInfo):
            response = await page(Request(scope, receive))
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except KVError as e:  # the session store is down: a 503 page, not a 500
            if scope["type"] != "http":
                raise
            _log.error("gateway endpoint: session store unavailable", error=str(e))
            scope.setdefault("state", {})["gateway"] = PageInfo("unavailable", 503, secrets.token_hex(8))
            response = await page(Request(scope, receive))
            await response(scope, receive, send)


async def _home(_request: Request) -> Response:
    return RedirectResponse("/", status_code=302)


def gateway_redirect_uris(routes: RouteTable, *, https: bool, port: int) -> list[str]:
    """The callback URI of every routed host, with and without the server's port (a gateway
    behind a TLS proxy is reached on the default port, the demo on its own)."""
    scheme = "https" if https else "http"
    uris: list[str] = []
    for host in routes.hosts():
        uris.append(f"{scheme}://{host}/.onegate/callback")
        if port not in (0, 80, 443):
            uris.append(f"{scheme}://{host}:{port}/.onegate/callback")
    return uris


@dataclass
class GatewayApp:
    app: ASGIApp
    gateway: Gateway
    context: ControlContext
    starters: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def start(self) -> None:
        for begin in self.starters:
            await begin()

    async def close(self) -> None:
        for end in self.closers:
            with contextlib.suppress(Exception):
                await end()


async def _register_client(runtime: Runtime, routes: RouteTable, *, port: int, secret: str) -> None:
    """Make sure the built-in IdP knows the gateway as a client, with today's callback URIs."""
    settings = runtime.settings
    options = settings.gateway
    registry = ClientRegistry(runtime.sessions, runtime.vault.secrets, events=runtime.bus)
    redirect_uris = gateway_redirect_uris(routes, https=settings.server.https, port=port) or [
        "http://localhost/.onegate/callback"
    ]
    backchannel = (
        f"https://{routes.hosts()[0]}/.onegate/backchannel-logout"
        if settings.server.https and routes.hosts()
        else f"http://127.0.0.1:{port}/.onegate/backchannel-logout"
    )
    hosts = set(routes.hosts())

    def merged(current: Iterable[str]) -> list[str]:
        # Other gateway processes of the deployment may serve on other ports: keep their
        # callbacks for the routed hosts too (newest first, within the IdP's limit).
        kept = [
            uri for uri in current if uri not in redirect_uris and (urlsplit(uri).hostname or "") in hosts
        ]
        return [*redirect_uris, *kept][:MAX_REDIRECT_URIS]

    exists = await registry.get(options.client_id, include_disabled=True) is not None
    await ensure_own_client(
        registry,
        options.client_id,
        secret=secret,
        actor="onegate-gateway",
        create={
            "name": "统一访问网关",
            "name_en": "OneGate access gateway",
            "scopes": GATEWAY_SCOPES,
            "first_party": True,
            "redirect_uris": redirect_uris,
        },
        keep={"backchannel_logout_uri": backchannel},
    )
    if exists:
        # Read, merged and written under the row's lock: two processes registering at once
        # keep each other's callbacks (a read here and a write later lost one of them).
        await registry.merge_redirect_uris(options.client_id, merged, actor="onegate-gateway")


class _Registration:
    """Keeps the gateway's registration at the built-in IdP in step with the routed hosts.

    Every gateway process registers its own callbacks and keeps the other processes' ones for
    the hosts still routed (:func:`_register_client`); two processes updating the client at the
    same moment can overwrite each other, so after each update the registration is read back and
    done again (after a short random pause) until this process's callbacks are in it."""

    def __init__(self, runtime: Runtime, routes: Callable[[], RouteTable], *, port: int, secret: str) -> None:
        self._runtime = runtime
        self._routes = routes
        self._port = port
        self._secret = secret
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.active = False  # set at start-up: route changes before it are registered then
        self.hosts: frozenset[str] | None = None  # the hosts last registered

    async def register(self) -> bool:
        """Register for the routes in use now; True when the IdP has every callback of them."""
        routes = self._routes()
        settings = self._runtime.settings
        wanted = set(gateway_redirect_uris(routes, https=settings.server.https, port=self._port))
        for attempt in range(_REGISTER_TRIES):
            try:
                await _register_client(self._runtime, routes, port=self._port, secret=self._secret)
                registry = ClientRegistry(self._runtime.sessions, self._runtime.vault.secrets)
                client = await registry.get(settings.gateway.client_id, include_disabled=True)
                if client is not None and wanted <= set(client.redirect_uris):
                    self.hosts = frozenset(routes.hosts())
                    await announce(self._runtime.kv, settings.gateway.client_id)
                    return True
            except InvalidClientMetadata as e:  # trying again would not help (e.g. http hosts)
                _log.error("gateway client not registered at the IdP", error=str(e))
                return False
            except Exception as e:  # the gateway keeps serving; sign-in reports the problem
                _log.error("gateway client not registered at the IdP", error=str(e), attempt=attempt + 1)
            await asyncio.sleep(random.uniform(0.05, 0.3))  # noqa: S311 - a pause, not a secret
        _log.error("gateway callbacks not all registered at the IdP", hosts=len(routes.hosts()))
        return False

    def hosts_changed(self, table: RouteTable) -> None:
        """Register again (in the background) when ``table`` routes other hosts than the last
        registration (or when that one failed)."""
        if not self.active or (self.hosts is not None and frozenset(table.hosts()) == self.hosts):
            return
        if self._task is not None and not self._task.done():
            self._again = True  # the run in progress registers once more when it ends
            return
        self._task = asyncio.create_task(self._run(), name="gateway-client-registration")

    async def _run(self) -> None:
        while True:
            self._again = False
            await self.register()
            if not self._again:
                return

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def build_gateway_app(
    runtime: Runtime, *, issuer: str, port: int, fallback: ASGIApp | None = None
) -> GatewayApp:
    """The gateway for ``runtime``; ``issuer``: this deployment's IdP; ``port``: the public port."""
    settings = runtime.settings
    options = settings.gateway
    routes = RouteTable.from_settings(options.routes)
    route_store = RouteStore(runtime.sessions, runtime.kv, runtime.bus, config=options.routes)
    sessions = GatewaySessions(
        runtime.kv,
        idle_timeout=options.session_idle_timeout,
        absolute_timeout=options.session_absolute_timeout,
    )
    store = PolicyStore(runtime.sessions, runtime.kv, runtime.bus)
    watcher = PolicyWatcher(store, runtime.kv)
    pools: dict[tuple[float, float], UpstreamPool] = {}

    def pool_for(route: Route) -> UpstreamPool:
        # One pool per pair of timeouts, made when a route first needs it (an added route may
        # bring a new pair at any time). Without an await, so no two requests make two pools.
        key = (route.connect_timeout, route.read_timeout)
        pool = pools.get(key)
        if pool is None:
            pool = pools[key] = UpstreamPool(connect_timeout=key[0], read_timeout=key[1])
        return pool

    for route in routes.all():
        pool_for(route)

    builtin = options.issuer is None
    secret = options.client_secret
    if secret is None:
        secret = keyvault_secret(runtime, SECRET_NAME)
    provider = (options.issuer or issuer).rstrip("/")
    oidc = OidcClient(
        issuer=provider, client_id=options.client_id, client_secret=secret, scopes=GATEWAY_SCOPES
    )
    assertions = AssertionIssuer(
        runtime.vault.signing, issuer=issuer.rstrip("/"), lifetime=options.assertion_lifetime
    )
    gateway_options = GatewayOptions(
        cookie_name=options.cookie_name,
        https=settings.server.https,
        trusted_proxies=TrustedProxies(settings.server.trusted_proxies),
        max_body_bytes=options.max_body_bytes,
    )
    gateway = Gateway(
        routes=routes,
        sessions=sessions,
        engine=lambda: watcher.engine,
        pool=pool_for,
        assertions=assertions,
        risk=RiskScores(runtime.kv),
        blocks=AddressBlocks(runtime.kv),
        events=runtime.bus,
        fallback=fallback,
        options=gateway_options,
        websocket=bridge,
    )
    control = create_web_app(
        name="gateway",
        routes=[*control_routes(), WebRoute("/", _home, methods=["GET"])],
        csrf_secret=runtime.vault.secrets.get_or_create(CSRF_KEY_NAME),
        readiness_checks={"database": runtime.check_database, "kv": runtime.check_kv},
        template_dirs=[GATEWAY / "templates"],
        locale_dirs=[GATEWAY / "locale"],
        default_locale=settings.web.default_locale,
        https=settings.server.https,
        csrf_exempt_paths=("/backchannel-logout", "/auth", "/_page"),
        extra_middleware=[Middleware(_PageMiddleware)],
    )
    context = ControlContext(
        gateway=gateway, oidc=oidc, kv=runtime.kv, keyring=runtime.vault.signing, events=runtime.bus
    )
    control.state.gateway = context
    gateway.set_control(control)
    registration = _Registration(runtime, lambda: gateway.routes, port=port, secret=secret)

    def swap(table: RouteTable) -> None:
        gateway.routes = table  # one assignment: a request sees the old table or the new one
        if builtin:
            registration.hosts_changed(table)

    route_watcher = RouteWatcher(route_store, runtime.kv, on_change=swap)

    async def start() -> None:
        await route_watcher.start()  # the added routes first: the registration covers their hosts
        if builtin:
            registration.active = True
            await registration.register()
        await watcher.start()
        sessions.start()

    async def close() -> None:
        await sessions.stop()
        await route_watcher.stop()
        await registration.stop()
        await watcher.stop()
        for pool in list(pools.values()):
            await pool.close()
        await oidc.close()

    return GatewayApp(app=gateway, gateway=gateway, context=context, starters=[start], closers=[close])


async def _no_fallback(scope: Scope, receive: Receive, send: Send) -> None:
    await Response(status_code=404)(scope, receive, send)
